//! Interface and route lookups over rtnetlink (netlink-packet-route on a netlink-sys socket):
//! which interfaces carry the default routes, and interface name/index resolution.

use std::{ffi::CString, io};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAttribute, RouteHeader, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};

/// Kernel index of the interface called `name`, or a "does not exist" error naming it.
pub fn interface_index(name: &str) -> Result<u32> {
    let no_such = || Error::NoSuchInterface {
        name: name.to_string(),
    };
    let c_name = CString::new(name).map_err(|_| no_such())?;
    // SAFETY: c_name is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(no_such()),
        index => Ok(index),
    }
}

/// Name of the interface with kernel index `index`, if it exists.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: if_indextoname NUL-terminates on success.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Names of the interfaces that carry an IPv4 or IPv6 default route of the main table,
/// sorted and without duplicates.
pub fn default_route_interfaces() -> Result<Vec<String>> {
    let routes =
        dump_routes().map_err(|err| Error::Other(format!("route dump over rtnetlink: {err}")))?;
    let mut names: Vec<String> = default_route_ifindexes(&routes)
        .into_iter()
        .filter_map(interface_name)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Error::NoDefaultRoute);
    }
    Ok(names)
}

/// Output interface indexes of the default routes (prefix length 0, main table, unicast) in
/// `routes`, including every next hop of a multipath route.
pub fn default_route_ifindexes(routes: &[RouteMessage]) -> Vec<u32> {
    let mut indexes = Vec::new();
    for route in routes {
        let header = &route.header;
        let table = route
            .attributes
            .iter()
            .find_map(|attr| match attr {
                RouteAttribute::Table(table) => Some(*table),
                _ => None,
            })
            .unwrap_or(u32::from(header.table));
        if header.destination_prefix_length != 0 || table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        if header.kind != netlink_packet_route::route::RouteType::Unicast {
            continue;
        }
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(index) => indexes.push(*index),
                RouteAttribute::MultiPath(hops) => {
                    indexes.extend(hops.iter().map(|hop| hop.interface_index))
                }
                _ => {}
            }
        }
    }
    indexes
}

/// Dumps the IPv4 and IPv6 routing tables.
fn dump_routes() -> io::Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in dump(RouteNetlinkMessage::GetRoute(request))? {
            if let RouteNetlinkMessage::NewRoute(route) = message {
                routes.push(route);
            }
        }
    }
    Ok(routes)
}

/// Sends one dump request and collects every reply up to NLMSG_DONE.
fn dump(request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut replies = Vec::new();
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(err) => {
                    return Err(err
                        .code
                        .map(|code| io::Error::from_raw_os_error(-code.get()))
                        .unwrap_or_else(|| io::Error::other("netlink error without code")));
                }
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += (length + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::route::{RouteNextHop, RouteType};

    use super::*;

    fn route(prefix: u8, table: u8, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.destination_prefix_length = prefix;
        route.header.table = table;
        route.header.kind = RouteType::Unicast;
        route.attributes = attributes;
        route
    }

    fn hop(interface_index: u32) -> RouteNextHop {
        let mut hop = RouteNextHop::default();
        hop.interface_index = interface_index;
        hop
    }

    #[test]
    fn picks_default_routes_of_the_main_table() {
        let routes = vec![
            route(0, 254, vec![RouteAttribute::Oif(2)]),
            route(24, 254, vec![RouteAttribute::Oif(3)]),
            route(0, 255, vec![RouteAttribute::Oif(4)]),
            route(
                0,
                0,
                vec![
                    RouteAttribute::Table(254),
                    RouteAttribute::MultiPath(vec![hop(5), hop(6)]),
                ],
            ),
        ];
        assert_eq!(default_route_ifindexes(&routes), [2, 5, 6]);
    }

    #[test]
    fn unknown_interface_is_named() {
        let err = interface_index("np-does-not-exist0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface \"np-does-not-exist0\" does not exist (list interfaces with `ip link`)"
        );
        assert_eq!(interface_index("lo").unwrap(), 1);
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
    }
}

//! Interface and route lookups over rtnetlink (netlink-packet-route on a netlink-sys socket):
//! which interfaces carry the default routes, interface name/index resolution, the list of
//! interfaces, a subscription to link events (interfaces appearing, changing, disappearing), and
//! the cls_bpf filters of a clsact qdisc with the ids of the programs they run (what the
//! stale-filter cleanup of [`crate::kernel::stale_filters`] decides on).

use std::{
    ffi::CString,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, parse_string,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkHeader, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
    tc::TcMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};

/// `IFLA_IFNAME` from `linux/if_link.h`: the attribute carrying the interface name.
const IFLA_IFNAME: u16 = 3;
/// Size of a link message header (`struct ifinfomsg`).
const IFINFOMSG_LEN: usize = 16;
/// Receive buffer for link events: one datagram holds one or a few link messages of a few KiB.
const EVENT_BUFFER_LEN: usize = 64 * 1024;
/// Socket receive buffer asked for, so bursts of interface churn do not overflow it (the
/// kernel caps it at `net.core.rmem_max`; an overflow is detected and handled anyway).
const EVENT_SOCKET_BUFFER: usize = 1024 * 1024;

/// `TCA_KIND` and `TCA_OPTIONS` from `linux/rtnetlink.h`: a filter's classifier and its options.
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
/// cls_bpf options from `linux/pkt_cls.h`: the name given at attach, the program's tag and id.
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_TAG: u16 = 10;
const TCA_BPF_ID: u16 = 11;
/// Size of a traffic control message header (`struct tcmsg`).
const TCMSG_LEN: usize = 20;
/// Parent of the filters at ingress of a clsact qdisc (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`).
pub const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
/// Parent of the filters at egress of a clsact qdisc (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`).
pub const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;

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
    default_route_interfaces_for(&[IpFamily::V4, IpFamily::V6])
}

/// An IP version, for route lookups of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// Like [`default_route_interfaces`], for the default routes of the given families only
/// (the ping prober binds IPv4 and IPv6 sockets to their own default-route interface).
pub fn default_route_interfaces_for(families: &[IpFamily]) -> Result<Vec<String>> {
    let routes = dump_routes(families)
        .map_err(|err| Error::Other(format!("route dump over rtnetlink: {err}")))?;
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

/// The index of the interface the kernel would send a packet to `destination` out of: one
/// `RTM_GETROUTE` for that address, as `ip route get` asks (policy routing, the local table and
/// the loopback device included). None when the route has no output interface; the kernel's
/// own error (`ENETUNREACH` with no route, say) otherwise.
pub fn route_interface(destination: IpAddr) -> io::Result<Option<u32>> {
    let mut request = RouteMessage::default();
    let (family, prefix) = match destination {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    request.header.address_family = family;
    request.header.destination_prefix_length = prefix;
    request
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(destination)));
    let mut oif = None;
    exchange(RouteNetlinkMessage::GetRoute(request), false, |message| {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) = message.payload
        {
            oif = oif.or_else(|| route_oif(&route));
        }
        Ok(())
    })?;
    Ok(oif)
}

/// The output interface a route reply names (`RTA_OIF`).
fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// Dumps the IPv4 and IPv6 routing tables.
fn dump_routes(families: &[IpFamily]) -> io::Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    for family in families {
        let family = match family {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        };
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
    let mut replies = Vec::new();
    dump_raw(request, |message| {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        if let NetlinkPayload::InnerMessage(inner) = message.payload {
            replies.push(inner);
        }
        Ok(())
    })?;
    Ok(replies)
}

/// Sends one dump request and hands every reply message (netlink header included) to `each`,
/// up to NLMSG_DONE. An NLMSG_ERROR reply becomes the OS error it carries.
fn dump_raw(
    request: RouteNetlinkMessage,
    each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    exchange(request, true, each)
}

/// Sends one request, a dump (answered by messages up to NLMSG_DONE) or a single query
/// (answered by one datagram), and hands every reply message to `each`. An NLMSG_ERROR reply
/// becomes the OS error it carries.
fn exchange(
    request: RouteNetlinkMessage,
    is_dump: bool,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = if is_dump {
        NLM_F_REQUEST | NLM_F_DUMP
    } else {
        NLM_F_REQUEST
    };
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        for message in messages(&receive[..size.min(receive.len())])? {
            match NetlinkBuffer::new(message).message_type() {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
                        .map_err(|err| {
                            io::Error::new(io::ErrorKind::InvalidData, err.to_string())
                        })?;
                    let code = match message.payload {
                        NetlinkPayload::Error(err) => err.code,
                        _ => None,
                    };
                    return Err(code
                        .map(|code| io::Error::from_raw_os_error(-code.get()))
                        .unwrap_or_else(|| io::Error::other("netlink error without code")));
                }
                _ => each(message)?,
            }
        }
        if !is_dump {
            return Ok(());
        }
    }
}

/// Splits a netlink datagram into its messages (each with its header).
fn messages(datagram: &[u8]) -> io::Result<Vec<&[u8]>> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        // new_checked guarantees header <= length <= rest.len().
        let length = NetlinkBuffer::new_checked(rest)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?
            .length() as usize;
        found.push(&rest[..length]);
        offset += (length + 3) & !3;
    }
    Ok(found)
}

/// An interface change reported by the kernel on the `RTNLGRP_LINK` multicast group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: the interface appeared, or changed (state, name, ...). The kernel sends
    /// one as a device is registered, before anyone can set it up.
    New { index: u32, name: String },
    /// `RTM_DELLINK`: the interface with this index is gone (deleted, or moved to another
    /// network namespace).
    Deleted { index: u32 },
}

/// Turns one received netlink datagram into the link events it carries, in order.
///
/// Only messages about whole interfaces count: the bridge's per-port notifications, which share
/// the message types but carry `AF_BRIDGE`, are skipped (a port leaving a bridge still exists),
/// as are other message types. Only the header and `IFLA_IFNAME` are decoded, so attributes a
/// newer kernel adds cannot make an event unreadable.
pub fn parse_link_events(datagram: &[u8]) -> io::Result<Vec<LinkEvent>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut events = Vec::new();
    for message in messages(datagram)? {
        let buffer = NetlinkBuffer::new(message);
        let kind = buffer.message_type();
        if kind != libc::RTM_NEWLINK && kind != libc::RTM_DELLINK {
            continue;
        }
        let payload = buffer.payload();
        let header = LinkHeader::parse(payload)
            .map_err(|err| invalid(format!("link message header: {err}")))?;
        if header.interface_family != AddressFamily::Unspec {
            continue;
        }
        let index = header.index;
        if kind == libc::RTM_DELLINK {
            events.push(LinkEvent::Deleted { index });
            continue;
        }
        let mut name = None;
        for attribute in NlasIterator::new(&payload[IFINFOMSG_LEN.min(payload.len())..]) {
            let attribute =
                attribute.map_err(|err| invalid(format!("attribute of link {index}: {err}")))?;
            if attribute.kind() == IFLA_IFNAME {
                // A C string: the name ends at the first NUL (bytes after it are not part of it).
                let value = attribute.value();
                let end = value
                    .iter()
                    .position(|&byte| byte == 0)
                    .unwrap_or(value.len());
                name = Some(
                    parse_string(&value[..end])
                        .map_err(|err| invalid(format!("name of link {index}: {err}")))?,
                );
                break;
            }
        }
        let name = name.ok_or_else(|| invalid(format!("new link {index} without a name")))?;
        events.push(LinkEvent::New { index, name });
    }
    Ok(events)
}

/// Every interface of this network namespace as (index, name), from a link dump.
pub fn links() -> io::Result<Vec<(u32, String)>> {
    let mut found = Vec::new();
    dump_raw(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        |message| {
            for event in parse_link_events(message)? {
                if let LinkEvent::New { index, name } = event {
                    found.push((index, name));
                }
            }
            Ok(())
        },
    )?;
    Ok(found)
}

/// A cls_bpf filter running an eBPF program, as a filter dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClsBpfFilter {
    /// Preference (priority) and handle: what deleting it takes.
    pub priority: u16,
    pub handle: u32,
    /// The name its creator gave it when attaching (aya gives the program's name; `tc` gives
    /// `FILE:[SECTION]`): chosen by whoever attached it, so it proves nothing about the owner.
    pub name: Option<String>,
    /// Kernel id of the program it runs.
    pub program_id: u32,
    /// The tag of that program (a hash of its instructions, map references masked out).
    pub program_tag: Option<u64>,
}

/// The cls_bpf filters running eBPF programs in one netlink datagram of a filter dump, in
/// order. Other classifiers, classic BPF filters and the per-priority entries without a program
/// are skipped; only the header and the attributes named above are decoded, so attributes a
/// newer kernel adds cannot make a dump unreadable.
pub fn parse_cls_bpf_filters(datagram: &[u8]) -> io::Result<Vec<ClsBpfFilter>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut filters = Vec::new();
    for message in messages(datagram)? {
        let buffer = NetlinkBuffer::new(message);
        if buffer.message_type() != libc::RTM_NEWTFILTER {
            continue;
        }
        let payload = buffer.payload();
        if payload.len() < TCMSG_LEN {
            return Err(invalid(format!(
                "filter message of {} bytes, shorter than its header",
                payload.len()
            )));
        }
        let word = |at: usize| u32::from_ne_bytes(payload[at..at + 4].try_into().unwrap());
        let handle = word(8);
        let priority = (word(16) >> 16) as u16;
        let (mut kind, mut name, mut tag, mut id) = (None, None, None, None);
        for attribute in NlasIterator::new(&payload[TCMSG_LEN..]) {
            let attribute = attribute.map_err(|err| invalid(format!("filter attribute: {err}")))?;
            match attribute.kind() {
                TCA_KIND => kind = Some(c_string(attribute.value())),
                TCA_OPTIONS => {
                    for option in NlasIterator::new(attribute.value()) {
                        let option =
                            option.map_err(|err| invalid(format!("cls_bpf option: {err}")))?;
                        let value = option.value();
                        match option.kind() {
                            TCA_BPF_NAME => name = Some(c_string(value)),
                            TCA_BPF_TAG => {
                                tag = <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
                            }
                            TCA_BPF_ID => {
                                id = <[u8; 4]>::try_from(value).ok().map(u32::from_ne_bytes)
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some("bpf"), Some(program_id)) = (kind.as_deref(), id) {
            filters.push(ClsBpfFilter {
                priority,
                handle,
                name,
                program_id,
                program_tag: tag,
            });
        }
    }
    Ok(filters)
}

/// A NUL-terminated string attribute (what follows the first NUL is not part of it).
fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// The cls_bpf filters running eBPF programs under `parent` ([`CLSACT_INGRESS`] or
/// [`CLSACT_EGRESS`]) of interface `ifindex`, from a filter dump. An interface without a clsact
/// qdisc has none.
pub fn cls_bpf_filters(ifindex: u32, parent: u32) -> io::Result<Vec<ClsBpfFilter>> {
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    request.header.parent = parent.into();
    let mut found = Vec::new();
    dump_raw(RouteNetlinkMessage::GetTrafficFilter(request), |message| {
        found.extend(parse_cls_bpf_filters(message)?);
        Ok(())
    })?;
    Ok(found)
}

/// What one read from a [`LinkSubscription`] gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The events of one datagram (possibly none of interest).
    Events(Vec<LinkEvent>),
    /// The kernel dropped events (the socket buffer overflowed) or one did not fit the buffer:
    /// the caller must re-read the interface list ([`links`]) to catch up.
    Lost,
}

/// A non-blocking netlink socket subscribed to the `RTNLGRP_LINK` multicast group. Register its
/// descriptor with a reactor and call [`LinkSubscription::receive`] when it is readable.
#[derive(Debug)]
pub struct LinkSubscription {
    socket: Socket,
    buffer: Vec<u8>,
}

impl LinkSubscription {
    /// Opens the socket and joins the group. Events that happen from now on are queued, so
    /// subscribe before reading the state the events update.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        // Best effort: the default buffer still works, with a resync after an overflow.
        let _ = socket.set_rx_buf_sz(EVENT_SOCKET_BUFFER);
        socket.set_non_blocking(true)?;
        Ok(LinkSubscription {
            socket,
            buffer: vec![0; EVENT_BUFFER_LEN],
        })
    }

    /// Reads one datagram. Fails with [`io::ErrorKind::WouldBlock`] when none is queued.
    /// Datagrams not sent by the kernel (another process can address our port) are ignored.
    pub fn receive(&mut self) -> io::Result<Received> {
        let (size, sender) = match self
            .socket
            .recv_from(&mut &mut self.buffer[..], libc::MSG_TRUNC)
        {
            Ok(received) => received,
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Lost),
            Err(err) => return Err(err),
        };
        if sender.port_number() != 0 {
            return Ok(Received::Events(Vec::new()));
        }
        if size > self.buffer.len() {
            return Ok(Received::Lost);
        }
        parse_link_events(&self.buffer[..size]).map(Received::Events)
    }
}

impl AsRawFd for LinkSubscription {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::DefaultNla;
    use netlink_packet_route::{
        link::{LinkAttribute, LinkFlags},
        route::{RouteNextHop, RouteType},
    };

    use super::*;

    /// A link message as the kernel sends it: family, index, flags and attributes.
    fn link(family: AddressFamily, index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.interface_family = family;
        message.header.index = index;
        message.header.flags = LinkFlags::Broadcast | LinkFlags::Multicast; // down
        message.attributes = attributes;
        message
    }

    /// One datagram holding `messages` back to back, each 4-byte aligned.
    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for message in messages {
            let mut packet = NetlinkMessage::new(NetlinkHeader::default(), message.into());
            packet.finalize();
            let mut buf = vec![0; packet.buffer_len()];
            packet.serialize(&mut buf);
            bytes.extend_from_slice(&buf);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        bytes
    }

    fn name(name: &str) -> LinkAttribute {
        LinkAttribute::IfName(name.into())
    }

    #[test]
    fn new_and_deleted_links_become_events_in_order() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link(
                AddressFamily::Unspec,
                7,
                vec![
                    LinkAttribute::Mtu(1500),
                    // An attribute this crate does not know, before the name.
                    LinkAttribute::Other(DefaultNla::new(0x7ff0, vec![1, 2, 3])),
                    name("veth7"),
                ],
            )),
            RouteNetlinkMessage::DelLink(link(AddressFamily::Unspec, 4, vec![name("old0")])),
        ]);
        assert_eq!(
            parse_link_events(&bytes).unwrap(),
            [
                LinkEvent::New {
                    index: 7,
                    name: "veth7".into()
                },
                LinkEvent::Deleted { index: 4 },
            ]
        );
    }

    #[test]
    fn bridge_port_notifications_and_other_messages_are_skipped() {
        let bytes = datagram(vec![
            // A port leaving a bridge: the device itself stays.
            RouteNetlinkMessage::DelLink(link(AddressFamily::Bridge, 4, vec![name("port0")])),
            RouteNetlinkMessage::NewLink(link(AddressFamily::Bridge, 4, vec![name("port0")])),
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
        ]);
        assert_eq!(parse_link_events(&bytes).unwrap(), []);
        assert_eq!(parse_link_events(&[]).unwrap(), []);
    }

    /// One netlink attribute, padded to 4 bytes.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(value);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    /// A filter message as a dump carries it: header, tcmsg, attributes.
    fn filter_message(kind: u16, handle: u32, priority: u16, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![0u8; 4]; // family, padding
        payload.extend(2i32.to_ne_bytes()); // ifindex
        payload.extend(handle.to_ne_bytes());
        payload.extend(CLSACT_EGRESS.to_ne_bytes());
        payload.extend(((u32::from(priority) << 16) | 0x0300).to_ne_bytes());
        payload.extend(attributes.concat());
        let mut bytes = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        bytes.extend(kind.to_ne_bytes());
        bytes.extend([0u8; 10]); // flags, sequence, port
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn cls_bpf_filters_are_read_with_their_program() {
        let options = |name: &[u8], id: u32| {
            nla(
                TCA_OPTIONS | 0x8000, // NLA_F_NESTED
                &[
                    nla(TCA_BPF_NAME, name),
                    nla(TCA_BPF_TAG, &0x0123_4567_89ab_cdef_u64.to_be_bytes()),
                    nla(TCA_BPF_ID, &id.to_ne_bytes()),
                ]
                .concat(),
            )
        };
        let datagram = [
            // The per-priority entry: a kind, no program.
            filter_message(libc::RTM_NEWTFILTER, 0, 49152, &[nla(TCA_KIND, b"bpf\0")]),
            filter_message(
                libc::RTM_NEWTFILTER,
                1,
                49152,
                &[nla(TCA_KIND, b"bpf\0"), options(b"tc_egress\0", 42)],
            ),
            // Another classifier with an id-like option, and another message type.
            filter_message(
                libc::RTM_NEWTFILTER,
                1,
                49151,
                &[nla(TCA_KIND, b"u32\0"), options(b"x\0", 7)],
            ),
            filter_message(
                libc::RTM_NEWLINK,
                1,
                1,
                &[nla(TCA_KIND, b"bpf\0"), options(b"y\0", 8)],
            ),
        ]
        .concat();
        assert_eq!(
            parse_cls_bpf_filters(&datagram).unwrap(),
            [ClsBpfFilter {
                priority: 49152,
                handle: 1,
                name: Some("tc_egress".into()),
                program_id: 42,
                program_tag: Some(0x0123_4567_89ab_cdef),
            }]
        );
        // Cut short: an error, not a guess.
        let one = filter_message(
            libc::RTM_NEWTFILTER,
            1,
            1,
            &[nla(TCA_KIND, b"bpf\0"), options(b"tc_egress\0", 42)],
        );
        assert!(parse_cls_bpf_filters(&one[..one.len() - 4]).is_err());
        let mut short = filter_message(libc::RTM_NEWTFILTER, 1, 1, &[]);
        short.truncate(16 + 8);
        short[..4].copy_from_slice(&24u32.to_ne_bytes());
        let err = parse_cls_bpf_filters(&short).unwrap_err();
        assert!(err.to_string().contains("shorter than its header"), "{err}");
    }

    #[test]
    fn the_filter_dump_of_an_interface_without_clsact_is_empty() {
        assert_eq!(cls_bpf_filters(1, CLSACT_EGRESS).unwrap(), []);
    }

    #[test]
    fn names_end_at_the_first_nul() {
        // Found by fuzz/fuzz_targets/link_events.rs: bytes after the terminating NUL were kept
        // as part of the name.
        let bytes = datagram(vec![RouteNetlinkMessage::NewLink(link(
            AddressFamily::Unspec,
            7,
            vec![LinkAttribute::Other(DefaultNla::new(
                IFLA_IFNAME,
                b"veth7\0\x17\0".to_vec(),
            ))],
        ))]);
        assert_eq!(
            parse_link_events(&bytes).unwrap(),
            [LinkEvent::New {
                index: 7,
                name: "veth7".into()
            }]
        );
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        let bytes = datagram(vec![RouteNetlinkMessage::NewLink(link(
            AddressFamily::Unspec,
            7,
            vec![name("veth7")],
        ))]);
        // Cut short: the length field claims more than arrived.
        let err = parse_link_events(&bytes[..bytes.len() - 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // A new link without a name cannot be acted on.
        let nameless = datagram(vec![RouteNetlinkMessage::NewLink(link(
            AddressFamily::Unspec,
            7,
            vec![LinkAttribute::Mtu(1500)],
        ))]);
        let err = parse_link_events(&nameless).unwrap_err();
        assert!(
            err.to_string().contains("new link 7 without a name"),
            "{err}"
        );
    }

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

    #[test]
    fn the_link_dump_lists_loopback() {
        let links = links().unwrap();
        assert!(links.contains(&(1, "lo".to_string())), "{links:?}");
    }
}

//! Sans-IO codec of Jool's statistics protocol over generic netlink (Jool 4.1.5 and later).
//!
//! Everything here works on the generic-netlink payload: the bytes after the 16-byte
//! `nlmsghdr`, which the client frames and unframes. A payload is the 4-byte genl header
//! (command, version, reserved), Jool's 28-byte `joolnlhdr` (magic "jool", big-endian version,
//! translator type, flags, instance name) and flat netlink attributes. A stats reply carries one
//! `u64` attribute per statistic id; an error reply sets the ERROR header flag and carries a
//! positive errno and a message. The stat-id tables (`stat_names`, re-exported here)
//! map ids to metric names and types; ids that are not stable across Jool releases are resolved
//! by the layout the module reveals (the highest id it sends), and ids we do not know are
//! exported raw.
//!
//! Nothing here panics on any input: replies are untrusted bytes (see the `jool_codec` fuzz
//! target).

use std::fmt;

pub use super::stat_names::{Layout, StatDef, StatKind};

/// `JNLOP_INSTANCE_FOREACH`: lists instances (needs CAP_NET_ADMIN).
pub const CMD_INSTANCE_FOREACH: u8 = 0;
/// `JNLOP_STATS_FOREACH`: reads the statistics of one instance.
pub const CMD_STATS_FOREACH: u8 = 7;
/// Generic-netlink header version we send (the kernel does not check it).
const GENL_VERSION: u8 = 1;
/// Size of the genl header.
const GENL_HEADER_LEN: usize = 4;
/// Size of `struct joolnlhdr` since 4.1.5.
pub const JOOL_HEADER_LEN: usize = 28;
/// Instance names are NUL-terminated in a 16-byte field.
pub const INAME_MAX_LEN: usize = 15;
const MAGIC: &[u8; 4] = b"jool";

/// joolnlhdr flag: the reply is an error.
const FLAG_ERROR: u8 = 0x01;
/// joolnlhdr flag: more data; ask again from the last item received.
const FLAG_MORE: u8 = 0x08;

/// Root attribute `JNLAR_OFFSET` (nested, instance listing paging).
const ATTR_OFFSET: u16 = 8;
/// Root attribute `JNLAR_OFFSET_U8` (u8, stats paging: last id received).
const ATTR_OFFSET_U8: u16 = 9;
/// Error attributes.
const ATTR_ERROR_CODE: u16 = 1;
const ATTR_ERROR_MESSAGE: u16 = 2;
/// Instance listing: one nested entry per instance, and its fields.
const ATTR_LIST_ENTRY: u16 = 1;
const ATTR_INSTANCE_NS: u16 = 1;
const ATTR_INSTANCE_XF: u16 = 2;
const ATTR_INSTANCE_NAME: u16 = 3;
/// Netlink attribute type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

/// The translator type (`xt` byte): Jool uses one family for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Xlator {
    Siit,
    Nat64,
}

impl Xlator {
    pub const ALL: [Xlator; 2] = [Xlator::Nat64, Xlator::Siit];

    fn wire(self) -> u8 {
        match self {
            Xlator::Siit => 1,
            Xlator::Nat64 => 2,
        }
    }

    /// The `type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Xlator::Siit => "siit",
            Xlator::Nat64 => "nat64",
        }
    }
}

impl fmt::Display for Xlator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Jool version `major.minor.revision.development` as the module reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JoolVersion {
    pub major: u8,
    pub minor: u8,
    pub revision: u8,
    pub development: u8,
}

impl JoolVersion {
    /// The version we send when the module's is unknown: 4.1.9 and later modules only compare
    /// major.minor.
    pub const DEFAULT: JoolVersion = JoolVersion::new(4, 1, 9, 0);

    pub const fn new(major: u8, minor: u8, revision: u8, development: u8) -> Self {
        JoolVersion {
            major,
            minor,
            revision,
            development,
        }
    }

    /// Parses `4.1.9.0` (as in `/sys/module/jool_common/version`, trailing whitespace allowed).
    pub fn parse(text: &str) -> Option<JoolVersion> {
        let mut parts = text.trim().split('.').map(|part| part.parse::<u8>().ok());
        let version = JoolVersion::new(
            parts.next()??,
            parts.next()??,
            parts.next()??,
            parts.next()??,
        );
        parts.next().is_none().then_some(version)
    }

    /// The module version named in a version-mismatch error message ("… but the kernel module
    /// is 4.1.9.0.").
    pub fn from_mismatch_message(message: &str) -> Option<JoolVersion> {
        let rest = &message[message.find("kernel module is ")? + "kernel module is ".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        JoolVersion::parse(rest[..end].trim_end_matches('.'))
    }

    fn to_be_bytes(self) -> [u8; 4] {
        [self.major, self.minor, self.revision, self.development]
    }
}

impl fmt::Display for JoolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.revision, self.development
        )
    }
}

/// An instance name that fits Jool's 16-byte field: 1 to 15 bytes, no NUL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn new(name: &str) -> Result<InstanceName, String> {
        if name.is_empty() {
            return Err("an instance name must not be empty".into());
        }
        if name.len() > INAME_MAX_LEN {
            return Err(format!(
                "instance name {name:?} is {} bytes long; Jool allows at most {INAME_MAX_LEN}",
                name.len()
            ));
        }
        if name.contains('\0') {
            return Err(format!("instance name {name:?} contains a NUL byte"));
        }
        Ok(InstanceName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// genl header + joolnlhdr for `command`.
fn header(command: u8, xlator: Xlator, version: JoolVersion, instance: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(GENL_HEADER_LEN + JOOL_HEADER_LEN + 8);
    out.extend_from_slice(&[command, GENL_VERSION, 0, 0]);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&[xlator.wire(), 0, 0, 0]);
    let mut iname = [0u8; INAME_MAX_LEN + 1];
    let bytes = instance.as_bytes();
    let len = bytes.len().min(INAME_MAX_LEN);
    iname[..len].copy_from_slice(&bytes[..len]);
    out.extend_from_slice(&iname);
    out
}

/// Appends one attribute, padded to 4 bytes.
fn push_attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// The generic-netlink payload asking for the statistics of `instance`, starting after stat id
/// `after` (the last id received, for the next page) or from the first id.
pub fn stats_request(
    instance: &InstanceName,
    xlator: Xlator,
    version: JoolVersion,
    after: Option<u8>,
) -> Vec<u8> {
    let mut out = header(CMD_STATS_FOREACH, xlator, version, instance.as_str());
    if let Some(last) = after {
        push_attribute(&mut out, ATTR_OFFSET_U8, &[last]);
    }
    out
}

/// An instance as the listing reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedInstance {
    /// Low 32 bits of the kernel's network-namespace pointer (an opaque tag).
    pub namespace: u32,
    /// 4 = netfilter, 8 = iptables.
    pub framework: u8,
    pub name: String,
}

/// The payload listing the instances of `xlator` in every namespace, after `after` (the last
/// entry received, for the next page).
pub fn instance_list_request(
    xlator: Xlator,
    version: JoolVersion,
    after: Option<&ListedInstance>,
) -> Vec<u8> {
    let mut out = header(CMD_INSTANCE_FOREACH, xlator, version, "");
    if let Some(last) = after {
        let mut nested = Vec::new();
        push_attribute(&mut nested, ATTR_INSTANCE_NS, &last.namespace.to_ne_bytes());
        push_attribute(&mut nested, ATTR_INSTANCE_XF, &[last.framework]);
        let mut name = last.name.as_bytes().to_vec();
        name.push(0);
        push_attribute(&mut nested, ATTR_INSTANCE_NAME, &name);
        push_attribute(&mut out, ATTR_OFFSET | NLA_F_NESTED, &nested);
    }
    out
}

/// Why a reply could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("reply of {0} bytes is shorter than the generic-netlink and Jool headers")]
    Short(usize),
    #[error("reply does not start with Jool's magic \"jool\"")]
    BadMagic,
    #[error("attribute at offset {offset} has length {len}, which does not fit")]
    BadAttribute { offset: usize, len: usize },
    #[error("statistic {id} has a {len}-byte value, expected 8")]
    BadStatValue { id: u16, len: usize },
    #[error("error reply without an error code")]
    ErrorWithoutCode,
    #[error("instance entry without a {0}")]
    IncompleteInstance(&'static str),
}

/// An error the module reported inside a well-formed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoolError {
    /// Positive errno (3 = ESRCH: no such instance, 22 = EINVAL, 1 = EPERM).
    pub code: u16,
    pub message: String,
}

/// A decoded stats reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsReply {
    /// (stat id, value) in the order received; `more` asks for another page.
    Stats {
        values: Vec<(u16, u64)>,
        more: bool,
    },
    Error(JoolError),
}

/// A decoded instance-listing reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListReply {
    Instances {
        instances: Vec<ListedInstance>,
        more: bool,
    },
    Error(JoolError),
}

/// Iterates over flat attributes: (type without flag bits, payload, offset).
fn attributes(
    bytes: &[u8],
    base: usize,
) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    let mut pos = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= bytes.len() {
            return None;
        }
        let rest = &bytes[pos..];
        if rest.len() < 4 {
            failed = true;
            return Some(Err(DecodeError::BadAttribute {
                offset: base + pos,
                len: rest.len(),
            }));
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            failed = true;
            return Some(Err(DecodeError::BadAttribute {
                offset: base + pos,
                len,
            }));
        }
        let payload = &rest[4..len];
        pos += (len + 3) & !3;
        Some(Ok((kind, payload)))
    })
}

/// Splits a reply into its joolnlhdr flags and the attribute bytes.
fn split_reply(payload: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let body_start = GENL_HEADER_LEN + JOOL_HEADER_LEN;
    if payload.len() < body_start {
        return Err(DecodeError::Short(payload.len()));
    }
    let jool = &payload[GENL_HEADER_LEN..body_start];
    if &jool[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    Ok((jool[9], &payload[body_start..]))
}

fn decode_error(body: &[u8]) -> Result<JoolError, DecodeError> {
    let mut code = None;
    let mut message = String::new();
    for attribute in attributes(body, GENL_HEADER_LEN + JOOL_HEADER_LEN) {
        let (kind, value) = attribute?;
        match kind {
            ATTR_ERROR_CODE if value.len() >= 2 => {
                code = Some(u16::from_ne_bytes([value[0], value[1]]))
            }
            ATTR_ERROR_MESSAGE => {
                let text = value.split(|&b| b == 0).next().unwrap_or_default();
                message = String::from_utf8_lossy(text).into_owned();
            }
            _ => {}
        }
    }
    Ok(JoolError {
        code: code.ok_or(DecodeError::ErrorWithoutCode)?,
        message,
    })
}

/// Decodes the generic-netlink payload of a stats reply.
pub fn parse_stats_reply(payload: &[u8]) -> Result<StatsReply, DecodeError> {
    let (flags, body) = split_reply(payload)?;
    if flags & FLAG_ERROR != 0 {
        return decode_error(body).map(StatsReply::Error);
    }
    let mut values = Vec::with_capacity(body.len() / 12);
    for attribute in attributes(body, GENL_HEADER_LEN + JOOL_HEADER_LEN) {
        let (id, value) = attribute?;
        // Architectures without efficient unaligned access may insert a zero-length-value
        // padding attribute before a u64; it carries nothing.
        if value.is_empty() {
            continue;
        }
        let bytes: [u8; 8] = value.try_into().map_err(|_| DecodeError::BadStatValue {
            id,
            len: value.len(),
        })?;
        values.push((id, u64::from_ne_bytes(bytes)));
    }
    Ok(StatsReply::Stats {
        values,
        more: flags & FLAG_MORE != 0,
    })
}

/// Decodes the generic-netlink payload of an instance-listing reply.
pub fn parse_instance_list_reply(payload: &[u8]) -> Result<ListReply, DecodeError> {
    let (flags, body) = split_reply(payload)?;
    if flags & FLAG_ERROR != 0 {
        return decode_error(body).map(ListReply::Error);
    }
    let mut instances = Vec::new();
    for attribute in attributes(body, GENL_HEADER_LEN + JOOL_HEADER_LEN) {
        let (kind, nested) = attribute?;
        if kind != ATTR_LIST_ENTRY {
            continue;
        }
        let (mut namespace, mut framework, mut name) = (None, None, None);
        for field in attributes(nested, 0) {
            let (kind, value) = field?;
            match kind {
                ATTR_INSTANCE_NS if value.len() >= 4 => {
                    namespace = Some(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]))
                }
                ATTR_INSTANCE_XF if !value.is_empty() => framework = Some(value[0]),
                ATTR_INSTANCE_NAME => {
                    let text = value.split(|&b| b == 0).next().unwrap_or_default();
                    name = Some(String::from_utf8_lossy(text).into_owned());
                }
                _ => {}
            }
        }
        instances.push(ListedInstance {
            namespace: namespace.ok_or(DecodeError::IncompleteInstance("namespace"))?,
            framework: framework.ok_or(DecodeError::IncompleteInstance("framework"))?,
            name: name.ok_or(DecodeError::IncompleteInstance("name"))?,
        });
    }
    Ok(ListReply::Instances {
        instances,
        more: flags & FLAG_MORE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn default_instance() -> InstanceName {
        InstanceName::new("default").unwrap()
    }

    /// Reply header as the 4.1.9 module sends it: genl cmd 0 version 2, the request's
    /// joolnlhdr echoed with `flags`.
    fn reply_header(flags: u8) -> Vec<u8> {
        let mut out = hex("00020000 6a6f6f6c 04010900 02");
        out.push(flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(b"default\0\0\0\0\0\0\0\0\0");
        out
    }

    fn stat_attribute(id: u16, value: u64) -> Vec<u8> {
        let mut out = vec![12, 0];
        out.extend_from_slice(&id.to_ne_bytes());
        out.extend_from_slice(&value.to_ne_bytes());
        out
    }

    #[test]
    fn stats_request_matches_the_cli_bytes() {
        // Bytes 16.. of the request `jool stats display` sends (research note, section 1).
        let expected = hex("07010000 6a6f6f6c 04010900 02000000 64656661756c74000000000000000000");
        let request = stats_request(
            &default_instance(),
            Xlator::Nat64,
            JoolVersion::DEFAULT,
            None,
        );
        assert_eq!(request, expected);
        assert_eq!(request.len() + 16, 48);
    }

    #[test]
    fn next_page_request_carries_the_last_id() {
        let request = stats_request(
            &InstanceName::new("siit1").unwrap(),
            Xlator::Siit,
            JoolVersion::new(4, 1, 7, 0),
            Some(60),
        );
        assert_eq!(request.len() + 16, 56);
        assert_eq!(&request[8..12], &[4, 1, 7, 0]);
        assert_eq!(request[12], 1);
        assert_eq!(&request[16..22], b"siit1\0");
        assert_eq!(&request[32..], &hex("0500 0900 3c000000")[..]);
    }

    #[test]
    fn reply_values_are_decoded_in_order() {
        // Start of the verified 4.1.9 reply: id 1 = 8, id 2 = 0.
        let mut reply = reply_header(0);
        reply.extend(hex("0c00 0100 0800000000000000 0c00 0200 0000000000000000"));
        assert_eq!(
            parse_stats_reply(&reply),
            Ok(StatsReply::Stats {
                values: vec![(1, 8), (2, 0)],
                more: false
            })
        );
    }

    #[test]
    fn the_more_flag_asks_for_another_page() {
        let mut reply = reply_header(FLAG_MORE);
        reply.extend(stat_attribute(60, u64::MAX));
        assert_eq!(
            parse_stats_reply(&reply),
            Ok(StatsReply::Stats {
                values: vec![(60, u64::MAX)],
                more: true
            })
        );
    }

    #[test]
    fn padding_attributes_are_skipped() {
        let mut reply = reply_header(0);
        reply.extend(hex("0400 4600"));
        reply.extend(stat_attribute(3, 5));
        assert_eq!(
            parse_stats_reply(&reply),
            Ok(StatsReply::Stats {
                values: vec![(3, 5)],
                more: false
            })
        );
    }

    #[test]
    fn error_replies_carry_code_and_message() {
        let mut reply = reply_header(FLAG_ERROR);
        reply.extend(hex("0600 0100 0300 0000"));
        let message = b"This namespace lacks an instance named 'default'.\0";
        let mut attribute = vec![(4 + message.len()) as u8, 0, 2, 0];
        attribute.extend_from_slice(message);
        attribute.resize(attribute.len().next_multiple_of(4), 0);
        reply.extend(attribute);
        assert_eq!(
            parse_stats_reply(&reply),
            Ok(StatsReply::Error(JoolError {
                code: 3,
                message: "This namespace lacks an instance named 'default'.".into()
            }))
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(parse_stats_reply(&[0; 10]), Err(DecodeError::Short(10)));
        let mut bad_magic = reply_header(0);
        bad_magic[4] = b'J';
        assert_eq!(parse_stats_reply(&bad_magic), Err(DecodeError::BadMagic));
        let mut overrun = reply_header(0);
        overrun.extend(hex("1000 0100 0000"));
        assert_eq!(
            parse_stats_reply(&overrun),
            Err(DecodeError::BadAttribute {
                offset: 32,
                len: 16
            })
        );
        let mut short_value = reply_header(0);
        short_value.extend(hex("0800 0500 01000000"));
        assert_eq!(
            parse_stats_reply(&short_value),
            Err(DecodeError::BadStatValue { id: 5, len: 4 })
        );
        let mut no_code = reply_header(FLAG_ERROR);
        no_code.extend(hex("0500 0200 00000000"));
        assert_eq!(
            parse_stats_reply(&no_code),
            Err(DecodeError::ErrorWithoutCode)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            JoolVersion::parse("4.1.9.0\n"),
            Some(JoolVersion::new(4, 1, 9, 0))
        );
        assert_eq!(JoolVersion::parse("4.1.9"), None);
        assert_eq!(JoolVersion::parse("4.1.9.0.1"), None);
        assert_eq!(JoolVersion::parse("4.1.x.0"), None);
        let message = "Version mismatch. The userspace client's version is 4.2.0.0,\nbut the \
                       kernel module is 4.1.9.0.\nPlease update the kernel module.";
        assert_eq!(
            JoolVersion::from_mismatch_message(message),
            Some(JoolVersion::new(4, 1, 9, 0))
        );
        assert_eq!(JoolVersion::from_mismatch_message("no version here"), None);
    }

    #[test]
    fn instance_names_fit_the_field() {
        assert!(InstanceName::new("").is_err());
        assert!(InstanceName::new("a\0b").is_err());
        let err = InstanceName::new("sixteen-bytes-xx").unwrap_err();
        assert!(err.contains("\"sixteen-bytes-xx\" is 16 bytes"), "{err}");
        assert!(InstanceName::new("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn instance_listing_round_trip() {
        let last = ListedInstance {
            namespace: 0xbde9dcc0,
            framework: 4,
            name: "default".into(),
        };
        let request = instance_list_request(Xlator::Nat64, JoolVersion::DEFAULT, Some(&last));
        assert_eq!(request[0], CMD_INSTANCE_FOREACH);
        // The paging attribute is nested {NS, XF, INAME}.
        let nested = &request[32..];
        assert_eq!(u16::from_ne_bytes([nested[2], nested[3]]), 0x8008);

        let mut reply = reply_header(0);
        let mut entry = Vec::new();
        push_attribute(&mut entry, ATTR_INSTANCE_NS, &0xbde9dcc0u32.to_ne_bytes());
        push_attribute(&mut entry, ATTR_INSTANCE_XF, &[4]);
        push_attribute(&mut entry, ATTR_INSTANCE_NAME, b"default\0");
        push_attribute(&mut reply, ATTR_LIST_ENTRY | NLA_F_NESTED, &entry);
        assert_eq!(
            parse_instance_list_reply(&reply),
            Ok(ListReply::Instances {
                instances: vec![last],
                more: false
            })
        );
    }
}

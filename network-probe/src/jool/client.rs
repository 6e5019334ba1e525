//! The generic-netlink client that reads Jool statistics: resolves the "Jool" family over
//! nlctrl (cached until a request shows it is stale), sends the requests the
//! [`codec`](super::codec) builds, follows the "more data" paging, and classifies every failure
//! into a reason an operator can act on.
//!
//! neli frames and unframes the netlink messages; the Jool payloads stay in the sans-IO codec.
//! The request version is the module's own (`/sys/module/jool_common/version`), or ours
//! (4.1.9.0, accepted by every 4.1.9+ module), corrected once from a version-mismatch error.
//! Every receive has a timeout and paging is capped, so one read is bounded.

use std::{os::fd::AsRawFd, time::Duration};

use neli::{
    attr::Attribute,
    consts::{
        genl::{CtrlAttr, CtrlCmd},
        nl::{GenlId, NlmF},
        socket::NlFamily,
    },
    genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, NlattrBuilder},
    nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder},
    socket::synchronous::NlSocketHandle,
    types::{Buffer, GenlBuffer},
    utils::Groups,
};

use super::codec::{
    self, InstanceName, JOOL_HEADER_LEN, JoolError, JoolVersion, Layout, ListReply, ListedInstance,
    StatsReply, Xlator,
};

/// Where the module reports its version.
pub(crate) const MODULE_VERSION_PATH: &str = "/sys/module/jool_common/version";
/// Most pages followed for one read (4.1.x sends everything in one).
const MAX_PAGES: usize = 16;
/// Most unrelated messages skipped while waiting for a reply (late answers to timed-out
/// requests).
const MAX_STRAY_MESSAGES: usize = 8;

/// Why an instance could not be read; [`ReadError::reason`] is the `reason` label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    ModuleMissing(String),
    #[error("{0}")]
    InstanceMissing(String),
    #[error("{0}")]
    VersionRefused(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Netlink(String),
}

impl ReadError {
    pub const REASONS: [&'static str; 5] = [
        "module_missing",
        "instance_missing",
        "version_refused",
        "permission_denied",
        "netlink_error",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::ModuleMissing(_) => "module_missing",
            ReadError::InstanceMissing(_) => "instance_missing",
            ReadError::VersionRefused(_) => "version_refused",
            ReadError::PermissionDenied(_) => "permission_denied",
            ReadError::Netlink(_) => "netlink_error",
        }
    }
}

/// The statistics of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// (stat id, value), ids ascending as the module sent them.
    pub values: Vec<(u16, u64)>,
    /// The id layout the highest id reveals; None when we do not know it (export raw).
    pub layout: Option<Layout>,
}

/// A failed request, before it is classified against what was asked.
enum Failure {
    /// The netlink layer refused the message (negative errno as a positive value).
    Errno(i32),
    /// The module answered with a Jool error.
    Jool(JoolError),
    Other(String),
}

/// One netlink socket talking to Jool.
pub(crate) struct JoolClient {
    socket: NlSocketHandle,
    family: Option<u16>,
    seq: u32,
    module_version_path: &'static str,
}

impl JoolClient {
    /// Opens a generic-netlink socket whose receives give up after `timeout`.
    pub(crate) fn connect(timeout: Duration) -> Result<JoolClient, ReadError> {
        let socket =
            NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty()).map_err(|err| {
                ReadError::Netlink(format!("opening a generic-netlink socket: {err}"))
            })?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt reads a timeval of the given size from a live stack value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ReadError::Netlink(format!(
                "setting the netlink receive timeout: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(JoolClient {
            socket,
            family: None,
            seq: 0,
            module_version_path: MODULE_VERSION_PATH,
        })
    }

    /// Reads every statistic of `instance`.
    pub(crate) fn read_stats(
        &mut self,
        instance: &InstanceName,
        xlator: Xlator,
    ) -> Result<Stats, ReadError> {
        let mut values: Vec<(u16, u64)> = Vec::with_capacity(96);
        let mut version = self.request_version();
        let mut version_retried = false;
        let mut family_retried = false;
        let mut pages = 0;
        let mut after = None;
        loop {
            let family = self.family()?;
            let request = codec::stats_request(instance, xlator, version, after);
            let failure = match self.round_trip(family, &request) {
                Ok(payload) => match codec::parse_stats_reply(&payload) {
                    Ok(StatsReply::Stats { values: page, more }) => {
                        let progressed = page.last().map(|(id, _)| *id);
                        values.extend(page);
                        pages += 1;
                        if !more {
                            break;
                        }
                        let last = progressed.ok_or_else(|| {
                            ReadError::Netlink(
                                "Jool asked for another page after an empty one".into(),
                            )
                        })?;
                        let last = u8::try_from(last).map_err(|_| {
                            ReadError::Netlink(format!(
                                "Jool paged after stat id {last}, beyond 255"
                            ))
                        })?;
                        if pages >= MAX_PAGES {
                            return Err(ReadError::Netlink(format!(
                                "Jool still had more statistics after {MAX_PAGES} pages"
                            )));
                        }
                        after = Some(last);
                        continue;
                    }
                    Ok(StatsReply::Error(error)) => Failure::Jool(error),
                    Err(err) => Failure::Other(format!("malformed Jool reply: {err}")),
                },
                Err(failure) => failure,
            };
            match failure {
                // A stale family id (the module was reloaded): resolve again, once.
                Failure::Errno(libc::ENOENT | libc::EOPNOTSUPP) if !family_retried => {
                    family_retried = true;
                    self.family = None;
                }
                Failure::Jool(error) if is_version_mismatch(&error) && !version_retried => {
                    version_retried = true;
                    version =
                        JoolVersion::from_mismatch_message(&error.message).ok_or_else(|| {
                            ReadError::VersionRefused(error.message.replace('\n', " "))
                        })?;
                    values.clear();
                    after = None;
                    pages = 0;
                }
                failure => {
                    // Whatever went wrong below Jool's own protocol, resolve the family again
                    // on the next read: the module may have been reloaded under another id.
                    if !matches!(failure, Failure::Jool(_)) {
                        self.family = None;
                    }
                    return Err(classify(failure, instance, xlator));
                }
            }
        }
        let layout = values
            .iter()
            .map(|(id, _)| *id)
            .max()
            .and_then(Layout::from_last_id);
        Ok(Stats { values, layout })
    }

    /// Lists the instances of `xlator` in every network namespace (needs CAP_NET_ADMIN). A type
    /// whose module is not loaded has no instances.
    pub(crate) fn list_instances(
        &mut self,
        xlator: Xlator,
    ) -> Result<Vec<ListedInstance>, ReadError> {
        let version = self.request_version();
        let family = self.family()?;
        let mut instances: Vec<ListedInstance> = Vec::new();
        for _ in 0..MAX_PAGES {
            let request = codec::instance_list_request(xlator, version, instances.last());
            let failure = match self.round_trip(family, &request) {
                Ok(payload) => match codec::parse_instance_list_reply(&payload) {
                    Ok(ListReply::Instances {
                        instances: page,
                        more,
                    }) => {
                        let empty = page.is_empty();
                        instances.extend(page);
                        if !more {
                            return Ok(instances);
                        }
                        if empty {
                            return Err(ReadError::Netlink(
                                "Jool asked for another page after an empty one".into(),
                            ));
                        }
                        continue;
                    }
                    Ok(ListReply::Error(error)) if is_module_not_loaded(&error) => {
                        return Ok(Vec::new());
                    }
                    Ok(ListReply::Error(error)) => Failure::Jool(error),
                    Err(err) => Failure::Other(format!("malformed Jool reply: {err}")),
                },
                Err(failure) => failure,
            };
            if !matches!(failure, Failure::Jool(_)) {
                self.family = None;
            }
            return Err(match classify_common(failure) {
                Ok(err) => err,
                Err(message) => ReadError::Netlink(message),
            });
        }
        Err(ReadError::Netlink(format!(
            "Jool still had more instances after {MAX_PAGES} pages"
        )))
    }

    /// The version to put in requests: the module's own when sysfs tells it.
    fn request_version(&self) -> JoolVersion {
        std::fs::read_to_string(self.module_version_path)
            .ok()
            .and_then(|text| JoolVersion::parse(&text))
            .filter(|version| (version.major, version.minor) == (4, 1))
            .unwrap_or(JoolVersion::DEFAULT)
    }

    /// The "Jool" family id, resolved over nlctrl when not cached.
    fn family(&mut self) -> Result<u16, ReadError> {
        if let Some(id) = self.family {
            return Ok(id);
        }
        let name = NlattrBuilder::default()
            .nla_type(
                AttrTypeBuilder::default()
                    .nla_type(CtrlAttr::FamilyName)
                    .build()
                    .map_err(build_error)?,
            )
            .nla_payload("Jool")
            .build()
            .map_err(build_error)?;
        let genl = GenlmsghdrBuilder::<CtrlCmd, CtrlAttr>::default()
            .cmd(CtrlCmd::Getfamily)
            .version(2)
            .attrs(std::iter::once(name).collect::<GenlBuffer<_, _>>())
            .build()
            .map_err(build_error)?;
        let seq = self.next_seq();
        let message = NlmsghdrBuilder::default()
            .nl_type(GenlId::Ctrl)
            .nl_flags(NlmF::REQUEST)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(genl))
            .build()
            .map_err(build_error)?;
        self.socket
            .send(&message)
            .map_err(|err| ReadError::Netlink(format!("asking nlctrl for Jool: {err}")))?;
        for _ in 0..MAX_STRAY_MESSAGES {
            let (messages, _) = self
                .socket
                .recv::<u16, Genlmsghdr<CtrlCmd, CtrlAttr>>()
                .map_err(|err| ReadError::Netlink(format!("waiting for nlctrl: {err}")))?;
            for message in messages {
                let message: Nlmsghdr<u16, Genlmsghdr<CtrlCmd, CtrlAttr>> = message
                    .map_err(|err| ReadError::Netlink(format!("decoding nlctrl's reply: {err}")))?;
                if *message.nl_seq() != seq {
                    continue;
                }
                match message.nl_payload() {
                    NlPayload::Payload(reply) => {
                        let attrs = reply.attrs().get_attr_handle();
                        let header_size = attrs.get_attr_payload_as::<u32>(CtrlAttr::Hdrsize).ok();
                        if header_size.is_some_and(|size| (size as usize) < JOOL_HEADER_LEN) {
                            return Err(ReadError::VersionRefused(format!(
                                "the Jool module uses a {}-byte header (Jool 4.1.4 or older), \
                                 which this daemon does not speak; update Jool",
                                header_size.unwrap_or_default()
                            )));
                        }
                        let id = attrs
                            .get_attribute(CtrlAttr::FamilyId)
                            .and_then(|attr| attr.get_payload_as::<u16>().ok())
                            .ok_or_else(|| {
                                ReadError::Netlink("nlctrl's reply has no family id".into())
                            })?;
                        self.family = Some(id);
                        return Ok(id);
                    }
                    NlPayload::Err(err) if -*err.error() == libc::ENOENT => {
                        return Err(ReadError::ModuleMissing(
                            "the \"Jool\" generic-netlink family is not registered: the Jool \
                             kernel module is not loaded (modprobe jool or jool_siit)"
                                .into(),
                        ));
                    }
                    NlPayload::Err(err) => {
                        return Err(ReadError::Netlink(format!(
                            "nlctrl refused the Jool lookup: {err}"
                        )));
                    }
                    _ => {}
                }
            }
        }
        Err(ReadError::Netlink(
            "nlctrl did not answer the Jool lookup".into(),
        ))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one Jool request and returns the generic-netlink payload of its reply.
    fn round_trip(&mut self, family: u16, payload: &[u8]) -> Result<Vec<u8>, Failure> {
        let seq = self.next_seq();
        let message = NlmsghdrBuilder::default()
            .nl_type(family)
            .nl_flags(NlmF::REQUEST)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(Buffer::from(payload)))
            .build()
            .map_err(|err| Failure::Other(format!("building the request: {err}")))?;
        self.socket
            .send(&message)
            .map_err(|err| Failure::Other(format!("sending to Jool: {err}")))?;
        for _ in 0..MAX_STRAY_MESSAGES {
            let (messages, _) = self
                .socket
                .recv::<u16, Buffer>()
                .map_err(|err| Failure::Other(format!("waiting for Jool's reply: {err}")))?;
            for message in messages {
                let message =
                    message.map_err(|err| Failure::Other(format!("decoding a reply: {err}")))?;
                if *message.nl_seq() != seq {
                    continue;
                }
                return match message.nl_payload() {
                    NlPayload::Payload(reply) => Ok(reply.as_ref().to_vec()),
                    NlPayload::Err(err) => Err(Failure::Errno(-*err.error())),
                    other => Err(Failure::Other(format!(
                        "unexpected netlink message instead of Jool's reply: {other:?}"
                    ))),
                };
            }
        }
        Err(Failure::Other("Jool's reply never came".into()))
    }
}

fn build_error(err: impl std::fmt::Display) -> ReadError {
    ReadError::Netlink(format!("building an nlctrl request: {err}"))
}

fn is_version_mismatch(error: &JoolError) -> bool {
    error.code == libc::EINVAL as u16 && error.message.contains("Version mismatch")
}

fn is_module_not_loaded(error: &JoolError) -> bool {
    error.code == libc::EINVAL as u16 && error.message.contains("has not been modprobed")
}

/// Classification shared by stats and listing; Err(message) for what is a plain netlink error.
fn classify_common(failure: Failure) -> Result<ReadError, String> {
    match failure {
        Failure::Errno(libc::EPERM) => Ok(ReadError::PermissionDenied(
            "the kernel refused the Jool request: CAP_NET_ADMIN required".into(),
        )),
        Failure::Errno(errno) => Err(format!(
            "the kernel refused the Jool request: {}",
            std::io::Error::from_raw_os_error(errno)
        )),
        Failure::Jool(error) => {
            let message = error.message.replace('\n', " ");
            if error.code == libc::EPERM as u16 {
                Ok(ReadError::PermissionDenied(message))
            } else if is_module_not_loaded(&error) {
                Ok(ReadError::ModuleMissing(message))
            } else if is_version_mismatch(&error) {
                Ok(ReadError::VersionRefused(message))
            } else {
                Err(format!("Jool error {}: {message}", error.code))
            }
        }
        Failure::Other(message) => Err(message),
    }
}

fn classify(failure: Failure, instance: &InstanceName, xlator: Xlator) -> ReadError {
    if let Failure::Jool(error) = &failure
        && error.code == libc::ESRCH as u16
    {
        return ReadError::InstanceMissing(format!(
            "no {xlator} instance named {:?} in this network namespace ({})",
            instance.as_str(),
            error.message
        ));
    }
    match classify_common(failure) {
        Ok(err) => err,
        Err(message) => ReadError::Netlink(message),
    }
}

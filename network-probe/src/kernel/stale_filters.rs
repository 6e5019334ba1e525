//! Which cls_bpf filters are the daemon's, and removing the ones a killed run left behind.
//!
//! A cls_bpf filter (`--datapath.tc-attach netlink`, kernels without TCX) outlives the process
//! that attached it, so a daemon that was killed leaves its filters running, still counting into
//! the pinned maps; the next start must remove them or the programs would run twice and count
//! every packet twice. A filter's name is no proof of ownership: it is whatever its creator
//! passed when attaching (aya passes the program's name), and another tool built from the same
//! examples may well run a `tc_egress` of its own — a firewall that would stop filtering if we
//! removed it. So a filter is removed only when the program it runs is recognised as ours:
//!
//! - its kernel id is one of [`Ownership::program_ids`]: the programs this run loaded and those
//!   the previous run pinned in `<pin-path>/programs` (see [`crate::kernel::pinning`]). Pinning
//!   costs nothing while the run lives (its filters hold the programs anyway) and survives a
//!   SIGKILL; reading the pins needs only access to the directory. It also covers upgrades: the
//!   previous build's programs are pinned under the same names whatever their instructions.
//! - or it bears our program's name and the tag of the program this run loaded for that hook
//!   ([`Ownership::tags`]): the tag is a hash of the instructions (map references masked out),
//!   so the same build loads the same tag run after run. This covers runs without a pin path
//!   (`--datapath.pin-path=""`), which leave no pins. Another build has another tag, and
//!   another tool's program another again.
//!
//! Anything else is left in place. A filter that bears our program's name without being
//! recognised is logged at warn with the command that removes it: it may be another tool's, or
//! the left-over of a run without pins of another build (an older release that did not pin its
//! programs, or another pin path), which only the operator can tell.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{
    Link as _, TcAttachType,
    tc::{SchedClassifierLink, TcHandle},
};
use log::{debug, warn};

use crate::{
    error::{Error, Result},
    kernel::rtnetlink::{self, CLSACT_EGRESS, CLSACT_INGRESS, ClsBpfFilter},
};

/// What makes a cls_bpf filter the daemon's (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ownership {
    /// Ids of the programs this run loaded and of those pinned by the previous run.
    pub program_ids: BTreeSet<u32>,
    /// Tag of the program this run loaded, by program name.
    pub tags: BTreeMap<String, u64>,
}

/// Why a filter counts as ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ours {
    /// It runs a program of ours (loaded now or pinned by the previous run).
    ProgramId,
    /// Our program's name, and the tag of our program: the same build's instructions.
    NameAndTag,
}

impl Ownership {
    /// Whether `filter`, found where `program` attaches, is ours (see the module documentation).
    pub(crate) fn owns(&self, program: &str, filter: &ClsBpfFilter) -> Option<Ours> {
        if self.program_ids.contains(&filter.program_id) {
            return Some(Ours::ProgramId);
        }
        let tag = self.tags.get(program)?;
        (filter.name.as_deref() == Some(program) && filter.program_tag == Some(*tag))
            .then_some(Ours::NameAndTag)
    }
}

/// The clsact parent of `attach_type`'s filters.
fn parent(attach_type: TcAttachType) -> u32 {
    match attach_type {
        TcAttachType::Ingress => CLSACT_INGRESS,
        _ => CLSACT_EGRESS,
    }
}

/// Removes from `interface` (index `ifindex`) at `attach_type` the cls_bpf filters an earlier
/// run of ours left there; returns how many. Filters that are not ours stay; one that bears
/// `program`'s name is logged. With `listing_may_fail` (TCX mode, where the interface may have
/// no clsact qdisc and only a netlink run leaves filters), failing to list them is not an error.
pub(crate) fn remove(
    ownership: &Ownership,
    program: &str,
    interface: &str,
    ifindex: u32,
    attach_type: TcAttachType,
    listing_may_fail: bool,
) -> Result<usize> {
    let direction = if attach_type == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    let filters = match rtnetlink::cls_bpf_filters(ifindex, parent(attach_type)) {
        Ok(filters) => filters,
        Err(err) if listing_may_fail => {
            debug!("no cls_bpf filters to clean on {interface}: {err}");
            return Ok(0);
        }
        Err(err) => {
            return Err(Error::Other(format!(
                "listing the cls_bpf filters at {direction} of {interface}: {err}"
            )));
        }
    };
    let mut removed = 0;
    for filter in filters {
        match ownership.owns(program, &filter) {
            Some(why) => {
                SchedClassifierLink::attached(
                    interface,
                    attach_type,
                    filter.priority,
                    TcHandle::from(filter.handle),
                    None,
                )
                .map_err(|err| err.into())
                .and_then(|link| link.detach())
                .map_err(|err| {
                    Error::datapath(
                        format!(
                            "removing the stale {program} filter (pref {}, program id {}) from \
                             {interface}",
                            filter.priority, filter.program_id
                        ),
                        &err,
                    )
                })?;
                warn!(
                    "removed the {program} filter (pref {}, program id {}, {}) an earlier run \
                     left at {direction} of {interface} (it did not exit cleanly)",
                    filter.priority,
                    filter.program_id,
                    match why {
                        Ours::ProgramId => "a program of ours",
                        Ours::NameAndTag => "this build's program",
                    }
                );
                removed += 1;
            }
            None if filter.name.as_deref() == Some(program) => warn!(
                "a cls_bpf filter named {program} at {direction} of {interface} runs program id \
                 {} which is not ours (another tool's, or left by a network-probe run without \
                 pinned programs): left in place; if it is a left-over, remove it with `tc \
                 filter del dev {interface} {direction} pref {} handle {:#x} bpf`",
                filter.program_id, filter.priority, filter.handle
            ),
            None => {}
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, program_id: u32, tag: u64) -> ClsBpfFilter {
        ClsBpfFilter {
            priority: 49152,
            handle: 1,
            name: Some(name.to_string()),
            program_id,
            program_tag: Some(tag),
        }
    }

    fn ownership() -> Ownership {
        Ownership {
            program_ids: [10, 11, 20].into(),
            tags: [("tc_egress".to_string(), 0xaaaa)].into(),
        }
    }

    #[test]
    fn a_program_of_ours_is_ours_whatever_its_name_or_tag() {
        // The previous run's pinned program: another build (tag) still ours.
        assert_eq!(
            ownership().owns("tc_egress", &filter("tc_egress", 20, 0xbbbb)),
            Some(Ours::ProgramId)
        );
        assert_eq!(
            ownership().owns("tc_egress", &filter("renamed", 11, 0)),
            Some(Ours::ProgramId)
        );
    }

    #[test]
    fn the_same_build_is_recognised_by_name_and_tag() {
        assert_eq!(
            ownership().owns("tc_egress", &filter("tc_egress", 99, 0xaaaa)),
            Some(Ours::NameAndTag)
        );
        // The tag alone is not enough: the name must be ours too, for that hook.
        assert_eq!(
            ownership().owns("tc_egress", &filter("fw", 99, 0xaaaa)),
            None
        );
        assert_eq!(
            ownership().owns("tc_ingress", &filter("tc_ingress", 99, 0xaaaa)),
            None
        );
    }

    #[test]
    fn a_name_alone_proves_nothing() {
        // Another tool's tc_egress (the aya book's firewall, say).
        assert_eq!(
            ownership().owns("tc_egress", &filter("tc_egress", 99, 0xcccc)),
            None
        );
        let untagged = ClsBpfFilter {
            program_tag: None,
            ..filter("tc_egress", 99, 0)
        };
        assert_eq!(ownership().owns("tc_egress", &untagged), None);
        assert_eq!(
            Ownership::default().owns("tc_egress", &filter("tc_egress", 10, 0xaaaa)),
            None
        );
    }
}

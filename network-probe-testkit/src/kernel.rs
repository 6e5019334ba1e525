//! What the kernel reports about a namespace: `nstat` counters and the TC programs attached to
//! an interface (TCX links and cls_bpf filters).

use std::process::Command;

use aya::programs::{SchedClassifier, TcAttachType};

use crate::{command::sh, netns::in_netns};

/// A `nstat` counter (e.g. TcpRetransSegs) of namespace `ns`, absolute value.
pub fn nstat(ns: &str, counter: &str) -> u64 {
    let text = sh("ip", &["netns", "exec", ns, "nstat", "-az", counter]);
    text.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(counter)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {counter} in nstat output {text:?}"))
}

/// TC programs attached at `attach_type` of `ifname` in `ns`, as the kernel reports them: TCX
/// links (where the kernel has TCX) and then cls_bpf filters on the clsact qdisc (named by their
/// program), so a program attached both ways shows up twice. Empty when the interface does not
/// exist.
pub fn attached_programs(ns: &str, ifname: &str, attach_type: TcAttachType) -> Vec<String> {
    let name = ifname.to_string();
    let mut programs: Vec<String> = in_netns(ns, move || {
        SchedClassifier::query_tcx(&name, attach_type)
            .map(|(_, programs)| {
                programs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    });
    programs.extend(cls_bpf_filters(ns, ifname, attach_type));
    programs
}

/// Program names of the cls_bpf filters at `attach_type` of `ifname`, from `tc -j filter show`.
fn cls_bpf_filters(ns: &str, ifname: &str, attach_type: TcAttachType) -> Vec<String> {
    let parent = match attach_type {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let output = Command::new("ip")
        .args([
            "netns", "exec", ns, "tc", "-j", "filter", "show", "dev", ifname, parent,
        ])
        .output()
        .expect("running tc");
    // No such device, or no clsact qdisc: nothing attached.
    if !output.status.success() || output.stdout.trim_ascii().is_empty() {
        return Vec::new();
    }
    let filters: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("tc -j prints a JSON list");
    filters
        .iter()
        .filter(|filter| filter["kind"] == "bpf")
        .filter_map(|filter| filter["options"]["prog"]["name"].as_str())
        .map(str::to_string)
        .collect()
}

//! Taking a map out of the loaded eBPF object, with an error naming the map: one helper for
//! every kernel module that owns maps (datapath, drops, signals, outcomes).

use aya::Ebpf;

use crate::error::{Error, Result};

/// Takes map `name` out of `ebpf` and opens it as `M` with `convert` (e.g. `HashMap::try_from`).
pub(crate) fn take_map<M, E: std::error::Error + 'static>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> std::result::Result<M, E>,
) -> Result<M> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Other(format!("eBPF object has no map {name}")))?;
    convert(map).map_err(|err| Error::datapath(format!("opening map {name}"), &err))
}

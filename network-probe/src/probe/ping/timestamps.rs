//! Kernel timestamps for the ping prober.
//!
//! - A sans-IO parser of the control messages that come with `recvmsg`: `SCM_TIMESTAMPING`
//!   (software stamp in slot 0, raw hardware stamp in slot 2) and the `sock_extended_err` that
//!   marks a transmit stamp read from the error queue (origin `SO_EE_ORIGIN_TIMESTAMPING`).
//! - The control message that tags a send with our own stamp key (`SCM_TS_OPT_ID`).
//! - Turning on hardware stamping on an interface: `ETHTOOL_GET_TS_INFO` to see whether the
//!   NIC can, `SIOCSHWTSTAMP` to enable it; failures give a reason to fall back to software.
//!   The configuration it replaced (`SIOCGHWTSTAMP`) is saved and put back when the prober
//!   stops. The whole path is tested end to end in the qemu guest on a simulated NIC that
//!   stamps in hardware (testing/hwtstamp-veth, tests/integration/hwtstamp.rs).

use std::{io, mem::size_of, os::fd::AsRawFd as _, time::Duration};

/// `SOF_TIMESTAMPING_*` bits (linux/net_tstamp.h).
pub const SOF_TX_HARDWARE: u32 = 1 << 0;
pub const SOF_TX_SOFTWARE: u32 = 1 << 1;
pub const SOF_RX_HARDWARE: u32 = 1 << 2;
pub const SOF_RX_SOFTWARE: u32 = 1 << 3;
pub const SOF_SOFTWARE: u32 = 1 << 4;
pub const SOF_RAW_HARDWARE: u32 = 1 << 6;
pub const SOF_OPT_ID: u32 = 1 << 7;
pub const SOF_OPT_TSONLY: u32 = 1 << 11;

/// Socket flags for software stamps: TX and RX, reported, keyed by ID, without the packet
/// looped back on the error queue (0x89a).
pub const SOFTWARE_FLAGS: u32 =
    SOF_TX_SOFTWARE | SOF_RX_SOFTWARE | SOF_SOFTWARE | SOF_OPT_ID | SOF_OPT_TSONLY;
/// Software flags plus hardware generation and reporting.
pub const HARDWARE_FLAGS: u32 =
    SOFTWARE_FLAGS | SOF_TX_HARDWARE | SOF_RX_HARDWARE | SOF_RAW_HARDWARE;

/// `SCM_TIMESTAMPING` (= `SO_TIMESTAMPING_OLD`; 64-bit time on 64-bit targets).
pub const SCM_TIMESTAMPING: i32 = libc::SO_TIMESTAMPING;
/// `SCM_TS_OPT_ID` (Linux 6.13+): a u32 in a `sendmsg` control message that becomes the send's
/// stamp key instead of the socket's counter.
pub const SCM_TS_OPT_ID: i32 = 81;
/// `ee_info` of a transmit stamp taken when the packet left the stack.
pub const SCM_TSTAMP_SND: u32 = 0;

/// A stamp as nanoseconds of the clock it was taken with (CLOCK_REALTIME for software stamps,
/// the NIC's clock for hardware stamps).
pub type Stamp = Duration;

/// `struct sock_extended_err`, the part we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedError {
    pub errno: u32,
    pub origin: u8,
    pub kind: u8,
    pub code: u8,
    pub info: u32,
    pub data: u32,
}

impl ExtendedError {
    /// The stamp key of a transmit-time stamp (SND), or `None` for any other error-queue entry.
    pub fn tx_stamp_key(&self) -> Option<u32> {
        (self.errno == libc::ENOMSG as u32
            && self.origin == libc::SO_EE_ORIGIN_TIMESTAMPING
            && self.info == SCM_TSTAMP_SND)
            .then_some(self.data)
    }
}

/// What the control messages of one received message say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlMessages {
    /// Software stamp (slot 0 of `scm_timestamping`), if non-zero.
    pub software: Option<Stamp>,
    /// Raw hardware stamp (slot 2), if non-zero.
    pub hardware: Option<Stamp>,
    /// The extended error (error-queue messages only).
    pub error: Option<ExtendedError>,
}

/// Which stamps two messages share: hardware if both have one, else software.
pub fn round_trip(tx: &ControlMessages, rx: &ControlMessages) -> Option<(Duration, bool)> {
    if let (Some(tx), Some(rx)) = (tx.hardware, rx.hardware) {
        return rx.checked_sub(tx).map(|rtt| (rtt, true));
    }
    match (tx.software, rx.software) {
        (Some(tx), Some(rx)) => rx.checked_sub(tx).map(|rtt| (rtt, false)),
        _ => None,
    }
}

/// Parses a control-message buffer as filled by `recvmsg` (`msg_control`, `msg_controllen`
/// bytes). Unknown messages are skipped; truncated ones end the walk.
pub fn parse_control(buffer: &[u8]) -> ControlMessages {
    let header_len = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let mut parsed = ControlMessages::default();
    let mut at = 0;
    while buffer.len().saturating_sub(at) >= header_len {
        let header = &buffer[at..at + header_len];
        let length = read_usize(&header[..size_of::<usize>()]);
        let level = i32::from_ne_bytes(header[align..align + 4].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(header[align + 4..align + 8].try_into().unwrap_or_default());
        if length < header_len || length > buffer.len() - at {
            break;
        }
        let data = &buffer[at + header_len..at + length];
        match (level, kind) {
            (libc::SOL_SOCKET, SCM_TIMESTAMPING) => {
                let stamps = parse_timespecs(data);
                parsed.software = stamps[0];
                parsed.hardware = stamps[2];
            }
            (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR) => {
                parsed.error = parse_extended_error(data);
            }
            _ => {}
        }
        at += length.div_ceil(align) * align;
    }
    parsed
}

fn read_usize(bytes: &[u8]) -> usize {
    let mut raw = [0u8; size_of::<usize>()];
    raw.copy_from_slice(bytes);
    usize::from_ne_bytes(raw)
}

/// The three `struct timespec` of `scm_timestamping`; zero stamps are absent.
fn parse_timespecs(data: &[u8]) -> [Option<Stamp>; 3] {
    let width = size_of::<libc::time_t>();
    let one = 2 * width;
    let mut stamps = [None; 3];
    for (slot, stamp) in stamps.iter_mut().enumerate() {
        let Some(raw) = data.get(slot * one..(slot + 1) * one) else {
            break;
        };
        let field = |bytes: &[u8]| -> i64 {
            match width {
                8 => i64::from_ne_bytes(bytes.try_into().unwrap_or_default()),
                _ => i64::from(i32::from_ne_bytes(
                    bytes[..4].try_into().unwrap_or_default(),
                )),
            }
        };
        let (seconds, nanos) = (field(&raw[..width]), field(&raw[width..]));
        if (seconds, nanos) != (0, 0) && seconds >= 0 && (0..1_000_000_000).contains(&nanos) {
            *stamp = Some(Duration::new(seconds as u64, nanos as u32));
        }
    }
    stamps
}

fn parse_extended_error(data: &[u8]) -> Option<ExtendedError> {
    let data = data.get(..16)?;
    let word = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap_or_default());
    Some(ExtendedError {
        errno: word(0),
        origin: data[4],
        kind: data[5],
        code: data[6],
        info: word(8),
        data: word(12),
    })
}

/// Space for one control message with `payload` bytes (`CMSG_SPACE`).
pub const fn cmsg_space(payload: usize) -> usize {
    let align = size_of::<usize>();
    size_of::<libc::cmsghdr>() + payload.div_ceil(align) * align
}

/// Writes one control message (`level`, `kind`, `payload`) into `buffer`, which must hold
/// `cmsg_space(payload.len())` bytes; returns the bytes used.
pub fn write_cmsg(buffer: &mut [u8], level: i32, kind: i32, payload: &[u8]) -> usize {
    let header_len = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let used = cmsg_space(payload.len());
    buffer[..used].fill(0);
    buffer[..align].copy_from_slice(&(header_len + payload.len()).to_ne_bytes());
    buffer[align..align + 4].copy_from_slice(&level.to_ne_bytes());
    buffer[align + 4..align + 8].copy_from_slice(&kind.to_ne_bytes());
    buffer[header_len..header_len + payload.len()].copy_from_slice(payload);
    used
}

/// `struct ethtool_ts_info` (linux/ethtool.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EthtoolTsInfo {
    pub cmd: u32,
    pub so_timestamping: u32,
    pub phc_index: i32,
    pub tx_types: u32,
    pub tx_reserved: [u32; 3],
    pub rx_filters: u32,
    pub rx_reserved: [u32; 3],
}

const ETHTOOL_GET_TS_INFO: u32 = 0x41;
const HWTSTAMP_TX_ON: i32 = 1;
const HWTSTAMP_FILTER_ALL: i32 = 1;

/// Whether `info` allows what the prober needs: hardware TX and RX stamps in the raw clock,
/// `HWTSTAMP_TX_ON` and `HWTSTAMP_FILTER_ALL`. The error names what is missing.
pub fn check_hardware_capabilities(info: &EthtoolTsInfo) -> Result<(), String> {
    let mut missing = Vec::new();
    for (bit, name) in [
        (SOF_TX_HARDWARE, "hardware-transmit"),
        (SOF_RX_HARDWARE, "hardware-receive"),
        (SOF_RAW_HARDWARE, "hardware-raw-clock"),
    ] {
        if info.so_timestamping & bit == 0 {
            missing.push(name);
        }
    }
    if info.tx_types & (1 << HWTSTAMP_TX_ON) == 0 {
        missing.push("transmit mode on");
    }
    if info.rx_filters & (1 << HWTSTAMP_FILTER_ALL) == 0 {
        missing.push("receive filter all");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("no {}", missing.join(", no ")))
    }
}

/// `struct ifreq` with a pointer payload, as SIOCETHTOOL and SIOCSHWTSTAMP take it.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ifreq_ioctl(interface: &str, request: libc::c_ulong, data: *mut libc::c_void) -> io::Result<()> {
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ || interface.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {interface:?}"),
        ));
    }
    let socket =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut request_block = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    for (slot, byte) in request_block.name.iter_mut().zip(interface.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: a valid socket and an ifreq whose data pointer points at the structure `request`
    // expects, alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, &mut request_block) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads the interface's timestamping capabilities (`ethtool -T`).
pub fn ts_info(interface: &str) -> io::Result<EthtoolTsInfo> {
    let mut info = EthtoolTsInfo {
        cmd: ETHTOOL_GET_TS_INFO,
        ..Default::default()
    };
    ifreq_ioctl(interface, libc::SIOCETHTOOL, (&raw mut info).cast())?;
    Ok(info)
}

/// A driver's hardware stamping configuration (`struct hwtstamp_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardwareConfig {
    pub flags: i32,
    pub tx_type: i32,
    pub rx_filter: i32,
}

impl HardwareConfig {
    /// What the prober asks for: TX on, RX filter all.
    pub const STAMP_ALL: HardwareConfig = HardwareConfig {
        flags: 0,
        tx_type: HWTSTAMP_TX_ON,
        rx_filter: HWTSTAMP_FILTER_ALL,
    };
}

/// Sets the driver's configuration (`SIOCSHWTSTAMP`); the driver may answer with what it
/// actually applied (e.g. a wider filter), which is returned.
pub fn set_hardware_config(interface: &str, config: HardwareConfig) -> io::Result<HardwareConfig> {
    let mut raw = libc::hwtstamp_config {
        flags: config.flags,
        tx_type: config.tx_type,
        rx_filter: config.rx_filter,
    };
    ifreq_ioctl(interface, libc::SIOCSHWTSTAMP, (&raw mut raw).cast())?;
    Ok(HardwareConfig {
        flags: raw.flags,
        tx_type: raw.tx_type,
        rx_filter: raw.rx_filter,
    })
}

/// Reads the driver's current configuration (`SIOCGHWTSTAMP`, `hwstamp_ctl` without
/// arguments); drivers without it answer EOPNOTSUPP.
pub fn hardware_config(interface: &str) -> io::Result<HardwareConfig> {
    let mut raw = libc::hwtstamp_config {
        flags: 0,
        tx_type: 0,
        rx_filter: 0,
    };
    ifreq_ioctl(interface, libc::SIOCGHWTSTAMP, (&raw mut raw).cast())?;
    Ok(HardwareConfig {
        flags: raw.flags,
        tx_type: raw.tx_type,
        rx_filter: raw.rx_filter,
    })
}

/// Asks the driver to stamp every packet in hardware (`SIOCSHWTSTAMP`, TX on, RX filter all).
pub fn set_hardware_stamping(interface: &str) -> io::Result<()> {
    set_hardware_config(interface, HardwareConfig::STAMP_ALL).map(drop)
}

/// The configurations hardware stamping replaced, per interface, to put back when the prober
/// stops (as a well-behaved PTP client does: another program, or the operator, may have set
/// the NIC up on purpose).
#[derive(Debug, Default)]
pub struct SavedConfigs(std::sync::Mutex<std::collections::BTreeMap<String, HardwareConfig>>);

impl SavedConfigs {
    /// Puts every saved configuration back and forgets it; one message per interface (what was
    /// restored, or why not), for the log.
    pub fn restore(&self) -> Vec<Result<String, String>> {
        let saved = std::mem::take(&mut *crate::support::sync::lock(&self.0));
        saved
            .into_iter()
            .map(|(interface, config)| {
                set_hardware_config(&interface, config)
                    .map(|_| {
                        format!(
                            "{interface}: hardware timestamping restored (tx type {}, rx filter {})",
                            config.tx_type, config.rx_filter
                        )
                    })
                    .map_err(|err| {
                        format!("{interface}: restoring hardware timestamping: SIOCSHWTSTAMP: {err}")
                    })
            })
            .collect()
    }
}

/// Enables hardware stamping on `interface` if it can do it, first saving the configuration
/// it replaces in `saved` (the first time only: later calls would read our own); the error is
/// the reason to fall back to software stamps, for the one warning the prober logs. A driver
/// that cannot report its configuration (no SIOCGHWTSTAMP) gets nothing put back.
pub fn enable_hardware(interface: &str, saved: &SavedConfigs) -> Result<(), String> {
    let info = ts_info(interface)
        .map_err(|err| format!("{interface}: reading timestamping capabilities: {err}"))?;
    check_hardware_capabilities(&info).map_err(|reason| format!("{interface}: {reason}"))?;
    let mut saved = crate::support::sync::lock(&saved.0);
    let original = match saved.get(interface) {
        Some(_) => None,
        None => hardware_config(interface).ok(),
    };
    set_hardware_stamping(interface).map_err(|err| format!("{interface}: SIOCSHWTSTAMP: {err}"))?;
    if let Some(original) = original.filter(|original| *original != HardwareConfig::STAMP_ALL) {
        saved.insert(interface.to_string(), original);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamping(stamps: [(i64, i64); 3]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (seconds, nanos) in stamps {
            payload.extend_from_slice(&seconds.to_ne_bytes());
            payload.extend_from_slice(&nanos.to_ne_bytes());
        }
        let mut buffer = vec![0; cmsg_space(payload.len())];
        write_cmsg(&mut buffer, libc::SOL_SOCKET, SCM_TIMESTAMPING, &payload);
        buffer
    }

    fn extended_error(origin: u8, info: u32, data: u32) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(libc::ENOMSG as u32).to_ne_bytes());
        payload.extend_from_slice(&[origin, 0, 0, 0]);
        payload.extend_from_slice(&info.to_ne_bytes());
        payload.extend_from_slice(&data.to_ne_bytes());
        payload.extend_from_slice(&[0; 16]); // offender sockaddr_in
        let mut buffer = vec![0; cmsg_space(payload.len())];
        write_cmsg(&mut buffer, libc::SOL_IP, libc::IP_RECVERR, &payload);
        buffer
    }

    // Synthetic buffers: no NIC on this machine (lo, virtio_net, veth) produces hardware stamps
    // (SIOCSHWTSTAMP gives EOPNOTSUPP everywhere), so the hardware slot can only be tested so.
    #[test]
    fn software_and_hardware_stamps() {
        let rx = parse_control(&timestamping([(1_700_000_000, 5), (0, 0), (0, 0)]));
        assert_eq!(rx.software, Some(Duration::new(1_700_000_000, 5)));
        assert_eq!(rx.hardware, None);
        assert_eq!(rx.error, None);

        let hw = parse_control(&timestamping([(0, 0), (0, 0), (42, 999_999_999)]));
        assert_eq!(hw.software, None);
        assert_eq!(hw.hardware, Some(Duration::new(42, 999_999_999)));
    }

    #[test]
    fn transmit_stamp_from_the_error_queue() {
        let mut buffer = timestamping([(10, 500), (0, 0), (0, 0)]);
        buffer.extend(extended_error(
            libc::SO_EE_ORIGIN_TIMESTAMPING,
            SCM_TSTAMP_SND,
            77,
        ));
        let tx = parse_control(&buffer);
        assert_eq!(tx.software, Some(Duration::new(10, 500)));
        assert_eq!(tx.error.unwrap().tx_stamp_key(), Some(77));
        // Other error-queue entries (ICMP errors, other stamp kinds) carry no key.
        let other = parse_control(&extended_error(libc::SO_EE_ORIGIN_ICMP, 0, 1));
        assert_eq!(other.error.unwrap().tx_stamp_key(), None);
        let ack = parse_control(&extended_error(libc::SO_EE_ORIGIN_TIMESTAMPING, 2, 1));
        assert_eq!(ack.error.unwrap().tx_stamp_key(), None);

        let rx = parse_control(&timestamping([(10, 20_500), (0, 0), (0, 0)]));
        assert_eq!(
            round_trip(&tx, &rx),
            Some((Duration::from_micros(20), false))
        );
        // Hardware wins when both ends have it; mixing clocks is never done.
        let tx_hw = parse_control(&timestamping([(10, 500), (0, 0), (3, 0)]));
        let rx_hw = parse_control(&timestamping([(10, 20_500), (0, 0), (3, 9_000)]));
        assert_eq!(
            round_trip(&tx_hw, &rx_hw),
            Some((Duration::from_micros(9), true))
        );
        assert_eq!(
            round_trip(&tx_hw, &rx),
            Some((Duration::from_micros(20), false))
        );
        assert_eq!(round_trip(&ControlMessages::default(), &rx), None);
        // An RX stamp before the TX stamp is no sample.
        assert_eq!(round_trip(&rx, &tx), None);
    }

    #[test]
    fn truncated_and_garbage_buffers() {
        let full = timestamping([(1, 1), (0, 0), (0, 0)]);
        for cut in 0..full.len() {
            let _ = parse_control(&full[..cut]);
        }
        assert_eq!(parse_control(&full[..full.len() - 1]).software, None);
        let mut bad = full.clone();
        bad[0] = 0xff; // length beyond the buffer
        assert_eq!(parse_control(&bad), ControlMessages::default());
        // Negative or out-of-range nanoseconds are no stamp.
        assert_eq!(
            parse_control(&timestamping([(1, -1), (0, 0), (0, 0)])).software,
            None
        );
    }

    #[test]
    fn capability_check_names_what_is_missing() {
        let mut info = EthtoolTsInfo {
            so_timestamping: SOF_TX_SOFTWARE | SOF_RX_SOFTWARE | SOF_SOFTWARE,
            ..Default::default()
        };
        let reason = check_hardware_capabilities(&info).unwrap_err();
        assert!(
            reason.contains("hardware-transmit") && reason.contains("receive filter all"),
            "{reason}"
        );
        info.so_timestamping |= SOF_TX_HARDWARE | SOF_RX_HARDWARE | SOF_RAW_HARDWARE;
        info.tx_types = 1 << HWTSTAMP_TX_ON;
        info.rx_filters = 1 << HWTSTAMP_FILTER_ALL;
        assert_eq!(check_hardware_capabilities(&info), Ok(()));
    }

    #[test]
    fn loopback_has_no_hardware_stamping() {
        // Real kernel: lo reports software stamping only, so enabling hardware falls back.
        let info = ts_info("lo").expect("ETHTOOL_GET_TS_INFO on lo");
        assert_ne!(info.so_timestamping & SOF_RX_SOFTWARE, 0);
        let saved = SavedConfigs::default();
        assert!(enable_hardware("lo", &saved).is_err());
        assert!(saved.restore().is_empty());
        assert!(ts_info("no-such-if0").is_err());
    }
}

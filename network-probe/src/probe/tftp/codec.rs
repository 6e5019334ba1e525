//! TFTP without I/O: the packet format (RFC 1350, options RFC 2347/2348/2349/7440), option
//! negotiation, and the read-transfer state machine of the client as pure functions.
//!
//! Everything here works on byte slices the caller received and returns what to send next; it
//! never touches a socket or a clock. The async driver in the parent module owns the socket,
//! the timers and the server's transfer ID (source address and port).
//!
//! The state machine ([`Transfer`]) follows these rules:
//! - the first answer to the RRQ is an OACK (options accepted, answered with ACK 0), DATA 1
//!   (every option refused) or an ERROR;
//! - an OACK may lower a requested value; a higher value, an option we did not request, a
//!   repeated option or a bad number is answered with ERROR 8 and ends the transfer;
//! - an in-order DATA block is delivered once; the last block of a window (RFC 7440,
//!   `windowsize` blocks, 1 without the option) and the final short block are ACKed;
//! - a duplicate of the block we ACKed last is ACKed again (the server missed our ACK); older
//!   blocks are ignored, so the client never feeds the Sorcerer's Apprentice;
//! - a block beyond a gap is answered once with an ACK of the last in-order block;
//! - block numbers wrap 65535 -> 0; in lock-step transfers a wrap to 1 is accepted as well;
//! - on a timeout the last packet sent (RRQ or ACK) is sent again, with exponential backoff,
//!   at most [`MAX_RETRANSMISSIONS`] times in a row.

use std::{fmt, time::Duration};

pub const OPCODE_RRQ: u16 = 1;
pub const OPCODE_WRQ: u16 = 2;
pub const OPCODE_DATA: u16 = 3;
pub const OPCODE_ACK: u16 = 4;
pub const OPCODE_ERROR: u16 = 5;
pub const OPCODE_OACK: u16 = 6;

/// ERROR codes (RFC 1350 section 5, RFC 2347 for 8).
pub mod error_code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const DISK_FULL: u16 = 3;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TRANSFER_ID: u16 = 5;
    pub const OPTION_REFUSED: u16 = 8;
}

/// Block size without the blksize option.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest and largest blksize RFC 2348 allows.
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;
/// timeout values RFC 2349 allows (seconds).
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u8> = 1..=255;
/// windowsize values RFC 7440 allows.
pub const WINDOWSIZE_RANGE: std::ops::RangeInclusive<u16> = 1..=65535;
/// Requests longer than this are refused by many servers (RFC 2347 section "Packet formats").
pub const MAX_REQUEST_LEN: usize = 512;
/// Retransmissions of one packet in a row before the transfer is given up.
pub const MAX_RETRANSMISSIONS: u32 = 5;
/// Retransmission interval without the timeout option.
pub const DEFAULT_RETRANSMIT_INTERVAL: Duration = Duration::from_secs(1);
/// The backoff never waits longer than this between two retransmissions.
pub const MAX_RETRANSMIT_INTERVAL: Duration = Duration::from_secs(16);
/// Longest server error message kept (the rest is cut).
const MAX_MESSAGE_CHARS: usize = 200;

/// A packet that does not follow the format; the text says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One decoded TFTP packet, borrowing from the received bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// RRQ or WRQ (a client never expects these, but they are decoded for completeness).
    Request {
        write: bool,
        filename: &'a str,
        mode: &'a str,
        options: Vec<(&'a str, &'a str)>,
    },
    Data {
        block: u16,
        payload: &'a [u8],
    },
    Ack {
        block: u16,
    },
    Error {
        code: u16,
        /// The server's message, lossily decoded and cut to 200 characters.
        message: String,
    },
    Oack {
        options: Vec<(&'a str, &'a str)>,
    },
}

/// Decodes one datagram.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, Malformed> {
    let Some((opcode, body)) = split_u16(bytes) else {
        return Err(Malformed(format!(
            "{}-byte packet has no opcode",
            bytes.len()
        )));
    };
    match opcode {
        OPCODE_RRQ | OPCODE_WRQ => {
            let mut fields = strings(body)?;
            if fields.len() < 2 || fields.len() % 2 != 0 {
                return Err(Malformed("request without filename and mode".into()));
            }
            let options = pairs(fields.split_off(2));
            Ok(Packet::Request {
                write: opcode == OPCODE_WRQ,
                filename: fields[0],
                mode: fields[1],
                options,
            })
        }
        OPCODE_DATA => {
            let (block, payload) =
                split_u16(body).ok_or_else(|| Malformed("DATA without block number".into()))?;
            Ok(Packet::Data { block, payload })
        }
        OPCODE_ACK => match split_u16(body) {
            Some((block, [])) => Ok(Packet::Ack { block }),
            _ => Err(Malformed(format!("ACK of {} bytes, not 4", bytes.len()))),
        },
        OPCODE_ERROR => {
            let (code, text) =
                split_u16(body).ok_or_else(|| Malformed("ERROR without code".into()))?;
            // Lenient: some servers omit the final NUL.
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            let message: String = String::from_utf8_lossy(text)
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_MESSAGE_CHARS)
                .collect();
            Ok(Packet::Error { code, message })
        }
        OPCODE_OACK => {
            let fields = strings(body)?;
            if fields.len() % 2 != 0 {
                return Err(Malformed("OACK option without value".into()));
            }
            Ok(Packet::Oack {
                options: pairs(fields),
            })
        }
        other => Err(Malformed(format!("unknown opcode {other}"))),
    }
}

fn split_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    match bytes {
        [hi, lo, rest @ ..] => Some((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => None,
    }
}

/// NUL-terminated ASCII strings filling `body` exactly.
fn strings(body: &[u8]) -> Result<Vec<&str>, Malformed> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let Some(without_last) = body.strip_suffix(&[0]) else {
        return Err(Malformed("string not terminated by NUL".into()));
    };
    without_last
        .split(|&b| b == 0)
        .map(|field| {
            std::str::from_utf8(field)
                .ok()
                .filter(|text| text.is_ascii())
                .ok_or_else(|| Malformed("string is not ASCII".into()))
        })
        .collect()
}

fn pairs(fields: Vec<&str>) -> Vec<(&str, &str)> {
    fields
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect()
}

/// The options this client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TftpOption {
    Blksize,
    Tsize,
    Timeout,
    Windowsize,
}

impl TftpOption {
    pub const ALL: [TftpOption; 4] = [
        TftpOption::Blksize,
        TftpOption::Tsize,
        TftpOption::Timeout,
        TftpOption::Windowsize,
    ];

    /// The name on the wire (and in the `option` label).
    pub fn name(self) -> &'static str {
        match self {
            TftpOption::Blksize => "blksize",
            TftpOption::Tsize => "tsize",
            TftpOption::Timeout => "timeout",
            TftpOption::Windowsize => "windowsize",
        }
    }

    fn from_name(name: &str) -> Option<TftpOption> {
        TftpOption::ALL
            .into_iter()
            .find(|option| option.name().eq_ignore_ascii_case(name))
    }
}

/// The options to put in the RRQ; `None`/`false` leaves an option out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionRequest {
    pub blksize: Option<u16>,
    pub timeout: Option<u8>,
    pub windowsize: Option<u16>,
    /// Ask the server for the file size (sent as `tsize 0`).
    pub tsize: bool,
}

impl OptionRequest {
    /// The requested options with the value sent for each, in RRQ order.
    pub fn list(&self) -> Vec<(TftpOption, u64)> {
        let mut list = Vec::new();
        if let Some(value) = self.blksize {
            list.push((TftpOption::Blksize, u64::from(value)));
        }
        if self.tsize {
            list.push((TftpOption::Tsize, 0));
        }
        if let Some(value) = self.timeout {
            list.push((TftpOption::Timeout, u64::from(value)));
        }
        if let Some(value) = self.windowsize {
            list.push((TftpOption::Windowsize, u64::from(value)));
        }
        list
    }

    fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

/// What the server agreed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Effective block size (512 unless the server accepted blksize).
    pub blksize: u16,
    /// Effective window (1 unless the server accepted windowsize).
    pub windowsize: u16,
    /// Timeout the server accepted, in seconds.
    pub timeout: Option<u8>,
    /// File size the server announced.
    pub tsize: Option<u64>,
    /// Every option the server accepted, with its value.
    pub accepted: Vec<(TftpOption, u64)>,
    /// Requested options the server left out of its answer.
    pub refused: Vec<TftpOption>,
}

impl Negotiated {
    /// Plain RFC 1350: every requested option refused.
    fn defaults(requested: &OptionRequest) -> Negotiated {
        Negotiated {
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            timeout: None,
            tsize: None,
            accepted: Vec::new(),
            refused: requested.list().into_iter().map(|(o, _)| o).collect(),
        }
    }
}

/// Checks an OACK against the request. The error text goes into our ERROR 8.
pub fn negotiate(requested: &OptionRequest, oack: &[(&str, &str)]) -> Result<Negotiated, String> {
    let mut negotiated = Negotiated::defaults(requested);
    negotiated.refused.clear();
    let asked = requested.list();
    for (name, value) in oack {
        let Some(option) = TftpOption::from_name(name) else {
            return Err(format!("option {name:?} was not requested"));
        };
        let Some(&(_, asked_value)) = asked.iter().find(|(o, _)| *o == option) else {
            return Err(format!("option {name:?} was not requested"));
        };
        if negotiated.accepted.iter().any(|(o, _)| *o == option) {
            return Err(format!("option {name:?} given twice"));
        }
        let value: u64 = value
            .parse()
            .map_err(|_| format!("option {name:?} has value {value:?}, not a number"))?;
        let out_of_range = |low: u64| {
            format!(
                "option {name:?}: {value} outside {low}..={asked_value} (requested {asked_value})"
            )
        };
        match option {
            TftpOption::Blksize => {
                if value < u64::from(*BLKSIZE_RANGE.start()) || value > asked_value {
                    return Err(out_of_range(u64::from(*BLKSIZE_RANGE.start())));
                }
                negotiated.blksize = value as u16;
            }
            TftpOption::Windowsize => {
                if value < 1 || value > asked_value {
                    return Err(out_of_range(1));
                }
                negotiated.windowsize = value as u16;
            }
            TftpOption::Timeout => {
                if value < 1 || value > asked_value {
                    return Err(out_of_range(1));
                }
                negotiated.timeout = Some(value as u8);
            }
            TftpOption::Tsize => negotiated.tsize = Some(value),
        }
        negotiated.accepted.push((option, value));
    }
    negotiated.refused = asked
        .iter()
        .map(|(o, _)| *o)
        .filter(|o| !negotiated.accepted.iter().any(|(a, _)| a == o))
        .collect();
    Ok(negotiated)
}

/// An octet-mode RRQ for `filename` with `options`; an error if it would not fit in
/// [`MAX_REQUEST_LEN`] bytes or the filename holds a NUL.
pub fn encode_rrq(filename: &str, options: &OptionRequest) -> Result<Vec<u8>, String> {
    if filename.is_empty() || filename.contains('\0') {
        return Err(format!("file name {filename:?} is empty or holds a NUL"));
    }
    let mut packet = OPCODE_RRQ.to_be_bytes().to_vec();
    for field in [filename, "octet"] {
        packet.extend_from_slice(field.as_bytes());
        packet.push(0);
    }
    for (option, value) in options.list() {
        packet.extend_from_slice(option.name().as_bytes());
        packet.push(0);
        packet.extend_from_slice(value.to_string().as_bytes());
        packet.push(0);
    }
    if packet.len() > MAX_REQUEST_LEN {
        return Err(format!(
            "the read request for {filename:?} would be {} bytes, more than {MAX_REQUEST_LEN}",
            packet.len()
        ));
    }
    Ok(packet)
}

pub fn encode_ack(block: u16) -> Vec<u8> {
    let mut packet = OPCODE_ACK.to_be_bytes().to_vec();
    packet.extend_from_slice(&block.to_be_bytes());
    packet
}

pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut packet = OPCODE_ERROR.to_be_bytes().to_vec();
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend(message.bytes().filter(|&b| b != 0));
    packet.push(0);
    packet
}

/// Why a probe failed, as exported in `tftp_probe_failure{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Timeout,
    FileNotFound,
    AccessViolation,
    OptionRefused,
    SizeMismatch,
    HashMismatch,
    TooLarge,
    ServerError,
    ProtocolError,
    ResolveFailed,
}

impl FailureReason {
    pub const ALL: [FailureReason; 10] = [
        FailureReason::Timeout,
        FailureReason::FileNotFound,
        FailureReason::AccessViolation,
        FailureReason::OptionRefused,
        FailureReason::SizeMismatch,
        FailureReason::HashMismatch,
        FailureReason::TooLarge,
        FailureReason::ServerError,
        FailureReason::ProtocolError,
        FailureReason::ResolveFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::FileNotFound => "file_not_found",
            FailureReason::AccessViolation => "access_violation",
            FailureReason::OptionRefused => "option_refused",
            FailureReason::SizeMismatch => "size_mismatch",
            FailureReason::HashMismatch => "hash_mismatch",
            FailureReason::TooLarge => "too_large",
            FailureReason::ServerError => "server_error",
            FailureReason::ProtocolError => "protocol_error",
            FailureReason::ResolveFailed => "resolve_failed",
        }
    }

    /// The reason for an ERROR packet the server sent.
    pub fn from_error_code(code: u16) -> FailureReason {
        match code {
            error_code::FILE_NOT_FOUND => FailureReason::FileNotFound,
            error_code::ACCESS_VIOLATION => FailureReason::AccessViolation,
            error_code::OPTION_REFUSED => FailureReason::OptionRefused,
            _ => FailureReason::ServerError,
        }
    }
}

/// A failed transfer: the reason and a line for the probe log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// How a transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The final (short) block arrived and was ACKed.
    Complete,
    Failed(Failure),
}

/// What to do after an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step<'a> {
    /// Packet to send to the server's transfer ID.
    pub send: Option<Vec<u8>>,
    /// New file content, in order, never delivered twice.
    pub payload: Option<&'a [u8]>,
    /// Set when the transfer is over.
    pub outcome: Option<Outcome>,
}

impl<'a> Step<'a> {
    fn send(packet: Vec<u8>) -> Step<'a> {
        Step {
            send: Some(packet),
            ..Step::default()
        }
    }

    fn fail(send: Option<Vec<u8>>, reason: FailureReason, detail: String) -> Step<'a> {
        Step {
            send,
            payload: None,
            outcome: Some(Outcome::Failed(Failure::new(reason, detail))),
        }
    }

    /// Answers a packet that breaks the protocol with ERROR 4 and ends the transfer.
    fn illegal(detail: String) -> Step<'a> {
        let packet = encode_error(error_code::ILLEGAL_OPERATION, &detail);
        Step::fail(Some(packet), FailureReason::ProtocolError, detail)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// RRQ sent, nothing heard yet.
    Requested,
    Receiving,
    Finished,
}

/// The client side of one read transfer.
#[derive(Debug)]
pub struct Transfer {
    requested: OptionRequest,
    negotiated: Negotiated,
    phase: Phase,
    max_bytes: u64,
    /// Block number the next in-order DATA carries.
    expected: u16,
    /// Block number of our last ACK (0 after an OACK).
    last_acked: u16,
    /// In-order blocks received since our last ACK.
    unacked: u16,
    /// Set after an ACK for a gap, until the next in-order block (one ACK per gap).
    gap_answered: bool,
    /// The last packet sent (RRQ or ACK), sent again on timeout.
    last_sent: Vec<u8>,
    /// Retransmissions since the last progress.
    retries_in_row: u32,
    retransmissions: u64,
    duplicates: u64,
    blocks: u64,
    bytes: u64,
}

impl Transfer {
    /// Starts a read of `filename`: the transfer and the RRQ to send. The RRQ error names the
    /// problem (bad filename, request too long).
    pub fn new(
        filename: &str,
        requested: OptionRequest,
        max_bytes: u64,
    ) -> Result<(Transfer, Vec<u8>), String> {
        let rrq = encode_rrq(filename, &requested)?;
        let transfer = Transfer {
            requested,
            negotiated: Negotiated::defaults(&requested),
            phase: Phase::Requested,
            max_bytes,
            expected: 1,
            last_acked: 0,
            unacked: 0,
            gap_answered: false,
            last_sent: rrq.clone(),
            retries_in_row: 0,
            retransmissions: 0,
            duplicates: 0,
            blocks: 0,
            bytes: 0,
        };
        Ok((transfer, rrq))
    }

    /// What the server agreed to (defaults until the first answer).
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Content bytes delivered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// DATA blocks delivered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Packets sent again because of a timeout.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// DATA packets received that carried a block already delivered.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// How long to wait for the next packet before [`Transfer::on_timeout`]: the negotiated
    /// timeout (else 1 s), doubled for every retransmission in a row, capped at 16 s.
    pub fn retransmit_interval(&self) -> Duration {
        let base = self
            .negotiated
            .timeout
            .map_or(DEFAULT_RETRANSMIT_INTERVAL, |s| {
                Duration::from_secs(s.into())
            });
        base.saturating_mul(1 << self.retries_in_row.min(16))
            .min(MAX_RETRANSMIT_INTERVAL)
    }

    /// Nothing arrived within [`Transfer::retransmit_interval`].
    pub fn on_timeout(&mut self) -> Step<'static> {
        if self.phase == Phase::Finished {
            return Step::default();
        }
        if self.retries_in_row >= MAX_RETRANSMISSIONS {
            let waiting_for = if self.phase == Phase::Requested {
                "an answer to the read request".to_string()
            } else {
                format!("block {}", self.expected)
            };
            let step = Step::fail(
                None,
                FailureReason::Timeout,
                format!("no {waiting_for} after {MAX_RETRANSMISSIONS} retransmissions"),
            );
            self.phase = Phase::Finished;
            return step;
        }
        self.retries_in_row += 1;
        self.retransmissions += 1;
        Step::send(self.last_sent.clone())
    }

    /// A datagram arrived from the server's transfer ID.
    pub fn on_packet<'a>(&mut self, bytes: &'a [u8]) -> Step<'a> {
        if self.phase == Phase::Finished {
            return Step::default();
        }
        let step = match parse(bytes) {
            Err(malformed) => {
                Step::illegal(format!("malformed packet from the server: {malformed}"))
            }
            Ok(Packet::Error { code, message }) => Step::fail(
                None,
                FailureReason::from_error_code(code),
                format!("server sent ERROR {code}: {message:?}"),
            ),
            Ok(Packet::Oack { options }) => self.on_oack(&options),
            Ok(Packet::Data { block, payload }) => self.on_data(block, payload),
            Ok(Packet::Ack { block }) => {
                Step::illegal(format!("server sent ACK {block} during a read"))
            }
            Ok(Packet::Request { .. }) => Step::illegal("server sent a request".into()),
        };
        if step.outcome.is_some() {
            self.phase = Phase::Finished;
        }
        if let Some(packet) = &step.send
            && step.outcome.is_none()
        {
            self.last_sent.clone_from(packet);
        }
        step
    }

    fn on_oack<'a>(&mut self, options: &[(&str, &str)]) -> Step<'a> {
        match self.phase {
            Phase::Requested if !self.requested.is_empty() => {}
            // Our ACK 0 was lost and the server sent its OACK again.
            Phase::Receiving if self.blocks == 0 && self.last_acked == 0 => {
                self.duplicates += 1;
                return Step::send(encode_ack(0));
            }
            _ => return Step::illegal("unexpected OACK".into()),
        }
        match negotiate(&self.requested, options) {
            Err(problem) => {
                let packet = encode_error(error_code::OPTION_REFUSED, &problem);
                Step::fail(
                    Some(packet),
                    FailureReason::OptionRefused,
                    format!("unacceptable OACK: {problem}"),
                )
            }
            Ok(negotiated) => {
                let too_large = negotiated.tsize.filter(|&size| size > self.max_bytes);
                self.negotiated = negotiated;
                if let Some(size) = too_large {
                    let detail = format!(
                        "server announced {size} bytes (tsize), more than max_bytes {}",
                        self.max_bytes
                    );
                    let packet = encode_error(error_code::NOT_DEFINED, "file too large");
                    return Step::fail(Some(packet), FailureReason::TooLarge, detail);
                }
                self.phase = Phase::Receiving;
                self.retries_in_row = 0;
                Step::send(encode_ack(0))
            }
        }
    }

    fn on_data<'a>(&mut self, block: u16, payload: &'a [u8]) -> Step<'a> {
        if self.phase == Phase::Requested {
            if block != 1 {
                return Step::illegal(format!("first DATA is block {block}, not 1"));
            }
            // DATA 1 as the first answer: the server ignored every option.
            self.phase = Phase::Receiving;
        }
        let blksize = self.negotiated.blksize;
        if payload.len() > usize::from(blksize) {
            return Step::illegal(format!(
                "DATA {block} carries {} bytes, more than the block size {blksize}",
                payload.len()
            ));
        }
        let wrapped_to_one = self.expected == 0
            && block == 1
            && self.negotiated.windowsize == 1
            && self.blocks >= 65535;
        if block == self.expected || wrapped_to_one {
            return self.deliver(block, payload);
        }
        self.duplicates += u64::from(self.is_behind(block));
        if block == self.last_acked && self.unacked == 0 && self.blocks > 0 {
            // The server did not get our ACK for the current block: answer this copy.
            return Step::send(encode_ack(block));
        }
        let ahead = block.wrapping_sub(self.expected);
        if ahead >= 1 && ahead <= self.negotiated.windowsize && !self.gap_answered {
            // A gap in the window: ACK what arrived in order so the server resends from there.
            self.gap_answered = true;
            return self.ack(self.expected.wrapping_sub(1));
        }
        // An older block, or a gap already answered: ignore it.
        Step::default()
    }

    /// Whether `block` is one already delivered (within the last window of 65535 blocks).
    fn is_behind(&self, block: u16) -> bool {
        let back = self.expected.wrapping_sub(block);
        self.blocks > 0 && back >= 1 && u64::from(back) <= self.blocks
    }

    fn deliver<'a>(&mut self, block: u16, payload: &'a [u8]) -> Step<'a> {
        let bytes = self.bytes + payload.len() as u64;
        if bytes > self.max_bytes {
            let packet = encode_error(error_code::NOT_DEFINED, "file too large");
            return Step::fail(
                Some(packet),
                FailureReason::TooLarge,
                format!("more than max_bytes {} bytes received", self.max_bytes),
            );
        }
        self.bytes = bytes;
        self.blocks += 1;
        self.expected = block.wrapping_add(1);
        self.retries_in_row = 0;
        self.gap_answered = false;
        self.unacked += 1;
        let last = payload.len() < usize::from(self.negotiated.blksize);
        let mut step = if last || self.unacked >= self.negotiated.windowsize {
            self.ack(block)
        } else {
            Step::default()
        };
        step.payload = Some(payload);
        if last {
            step.outcome = Some(Outcome::Complete);
        }
        step
    }

    fn ack<'a>(&mut self, block: u16) -> Step<'a> {
        self.last_acked = block;
        self.unacked = 0;
        Step::send(encode_ack(block))
    }
}

/// Compares what arrived with what was expected: the server's announced size (tsize), the
/// operator's `expected_size` and `expected_sha256`.
pub fn verify(
    received: u64,
    sha256: &[u8; 32],
    announced_size: Option<u64>,
    expected_size: Option<u64>,
    expected_sha256: Option<&[u8; 32]>,
) -> Result<(), Failure> {
    if let Some(announced) = announced_size
        && announced != received
    {
        return Err(Failure::new(
            FailureReason::SizeMismatch,
            format!("received {received} bytes, the server announced {announced} (tsize)"),
        ));
    }
    if let Some(expected) = expected_size
        && expected != received
    {
        return Err(Failure::new(
            FailureReason::SizeMismatch,
            format!("received {received} bytes, expected_size is {expected}"),
        ));
    }
    if let Some(expected) = expected_sha256
        && expected != sha256
    {
        return Err(Failure::new(
            FailureReason::HashMismatch,
            format!(
                "sha256 {} differs from expected_sha256 {}",
                hex(sha256),
                hex(expected)
            ),
        ));
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case).
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(block: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![0, 3];
        packet.extend_from_slice(&block.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    fn oack(options: &[(&str, &str)]) -> Vec<u8> {
        let mut packet = vec![0, 6];
        for (name, value) in options {
            packet.extend_from_slice(name.as_bytes());
            packet.push(0);
            packet.extend_from_slice(value.as_bytes());
            packet.push(0);
        }
        packet
    }

    fn sent_ack(step: &Step<'_>) -> Option<u16> {
        match parse(step.send.as_deref()?) {
            Ok(Packet::Ack { block }) => Some(block),
            _ => None,
        }
    }

    fn failed(step: &Step<'_>) -> Option<FailureReason> {
        match &step.outcome {
            Some(Outcome::Failed(failure)) => Some(failure.reason),
            _ => None,
        }
    }

    #[test]
    fn encodes_requests_acks_and_errors() {
        let options = OptionRequest {
            blksize: Some(1468),
            tsize: true,
            timeout: Some(3),
            windowsize: Some(16),
        };
        let rrq = encode_rrq("pxelinux.0", &options).unwrap();
        assert_eq!(
            rrq,
            b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00timeout\x003\x00windowsize\x0016\x00"
        );
        assert_eq!(
            parse(&rrq).unwrap(),
            Packet::Request {
                write: false,
                filename: "pxelinux.0",
                mode: "octet",
                options: vec![
                    ("blksize", "1468"),
                    ("tsize", "0"),
                    ("timeout", "3"),
                    ("windowsize", "16")
                ],
            }
        );
        assert_eq!(encode_ack(0x1234), [0, 4, 0x12, 0x34]);
        assert_eq!(
            encode_error(5, "unknown transfer ID"),
            b"\x00\x05\x00\x05unknown transfer ID\x00"
        );
        assert!(encode_rrq("a\0b", &options).is_err());
        assert!(encode_rrq("", &options).is_err());
        let long = "x".repeat(500);
        assert!(
            encode_rrq(&long, &options)
                .unwrap_err()
                .contains("more than 512")
        );
    }

    #[test]
    fn parses_every_packet_kind_and_rejects_garbage() {
        assert_eq!(
            parse(&data(7, b"abc")).unwrap(),
            Packet::Data {
                block: 7,
                payload: b"abc"
            }
        );
        assert_eq!(
            parse(&data(0xffff, b"")).unwrap(),
            Packet::Data {
                block: 0xffff,
                payload: b""
            }
        );
        assert_eq!(parse(&[0, 4, 1, 0]).unwrap(), Packet::Ack { block: 256 });
        assert_eq!(
            parse(b"\x00\x05\x00\x01File not found\x00").unwrap(),
            Packet::Error {
                code: 1,
                message: "File not found".into()
            }
        );
        // Missing NUL and control characters in the message are tolerated.
        assert_eq!(
            parse(b"\x00\x05\x00\x00bad\nthing").unwrap(),
            Packet::Error {
                code: 0,
                message: "badthing".into()
            }
        );
        assert_eq!(
            parse(&oack(&[("blksize", "1024")])).unwrap(),
            Packet::Oack {
                options: vec![("blksize", "1024")]
            }
        );
        assert_eq!(parse(&[0, 6]).unwrap(), Packet::Oack { options: vec![] });
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x03\x00",
            b"\x00\x04\x00\x01\x00",
            b"\x00\x05\x00",
            b"\x00\x06blksize\x00",
            b"\x00\x06blksize\x00512",
            b"\x00\x06bl\xffksize\x00512\x00",
            b"\x00\x07",
            b"\x00\x01file\x00",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn negotiation_accepts_lower_values_and_rejects_surprises() {
        let requested = OptionRequest {
            blksize: Some(1468),
            tsize: true,
            timeout: Some(5),
            windowsize: Some(8),
        };
        let n = negotiate(
            &requested,
            &[("BLKSIZE", "1024"), ("tsize", "4096"), ("windowsize", "4")],
        )
        .unwrap();
        assert_eq!(
            (n.blksize, n.windowsize, n.tsize, n.timeout),
            (1024, 4, Some(4096), None)
        );
        assert_eq!(n.refused, [TftpOption::Timeout]);
        assert_eq!(n.accepted.len(), 3);
        for (oack, needle) in [
            (vec![("blksize", "2048")], "outside"),
            (vec![("blksize", "4")], "outside"),
            (vec![("windowsize", "0")], "outside"),
            (vec![("timeout", "6")], "outside"),
            (vec![("blksize", "x")], "not a number"),
            (vec![("rollover", "0")], "not requested"),
            (vec![("tsize", "1"), ("tsize", "1")], "twice"),
        ] {
            let err = negotiate(&requested, &oack).unwrap_err();
            assert!(err.contains(needle), "{oack:?}: {err}");
        }
        let only_blksize = OptionRequest {
            blksize: Some(512),
            ..OptionRequest::default()
        };
        assert!(
            negotiate(&only_blksize, &[("tsize", "10")])
                .unwrap_err()
                .contains("not requested")
        );
    }

    #[test]
    fn lock_step_transfer_with_final_empty_block() {
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 1 << 20).unwrap();
        let full = [7u8; 512];
        let first = data(1, &full);
        let step = t.on_packet(&first);
        assert_eq!(
            (sent_ack(&step), step.payload.map(<[u8]>::len)),
            (Some(1), Some(512))
        );
        // A copy of block 1 (our ACK was lost): ACKed again, not delivered again.
        let step = t.on_packet(&first);
        assert_eq!((sent_ack(&step), step.payload), (Some(1), None));
        let packet = data(2, &full);
        let step = t.on_packet(&packet);
        assert_eq!(sent_ack(&step), Some(2));
        // A stale copy of block 1 after block 2: ignored (no Sorcerer's Apprentice).
        assert_eq!(t.on_packet(&first), Step::default());
        let packet = data(3, b"");
        let step = t.on_packet(&packet);
        assert_eq!(sent_ack(&step), Some(3));
        assert_eq!(step.payload, Some(&b""[..]));
        assert_eq!(step.outcome, Some(Outcome::Complete));
        assert_eq!((t.bytes(), t.blocks(), t.duplicates()), (1024, 3, 2));
        assert_eq!(t.negotiated().refused, []);
    }

    #[test]
    fn options_are_acked_with_block_zero_and_refusal_falls_back() {
        let requested = OptionRequest {
            blksize: Some(1024),
            tsize: true,
            ..Default::default()
        };
        let (mut t, _) = Transfer::new("f", requested, 1 << 20).unwrap();
        let packet = oack(&[("blksize", "1024"), ("tsize", "1500")]);
        let step = t.on_packet(&packet);
        assert_eq!(sent_ack(&step), Some(0));
        // The OACK again (ACK 0 lost): ACK 0 again.
        assert_eq!(
            sent_ack(&t.on_packet(&oack(&[("blksize", "1024")]))),
            Some(0)
        );
        assert_eq!(sent_ack(&t.on_packet(&data(1, &[0; 1024]))), Some(1));
        let packet = data(2, &[0; 476]);
        let step = t.on_packet(&packet);
        assert_eq!(step.outcome, Some(Outcome::Complete));
        assert_eq!(t.negotiated().tsize, Some(1500));

        // A server that ignores options answers with DATA 1 at 512 bytes.
        let (mut t, _) = Transfer::new("f", requested, 1 << 20).unwrap();
        assert_eq!(sent_ack(&t.on_packet(&data(1, &[0; 512]))), Some(1));
        assert_eq!(
            t.negotiated().refused,
            [TftpOption::Blksize, TftpOption::Tsize]
        );
        // A block bigger than 512 is now a protocol error.
        let (mut t, _) = Transfer::new("f", requested, 1 << 20).unwrap();
        t.on_packet(&data(1, &[0; 512]));
        assert_eq!(
            failed(&t.on_packet(&data(2, &[0; 600]))),
            Some(FailureReason::ProtocolError)
        );
    }

    #[test]
    fn bad_oack_is_answered_with_error_8() {
        let requested = OptionRequest {
            blksize: Some(512),
            ..Default::default()
        };
        let (mut t, _) = Transfer::new("f", requested, 1 << 20).unwrap();
        let packet = oack(&[("blksize", "1024")]);
        let step = t.on_packet(&packet);
        assert_eq!(failed(&step), Some(FailureReason::OptionRefused));
        assert!(matches!(
            parse(step.send.as_deref().unwrap()),
            Ok(Packet::Error { code: 8, .. })
        ));
        // Finished: later packets do nothing.
        assert_eq!(t.on_packet(&data(1, b"x")), Step::default());
        // An OACK without having asked for options is illegal.
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 1 << 20).unwrap();
        assert_eq!(
            failed(&t.on_packet(&oack(&[]))),
            Some(FailureReason::ProtocolError)
        );
    }

    #[test]
    fn server_errors_map_to_reasons() {
        for (code, reason) in [
            (1, FailureReason::FileNotFound),
            (2, FailureReason::AccessViolation),
            (8, FailureReason::OptionRefused),
            (0, FailureReason::ServerError),
            (3, FailureReason::ServerError),
        ] {
            let (mut t, _) = Transfer::new("f", OptionRequest::default(), 10).unwrap();
            let packet = encode_error(code, "why");
            let step = t.on_packet(&packet);
            assert_eq!((failed(&step), step.send), (Some(reason), None));
        }
    }

    #[test]
    fn windows_ack_the_last_in_order_block() {
        let requested = OptionRequest {
            windowsize: Some(4),
            ..Default::default()
        };
        let (mut t, _) = Transfer::new("f", requested, 1 << 20).unwrap();
        assert_eq!(
            sent_ack(&t.on_packet(&oack(&[("windowsize", "4")]))),
            Some(0)
        );
        let block = [1u8; 512];
        for n in 1..=3 {
            assert_eq!(t.on_packet(&data(n, &block)).send, None, "block {n}");
        }
        assert_eq!(sent_ack(&t.on_packet(&data(4, &block))), Some(4));
        // Block 5 lost: 6 is a gap, answered once with ACK 5's predecessor (4).
        assert_eq!(sent_ack(&t.on_packet(&data(6, &block))), Some(4));
        assert_eq!(t.on_packet(&data(7, &block)), Step::default());
        // The server resends from 5.
        for n in 5..=7 {
            let packet = data(n, &block);
            let step = t.on_packet(&packet);
            assert!(step.payload.is_some() && step.send.is_none(), "block {n}");
        }
        assert_eq!(sent_ack(&t.on_packet(&data(8, &block))), Some(8));
        let packet = data(9, b"end");
        let step = t.on_packet(&packet);
        assert_eq!(
            (sent_ack(&step), step.outcome),
            (Some(9), Some(Outcome::Complete))
        );
        assert_eq!(t.bytes(), 8 * 512 + 3);
    }

    #[test]
    fn block_numbers_roll_over_to_zero_or_one() {
        for wrap_to in [0u16, 1] {
            let (mut t, _) = Transfer::new("f", OptionRequest::default(), u64::MAX).unwrap();
            let block = [0u8; 512];
            let mut number = 1u16;
            for _ in 0..65535 {
                assert_eq!(sent_ack(&t.on_packet(&data(number, &block))), Some(number));
                number = number.wrapping_add(1);
            }
            assert_eq!(number, 0);
            let packet = data(wrap_to, &block);
            let step = t.on_packet(&packet);
            assert_eq!(sent_ack(&step), Some(wrap_to), "wrap to {wrap_to}");
            let packet = data(wrap_to + 1, b"x");
            let step = t.on_packet(&packet);
            assert_eq!(step.outcome, Some(Outcome::Complete));
            assert_eq!(t.blocks(), 65537);
        }
    }

    #[test]
    fn timeouts_retransmit_with_backoff_then_give_up() {
        let (mut t, rrq) = Transfer::new("f", OptionRequest::default(), 10).unwrap();
        let mut intervals = Vec::new();
        for _ in 0..MAX_RETRANSMISSIONS {
            intervals.push(t.retransmit_interval().as_secs());
            assert_eq!(t.on_timeout().send.as_deref(), Some(&rrq[..]));
        }
        assert_eq!(intervals, [1, 2, 4, 8, 16]);
        assert_eq!(failed(&t.on_timeout()), Some(FailureReason::Timeout));
        assert_eq!(t.retransmissions(), 5);

        // After progress the ACK is what gets resent, and the backoff starts over.
        let requested = OptionRequest {
            timeout: Some(3),
            ..Default::default()
        };
        let (mut t, _) = Transfer::new("f", requested, 10_000).unwrap();
        t.on_timeout();
        t.on_packet(&oack(&[("timeout", "3")]));
        assert_eq!(t.retransmit_interval(), Duration::from_secs(3));
        t.on_packet(&data(1, &[0; 512]));
        assert_eq!(sent_ack(&t.on_timeout()), Some(1));
        assert_eq!(t.retransmit_interval(), Duration::from_secs(6));
    }

    #[test]
    fn byte_cap_stops_the_transfer() {
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 1000).unwrap();
        t.on_packet(&data(1, &[0; 512]));
        let packet = data(2, &[0; 512]);
        let step = t.on_packet(&packet);
        assert_eq!(failed(&step), Some(FailureReason::TooLarge));
        assert_eq!(step.payload, None);
        assert_eq!(t.bytes(), 512);
        // Or earlier, from tsize.
        let requested = OptionRequest {
            tsize: true,
            ..Default::default()
        };
        let (mut t, _) = Transfer::new("f", requested, 1000).unwrap();
        assert_eq!(
            failed(&t.on_packet(&oack(&[("tsize", "1001")]))),
            Some(FailureReason::TooLarge)
        );
    }

    #[test]
    fn verification_and_hex() {
        let hash = [0xab; 32];
        assert!(verify(10, &hash, Some(10), Some(10), Some(&hash)).is_ok());
        assert_eq!(
            verify(10, &hash, Some(11), None, None).unwrap_err().reason,
            FailureReason::SizeMismatch
        );
        assert_eq!(
            verify(10, &hash, None, Some(9), None).unwrap_err().reason,
            FailureReason::SizeMismatch
        );
        assert_eq!(
            verify(10, &hash, None, None, Some(&[0; 32]))
                .unwrap_err()
                .reason,
            FailureReason::HashMismatch
        );
        let text = hex(&hash);
        assert_eq!(parse_sha256(&text), Some(hash));
        assert_eq!(parse_sha256(&text.to_uppercase()), Some(hash));
        assert_eq!(parse_sha256("ab"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
        assert_eq!(parse_sha256(&"é".repeat(32)), None);
    }

    #[test]
    fn illegal_packets_end_the_transfer() {
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 10).unwrap();
        assert_eq!(
            failed(&t.on_packet(&data(2, b"x"))),
            Some(FailureReason::ProtocolError)
        );
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 10).unwrap();
        assert_eq!(
            failed(&t.on_packet(&[0, 4, 0, 1])),
            Some(FailureReason::ProtocolError)
        );
        let (mut t, _) = Transfer::new("f", OptionRequest::default(), 10).unwrap();
        let step = t.on_packet(&[0, 9]);
        assert_eq!(failed(&step), Some(FailureReason::ProtocolError));
        assert!(matches!(
            parse(step.send.as_deref().unwrap()),
            Ok(Packet::Error { code: 4, .. })
        ));
    }
}

//! The iperf3 control protocol without I/O: state bytes, the session cookie, length-prefixed
//! JSON framing, the parameter and result documents, server error replies, the RSA auth token
//! text, the UDP handshake and datagram header, and the receiver-side UDP loss/jitter counter.
//!
//! Everything here is a pure function over bytes the caller already has, so the async driver in
//! `probe::iperf3` owns every socket and these functions can be unit-tested and fuzzed. Wire
//! facts (checked against iperf3 3.12 to 3.21): states are one signed byte; JSON messages are a
//! big-endian u32 length and unformatted JSON; stream ids are 1, 3, 4, 5, ... (2 is skipped);
//! boolean parameters are tested for presence, so only `true` flags are ever sent; 3.12 prints
//! -1 as 18446744073709551615.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Length of the session cookie including its trailing NUL.
pub const COOKIE_LEN: usize = 37;
/// Largest JSON message we accept from a server (results carry no server output: we never ask).
pub const MAX_JSON_LEN: usize = 64 * 1024;
/// Datagram a UDP client sends to open a stream (the C client writes 0x36373839 in host order).
pub const UDP_CONNECT_MSG: [u8; 4] = *b"9876";
/// Bytes of the UDP datagram header we write: seconds, microseconds, u32 packet counter.
pub const UDP_HEADER_LEN: usize = 12;
/// Client version we announce (the oldest server behaviour we implement).
pub const CLIENT_VERSION: &str = "3.12";

/// A control-connection state byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    TestStart,
    TestRunning,
    TestEnd,
    ParamExchange,
    CreateStreams,
    ServerTerminate,
    ClientTerminate,
    ExchangeResults,
    DisplayResults,
    IperfStart,
    IperfDone,
    /// The server is busy with another client's test.
    AccessDenied,
    /// Followed by the server's `i_errno` (and, from most paths, `errno`) as i32 BE.
    ServerError,
}

impl State {
    /// Decodes a state byte; `None` for values iperf3 never sends.
    pub fn from_byte(byte: u8) -> Option<State> {
        Some(match byte as i8 {
            1 => State::TestStart,
            2 => State::TestRunning,
            4 => State::TestEnd,
            9 => State::ParamExchange,
            10 => State::CreateStreams,
            11 => State::ServerTerminate,
            12 => State::ClientTerminate,
            13 => State::ExchangeResults,
            14 => State::DisplayResults,
            15 => State::IperfStart,
            16 => State::IperfDone,
            -1 => State::AccessDenied,
            -2 => State::ServerError,
            _ => return None,
        })
    }

    pub fn to_byte(self) -> u8 {
        let value: i8 = match self {
            State::TestStart => 1,
            State::TestRunning => 2,
            State::TestEnd => 4,
            State::ParamExchange => 9,
            State::CreateStreams => 10,
            State::ServerTerminate => 11,
            State::ClientTerminate => 12,
            State::ExchangeResults => 13,
            State::DisplayResults => 14,
            State::IperfStart => 15,
            State::IperfDone => 16,
            State::AccessDenied => -1,
            State::ServerError => -2,
        };
        value as u8
    }
}

/// Something the server sent that the protocol does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn error(text: impl Into<String>) -> ProtocolError {
    ProtocolError(text.into())
}

/// The session cookie from 36 random bytes: each maps to one of `a-z2-7`, then a NUL.
pub fn make_cookie(random: &[u8; COOKIE_LEN - 1]) -> [u8; COOKIE_LEN] {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut cookie = [0u8; COOKIE_LEN];
    for (out, byte) in cookie.iter_mut().zip(random) {
        *out = ALPHABET[usize::from(byte % 32)];
    }
    cookie
}

/// A JSON message as sent on the wire: u32 BE length, then the bytes.
pub fn frame_json(json: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(4 + json.len());
    framed.extend_from_slice(&(json.len() as u32).to_be_bytes());
    framed.extend_from_slice(json);
    framed
}

/// The length announced by a JSON message header, refused above [`MAX_JSON_LEN`].
pub fn json_len(header: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_JSON_LEN {
        return Err(error(format!(
            "server announced a {len}-byte JSON message (limit {MAX_JSON_LEN})"
        )));
    }
    Ok(len)
}

/// Stream ids as the server assigns them in accept order: 1, 3, 4, 5, ...
pub fn stream_ids(count: usize) -> Vec<u32> {
    (0..count as u32)
        .map(|index| if index == 0 { 1 } else { index + 2 })
        .collect()
}

/// Transport of the test's data streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What the client asks the server to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestParameters {
    pub transport: Transport,
    /// Whole seconds; the server only uses it for its own give-up timer.
    pub time_seconds: u32,
    pub parallel: u32,
    /// The server sends and we receive.
    pub reverse: bool,
    /// Bytes per write (TCP) or per datagram (UDP).
    pub block_len: u32,
    /// Target bitrate in bits per second; 0 means unlimited (TCP only).
    pub bitrate: u64,
    /// Base64 RSA token, when authenticating.
    pub authtoken: Option<String>,
}

impl TestParameters {
    /// The parameter document. Flags are only present when true: servers test presence.
    pub fn to_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        let protocol = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        map.insert(protocol.into(), Value::Bool(true));
        map.insert("omit".into(), 0.into());
        map.insert("time".into(), self.time_seconds.into());
        map.insert("num".into(), 0.into());
        map.insert("blockcount".into(), 0.into());
        map.insert("parallel".into(), self.parallel.into());
        if self.reverse {
            map.insert("reverse".into(), Value::Bool(true));
        }
        map.insert("len".into(), self.block_len.into());
        if self.bitrate > 0 {
            map.insert("bandwidth".into(), self.bitrate.into());
        }
        map.insert("pacing_timer".into(), 1000.into());
        if let Some(token) = &self.authtoken {
            map.insert("authtoken".into(), token.clone().into());
        }
        map.insert("client_version".into(), CLIENT_VERSION.into());
        serde_json::to_vec(&Value::Object(map)).expect("a JSON map always serialises")
    }
}

/// One stream's numbers, as either side reports them in the results exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamResult {
    pub id: u32,
    pub bytes: u64,
    /// `None` when the reporter does not know (it was not the TCP sender).
    pub retransmits: Option<u64>,
    /// Seconds (UDP receiver only).
    pub jitter: f64,
    /// Lost datagrams (UDP receiver) .
    pub errors: u64,
    /// Datagrams sent (UDP sender) or highest sequence number seen (UDP receiver).
    pub packets: u64,
    /// Seconds between the stream's first and last data.
    pub seconds: f64,
}

/// One side's results document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    /// -1 unknown or receiver, 0 no, 1 yes.
    pub sender_has_retransmits: i64,
    pub streams: Vec<StreamResult>,
}

impl Results {
    /// The document the client sends after EXCHANGE_RESULTS.
    pub fn to_json(&self) -> Vec<u8> {
        let streams: Vec<Value> = self
            .streams
            .iter()
            .map(|stream| {
                serde_json::json!({
                    "id": stream.id,
                    "bytes": stream.bytes,
                    "retransmits": stream.retransmits.map_or(-1, |r| r as i64),
                    "jitter": stream.jitter,
                    "errors": stream.errors,
                    "packets": stream.packets,
                    "start_time": 0.0,
                    "end_time": stream.seconds,
                })
            })
            .collect();
        let document = serde_json::json!({
            "cpu_util_total": 0.0,
            "cpu_util_user": 0.0,
            "cpu_util_system": 0.0,
            "sender_has_retransmits": self.sender_has_retransmits,
            "streams": streams,
        });
        serde_json::to_vec(&document).expect("a JSON value always serialises")
    }

    /// Parses the server's results document. Required: the three cpu fields,
    /// `sender_has_retransmits`, and per stream `id`, `bytes`, `retransmits`, `jitter`,
    /// `errors`, `packets`.
    pub fn parse(json: &[u8]) -> Result<Results, ProtocolError> {
        #[derive(Deserialize)]
        struct RawResults {
            cpu_util_total: Value,
            cpu_util_user: Value,
            cpu_util_system: Value,
            sender_has_retransmits: Value,
            streams: Vec<RawStream>,
        }
        #[derive(Deserialize)]
        struct RawStream {
            id: Value,
            bytes: Value,
            retransmits: Value,
            jitter: Value,
            errors: Value,
            packets: Value,
            start_time: Option<Value>,
            end_time: Option<Value>,
        }
        let raw: RawResults =
            serde_json::from_slice(json).map_err(|err| error(format!("results JSON: {err}")))?;
        for (name, value) in [
            ("cpu_util_total", &raw.cpu_util_total),
            ("cpu_util_user", &raw.cpu_util_user),
            ("cpu_util_system", &raw.cpu_util_system),
        ] {
            number(value, name)?;
        }
        let sender_has_retransmits = signed(&raw.sender_has_retransmits, "sender_has_retransmits")?;
        let mut streams = Vec::with_capacity(raw.streams.len());
        for stream in raw.streams {
            let id = unsigned(&stream.id, "id")?;
            let id =
                u32::try_from(id).map_err(|_| error(format!("stream id {id} out of range")))?;
            let retransmits = signed(&stream.retransmits, "retransmits")?;
            let jitter = number(&stream.jitter, "jitter")?;
            let seconds = match (&stream.start_time, &stream.end_time) {
                (Some(start), Some(end)) => {
                    (number(end, "end_time")? - number(start, "start_time")?).max(0.0)
                }
                _ => 0.0,
            };
            streams.push(StreamResult {
                id,
                bytes: unsigned(&stream.bytes, "bytes")?,
                retransmits: u64::try_from(retransmits).ok(),
                jitter: if jitter.is_finite() {
                    jitter.max(0.0)
                } else {
                    0.0
                },
                errors: unsigned(&stream.errors, "errors")?,
                packets: unsigned(&stream.packets, "packets")?,
                seconds: if seconds.is_finite() { seconds } else { 0.0 },
            });
        }
        Ok(Results {
            sender_has_retransmits,
            streams,
        })
    }
}

fn number(value: &Value, name: &str) -> Result<f64, ProtocolError> {
    value
        .as_f64()
        .ok_or_else(|| error(format!("results field {name:?} is {value}, not a number")))
}

/// An integer that may be -1, written by 3.12 as u64::MAX.
fn signed(value: &Value, name: &str) -> Result<i64, ProtocolError> {
    if let Some(int) = value.as_i64() {
        return Ok(int);
    }
    match value.as_u64() {
        Some(u64::MAX) => Ok(-1),
        _ => match value.as_f64() {
            Some(float) if float.fract() == 0.0 && float.abs() < 9.0e15 => Ok(float as i64),
            _ => Err(error(format!(
                "results field {name:?} is {value}, not an integer"
            ))),
        },
    }
}

/// A non-negative integer (cJSON may print large counts in exponent form).
fn unsigned(value: &Value, name: &str) -> Result<u64, ProtocolError> {
    if let Some(int) = value.as_u64() {
        return Ok(int);
    }
    match value.as_f64() {
        Some(float) if float.fract() == 0.0 && (0.0..1.8e19).contains(&float) => Ok(float as u64),
        _ => Err(error(format!(
            "results field {name:?} is {value}, not a non-negative integer"
        ))),
    }
}

/// A SERVER_ERROR reply: the server's error number and, when sent, the OS errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub i_errno: i32,
    pub errno: Option<i32>,
}

/// iperf3's `i_errno` for a failed authentication (IEAUTHTEST).
pub const IE_AUTH_TEST: i32 = 142;

impl ServerError {
    /// Parses the 4 or 8 bytes that follow a SERVER_ERROR state byte.
    pub fn parse(bytes: &[u8]) -> Result<ServerError, ProtocolError> {
        let i_errno = bytes
            .get(..4)
            .ok_or_else(|| error("SERVER_ERROR without an error number"))?;
        let i_errno = i32::from_be_bytes(i_errno.try_into().expect("4 bytes"));
        let errno = bytes
            .get(4..8)
            .map(|raw| i32::from_be_bytes(raw.try_into().expect("4 bytes")));
        Ok(ServerError { i_errno, errno })
    }

    pub fn is_auth_failure(&self) -> bool {
        self.i_errno == IE_AUTH_TEST
    }

    /// A short description for the probe log.
    pub fn describe(&self) -> String {
        let what = match self.i_errno {
            IE_AUTH_TEST => "test authorization failed",
            100 => "unable to create a new test",
            101 => "unable to initialize test",
            111 => "unable to receive parameters",
            117 => "unable to receive results",
            121 => "server busy",
            200..=299 => "stream error",
            _ => "server error",
        };
        match self.errno {
            Some(errno) if errno != 0 => {
                format!("{what} (i_errno {}, errno {errno})", self.i_errno)
            }
            _ => format!("{what} (i_errno {})", self.i_errno),
        }
    }
}

/// The plaintext of an auth token: iperf3 encrypts this with the server's RSA key.
pub fn auth_plaintext(username: &str, password: &str, unix_seconds: i64) -> String {
    format!("user: {username}\npwd:  {password}\nts:   {unix_seconds}")
}

/// Whether a datagram is the server's answer to [`UDP_CONNECT_MSG`]: "6789" from a
/// little-endian server, "9876" from a big-endian one, or the legacy 987654321 in either order.
pub fn is_udp_connect_reply(datagram: &[u8]) -> bool {
    const LEGACY: u32 = 987_654_321;
    let Some(first) = datagram.get(..4) else {
        return false;
    };
    first == b"6789"
        || first == b"9876"
        || first == LEGACY.to_le_bytes()
        || first == LEGACY.to_be_bytes()
}

/// Writes the UDP datagram header (send time and 32-bit packet counter, all BE).
pub fn write_udp_header(buffer: &mut [u8], sec: u32, usec: u32, packet: u32) {
    buffer[0..4].copy_from_slice(&sec.to_be_bytes());
    buffer[4..8].copy_from_slice(&usec.to_be_bytes());
    buffer[8..12].copy_from_slice(&packet.to_be_bytes());
}

/// The header of a received datagram; `None` if it is too short.
pub fn read_udp_header(datagram: &[u8]) -> Option<(u32, u32, u32)> {
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            datagram.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    Some((field(0)?, field(4)?, field(8)?))
}

/// Receiver-side UDP accounting as iperf3 does it: loss from gaps in the packet counter (an
/// out-of-order arrival takes one loss back) and RFC 3550 interarrival jitter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UdpReceiver {
    pub bytes: u64,
    /// Highest packet counter seen.
    pub packets: u64,
    pub lost: u64,
    pub out_of_order: u64,
    /// Seconds.
    pub jitter: f64,
    previous_transit: Option<f64>,
}

impl UdpReceiver {
    /// Accounts one datagram of `len` bytes with counter `packet`, sent at `sent` and received
    /// at `arrived` (seconds on each side's clock; only their differences matter).
    pub fn record(&mut self, len: usize, packet: u64, sent: f64, arrived: f64) {
        self.bytes += len as u64;
        if packet > self.packets {
            self.lost += packet - self.packets - 1;
            self.packets = packet;
        } else {
            self.out_of_order += 1;
            self.lost = self.lost.saturating_sub(1);
        }
        let transit = arrived - sent;
        if let Some(previous) = self.previous_transit {
            let delta = (transit - previous).abs();
            if delta.is_finite() {
                self.jitter += (delta - self.jitter) / 16.0;
            }
        }
        self.previous_transit = Some(transit);
    }
}

/// Parses a bitrate as iperf3 writes it: a number with an optional `k`, `m`, `g` or `t`
/// suffix (powers of 1000, either case), in bits per second.
pub fn parse_bitrate(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 1e3),
        (at, 'm' | 'M') => (&text[..at], 1e6),
        (at, 'g' | 'G') => (&text[..at], 1e9),
        (at, 't' | 'T') => (&text[..at], 1e12),
        _ => (text, 1.0),
    };
    let value: f64 = number.parse().ok()?;
    let bits = value * scale;
    (0.0..1.0e15).contains(&bits).then_some(bits.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bytes_round_trip() {
        for byte in 0..=255u8 {
            if let Some(state) = State::from_byte(byte) {
                assert_eq!(state.to_byte(), byte);
            }
        }
        assert_eq!(State::from_byte(0xff), Some(State::AccessDenied));
        assert_eq!(State::from_byte(0xfe), Some(State::ServerError));
        assert_eq!(State::from_byte(9), Some(State::ParamExchange));
        assert_eq!(State::from_byte(3), None);
        assert_eq!(State::IperfDone.to_byte(), 16);
    }

    #[test]
    fn cookie_uses_the_base32_alphabet_and_ends_in_nul() {
        let cookie = make_cookie(&[0u8; 36]);
        assert_eq!(&cookie[..36], "a".repeat(36).as_bytes());
        assert_eq!(cookie[36], 0);
        let mut random = [0u8; 36];
        for (i, byte) in random.iter_mut().enumerate() {
            *byte = (i * 7) as u8;
        }
        let cookie = make_cookie(&random);
        assert!(
            cookie[..36]
                .iter()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
        );
        assert_eq!(make_cookie(&[31; 36])[0], b'7');
    }

    #[test]
    fn json_framing() {
        assert_eq!(frame_json(b"{}"), [0, 0, 0, 2, b'{', b'}']);
        assert_eq!(json_len([0, 0, 1, 0]), Ok(256));
        assert!(json_len([0, 1, 0, 1]).unwrap_err().0.contains("65537"));
    }

    #[test]
    fn stream_ids_skip_two() {
        assert_eq!(stream_ids(1), [1]);
        assert_eq!(stream_ids(4), [1, 3, 4, 5]);
    }

    #[test]
    fn parameters_only_carry_true_flags() {
        let mut params = TestParameters {
            transport: Transport::Tcp,
            time_seconds: 3,
            parallel: 2,
            reverse: false,
            block_len: 131_072,
            bitrate: 0,
            authtoken: None,
        };
        let json: Value = serde_json::from_slice(&params.to_json()).unwrap();
        assert_eq!(json["tcp"], true);
        assert_eq!(json["time"], 3);
        assert_eq!(json["parallel"], 2);
        assert_eq!(json["len"], 131_072);
        assert_eq!(json["client_version"], "3.12");
        for absent in ["reverse", "udp", "bandwidth", "authtoken", "bidirectional"] {
            assert!(json.get(absent).is_none(), "{absent} must be absent");
        }
        params.reverse = true;
        params.transport = Transport::Udp;
        params.bitrate = 10_000_000;
        params.authtoken = Some("dG9rZW4=".into());
        let json: Value = serde_json::from_slice(&params.to_json()).unwrap();
        assert_eq!(json["reverse"], true);
        assert_eq!(json["udp"], true);
        assert!(json.get("tcp").is_none());
        assert_eq!(json["bandwidth"], 10_000_000);
        assert_eq!(json["authtoken"], "dG9rZW4=");
    }

    #[test]
    fn parses_results_of_3_12_with_unsigned_minus_one() {
        // As a 3.12 server sends them in forward mode (it is the receiver).
        let json = br#"{"cpu_util_total":1.5,"cpu_util_user":0.2,"cpu_util_system":1.3,"sender_has_retransmits":18446744073709551615,"streams":[{"id":1,"bytes":3221225472,"retransmits":18446744073709551615,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":2.000123}]}"#;
        let results = Results::parse(json).unwrap();
        assert_eq!(results.sender_has_retransmits, -1);
        assert_eq!(results.streams.len(), 1);
        let stream = &results.streams[0];
        assert_eq!(stream.id, 1);
        assert_eq!(stream.bytes, 3_221_225_472);
        assert_eq!(stream.retransmits, None);
        assert!((stream.seconds - 2.000123).abs() < 1e-9);
    }

    #[test]
    fn parses_udp_and_reverse_results() {
        let json = br#"{"cpu_util_total":1,"cpu_util_user":0,"cpu_util_system":1,"sender_has_retransmits":1,"congestion_used":"cubic","streams":[{"id":1,"bytes":2500696,"retransmits":7,"jitter":1.25e-5,"errors":3,"packets":1727,"omitted_errors":0,"start_time":0,"end_time":1.5},{"id":3,"bytes":1e3,"retransmits":-1,"jitter":0,"errors":0,"packets":0}]}"#;
        let results = Results::parse(json).unwrap();
        assert_eq!(results.sender_has_retransmits, 1);
        let [first, second] = &results.streams[..] else {
            panic!("two streams expected");
        };
        assert_eq!(
            (first.retransmits, first.errors, first.packets),
            (Some(7), 3, 1727)
        );
        assert!((first.jitter - 1.25e-5).abs() < 1e-12);
        assert_eq!(second.bytes, 1000);
        assert_eq!(second.retransmits, None);
        assert_eq!(second.seconds, 0.0);
    }

    #[test]
    fn results_errors_name_the_field() {
        let missing_cpu =
            br#"{"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":[]}"#;
        assert!(
            Results::parse(missing_cpu)
                .unwrap_err()
                .0
                .contains("cpu_util_total")
        );
        let bad_bytes = br#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":[{"id":1,"bytes":"many","retransmits":0,"jitter":0,"errors":0,"packets":0}]}"#;
        assert!(
            Results::parse(bad_bytes)
                .unwrap_err()
                .0
                .contains("\"bytes\"")
        );
        let negative = br#"{"cpu_util_total":0,"cpu_util_user":0,"cpu_util_system":0,"sender_has_retransmits":0,"streams":[{"id":1,"bytes":-5,"retransmits":0,"jitter":0,"errors":0,"packets":0}]}"#;
        assert!(Results::parse(negative).is_err());
        assert!(Results::parse(b"garbage").is_err());
        assert!(Results::parse(b"").is_err());
    }

    #[test]
    fn results_round_trip() {
        let results = Results {
            sender_has_retransmits: 1,
            streams: vec![StreamResult {
                id: 3,
                bytes: 123_456_789_012,
                retransmits: Some(4),
                jitter: 0.5,
                errors: 1,
                packets: 9,
                seconds: 2.5,
            }],
        };
        assert_eq!(Results::parse(&results.to_json()).unwrap(), results);
        let unknown = Results {
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                retransmits: None,
                ..StreamResult::default()
            }],
        };
        assert_eq!(Results::parse(&unknown.to_json()).unwrap(), unknown);
    }

    #[test]
    fn server_errors() {
        let auth = ServerError::parse(&[0, 0, 0, 142]).unwrap();
        assert_eq!(
            auth,
            ServerError {
                i_errno: 142,
                errno: None
            }
        );
        assert!(auth.is_auth_failure());
        assert!(auth.describe().contains("authorization"));
        let full = ServerError::parse(&[0, 0, 0, 117, 0, 0, 0, 104]).unwrap();
        assert_eq!(full.errno, Some(104));
        assert!(full.describe().contains("errno 104"));
        assert!(ServerError::parse(&[0, 0]).is_err());
    }

    #[test]
    fn auth_text_matches_the_c_format() {
        assert_eq!(
            auth_plaintext("mary", "s3cret", 1_700_000_000),
            "user: mary\npwd:  s3cret\nts:   1700000000"
        );
    }

    #[test]
    fn udp_handshake_and_header() {
        assert!(is_udp_connect_reply(b"6789"));
        assert!(is_udp_connect_reply(&987_654_321u32.to_le_bytes()));
        assert!(!is_udp_connect_reply(b"678"));
        assert!(!is_udp_connect_reply(b"abcd"));
        let mut buffer = [0u8; 16];
        write_udp_header(&mut buffer, 1, 2, 0x0102_0304);
        assert_eq!(&buffer[..12], &[0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 3, 4]);
        assert_eq!(read_udp_header(&buffer), Some((1, 2, 0x0102_0304)));
        assert_eq!(read_udp_header(&buffer[..11]), None);
    }

    #[test]
    fn udp_receiver_counts_gaps_reordering_and_jitter() {
        let mut receiver = UdpReceiver::default();
        receiver.record(100, 1, 0.0, 1.0);
        receiver.record(100, 2, 0.1, 1.1);
        assert_eq!(receiver.jitter, 0.0);
        receiver.record(100, 5, 0.4, 1.5); // 3 and 4 missing; transit grew by 0.1 s
        assert_eq!((receiver.lost, receiver.packets), (2, 5));
        assert!((receiver.jitter - 0.1 / 16.0).abs() < 1e-12);
        receiver.record(100, 3, 0.2, 1.5); // late: one loss taken back
        assert_eq!(
            (receiver.lost, receiver.out_of_order, receiver.bytes),
            (1, 1, 400)
        );
    }

    /// What the fuzz target checks, over deterministic mutations of real documents (the fuzz
    /// target explores further with libFuzzer).
    #[test]
    fn parsers_survive_mutated_server_bytes() {
        let seeds: [&[u8]; 3] = [
            br#"{"cpu_util_total":1.5,"cpu_util_user":0.2,"cpu_util_system":1.3,"sender_has_retransmits":18446744073709551615,"streams":[{"id":1,"bytes":3221225472,"retransmits":18446744073709551615,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":2.000123}]}"#,
            br#"{"cpu_util_total":1,"cpu_util_user":0,"cpu_util_system":1,"sender_has_retransmits":1,"streams":[{"id":3,"bytes":1e3,"retransmits":-1,"jitter":1e-5,"errors":3,"packets":9}]}"#,
            &[0xfe, 0, 0, 0, 142, 0, 0, 0, 1, b'6', b'7', b'8', b'9'],
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => {
                        const JSON_BYTES: &[u8] = b"0-9e.,:[]{}\"\\";
                        let byte = JSON_BYTES[(next() as usize) % JSON_BYTES.len()];
                        bytes.insert(at.min(bytes.len()), byte);
                    }
                }
            }
            if let Ok(results) = Results::parse(&bytes) {
                assert_eq!(
                    Results::parse(&results.to_json()).unwrap().streams.len(),
                    results.streams.len()
                );
            }
            let _ = ServerError::parse(&bytes);
            let _ = bytes.first().map(|&b| State::from_byte(b));
            let _ = is_udp_connect_reply(&bytes);
            let mut receiver = UdpReceiver::default();
            for chunk in bytes.chunks(12) {
                if let Some((sec, usec, packet)) = read_udp_header(chunk) {
                    receiver.record(
                        chunk.len(),
                        u64::from(packet),
                        f64::from(sec) + f64::from(usec) * 1e-6,
                        0.0,
                    );
                }
            }
            assert!(receiver.lost <= receiver.packets);
        }
    }

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("10M"), Some(10_000_000));
        assert_eq!(parse_bitrate("1.5g"), Some(1_500_000_000));
        assert_eq!(parse_bitrate("800k"), Some(800_000));
        assert_eq!(parse_bitrate("12345"), Some(12_345));
        for bad in ["", "M", "fast", "-1M", "1e400", "NaN"] {
            assert_eq!(parse_bitrate(bad), None, "{bad}");
        }
    }
}

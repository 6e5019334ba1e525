//! The iperf3 control connection and one complete test over it: the cookie, the parameter
//! exchange (with the auth token), opening the data streams (TCP with the cookie, UDP with the
//! connect handshake), the timed test while the server must stay quiet, the results exchange,
//! and every state byte or error the server may send in between turned into a [`Failure`].

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use super::{
    Config, Failure, FailureReason,
    auth::auth_token,
    protocol::{self, COOKIE_LEN, Results, ServerError, State, TestParameters, Transport},
    report::{Measurement, combine, local_results},
    streams::{DataSocket, RUN, STOP, StopOnDrop, StreamJob, collect},
};
use crate::probe::ProbeContext;

/// Datagram size: fits a 1500-byte MTU over IPv6 (1448 + 8 + 40).
pub const UDP_BLOCK_LEN: u32 = 1448;
/// Write size for TCP (iperf3's default).
pub const TCP_BLOCK_LEN: u32 = 128 * 1024;

/// The control connection and the framing helpers around it.
struct Control {
    stream: TcpStream,
}

impl Control {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.write_all(bytes).await.map_err(|err| {
            Failure::new(
                FailureReason::ServerError,
                format!("writing to the server: {err}"),
            )
        })
    }

    async fn read_exact(&mut self, buffer: &mut [u8], what: &str) -> Result<(), Failure> {
        match self.stream.read_exact(buffer).await {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => Err(Failure::new(
                FailureReason::ServerError,
                format!("the server closed the control connection while we waited for {what}"),
            )),
            Err(err) => Err(Failure::new(
                FailureReason::ServerError,
                format!("reading {what} from the server: {err}"),
            )),
        }
    }

    /// Reads the next state byte; ACCESS_DENIED and SERVER_ERROR become failures.
    async fn read_state(&mut self, what: &str) -> Result<State, Failure> {
        let mut byte = [0u8; 1];
        self.read_exact(&mut byte, what).await?;
        match State::from_byte(byte[0]) {
            Some(State::AccessDenied) => Err(Failure::new(
                FailureReason::Busy,
                "the server is running another client's test (ACCESS_DENIED)",
            )
            .retryable()),
            Some(State::ServerError) => Err(self.server_error().await),
            Some(state) => Ok(state),
            // The byte itself stays out of the message: the peer may be another service
            // (an SSH or HTTP server), whose bytes a caller must not read back.
            None => Err(Failure::new(
                FailureReason::ProtocolError,
                format!(
                    "not an iperf3 server: its reply is not an iperf3 state (waiting for {what})"
                ),
            )),
        }
    }

    /// Reads the error numbers after SERVER_ERROR (3.12 may close after the first).
    async fn server_error(&mut self) -> Failure {
        let mut bytes = Vec::with_capacity(8);
        let mut limited = (&mut self.stream).take(8);
        let _ = tokio::time::timeout(Duration::from_secs(1), limited.read_to_end(&mut bytes)).await;
        match ServerError::parse(&bytes) {
            Ok(error) if error.is_auth_failure() => Failure::new(
                FailureReason::AuthFailed,
                format!("the server refused our credentials: {}", error.describe()),
            ),
            Ok(error) => Failure::new(FailureReason::ServerError, error.describe()),
            Err(err) => Failure::new(FailureReason::ServerError, err.0),
        }
    }

    async fn expect(&mut self, wanted: State) -> Result<(), Failure> {
        let what = format!("{wanted:?}");
        match self.read_state(&what).await? {
            state if state == wanted => Ok(()),
            State::ServerTerminate => Err(Failure::new(
                FailureReason::ServerError,
                format!("the server terminated the test while we waited for {what}"),
            )),
            state => Err(Failure::new(
                FailureReason::ProtocolError,
                format!("expected {what}, the server sent {state:?}"),
            )),
        }
    }

    /// Sleeps through the test; the server must stay quiet meanwhile (a byte now is an error
    /// or a termination, EOF means it went away).
    async fn wait_out(&mut self, period: Duration) -> Result<(), Failure> {
        let mut byte = [0u8; 1];
        tokio::select! {
            () = tokio::time::sleep(period) => Ok(()),
            read = self.stream.read(&mut byte) => Err(match read {
                Ok(0) => Failure::new(FailureReason::ServerError,
                    "the server closed the control connection during the test",
                ),
                Ok(_) if byte[0] == State::ServerError.to_byte() => self.server_error().await,
                Ok(_) => Failure::new(FailureReason::ServerError,
                    match State::from_byte(byte[0]) {
                        Some(state) => format!("the server interrupted the test with {state:?}"),
                        None => "the server interrupted the test with a byte that is not an \
                                 iperf3 state"
                            .to_string(),
                    },
                ),
                Err(err) => Failure::new(FailureReason::ServerError,
                    format!("control connection during the test: {err}"),
                ),
            }),
        }
    }

    async fn read_json(&mut self) -> Result<Vec<u8>, Failure> {
        let mut header = [0u8; 4];
        self.read_exact(&mut header, "the results length").await?;
        let len = protocol::json_len(header)?;
        let mut json = vec![0u8; len];
        self.read_exact(&mut json, "the results").await?;
        Ok(json)
    }
}

/// Connects a TCP socket to `address`, from `bind` if given. Only the control connection sets
/// TCP_NODELAY (as iperf3 does without `-N`): data streams write large blocks.
async fn connect_tcp(
    address: SocketAddr,
    bind: Option<IpAddr>,
    nodelay: bool,
) -> std::io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(bind) = bind {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(nodelay)?;
    Ok(stream)
}

/// One complete test: control exchange, streams, timer, results.
pub(super) async fn run_test(
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
    period: Duration,
) -> Result<Measurement, Failure> {
    // iperf3 closes its listening socket after every test and opens it again for the next, so
    // a refusal right after another client's test is worth a quick retry.
    let stream = connect_tcp(address, config.bind, true)
        .await
        .map_err(|err| {
            let refused = err.kind() == ErrorKind::ConnectionRefused;
            let failure = Failure::new(
                FailureReason::ConnectFailed,
                format!("connecting to {address}: {err}"),
            );
            if refused {
                failure.retryable()
            } else {
                failure
            }
        })?;
    let mut control = Control { stream };
    let mut random = [0u8; COOKIE_LEN - 1];
    crate::support::random::fill(&mut random);
    let cookie = protocol::make_cookie(&random);
    control.write(&cookie).await?;
    // A server that just failed a test re-creates its listener; a connection caught in between
    // is reset before PARAM_EXCHANGE. Worth another try.
    control
        .expect(State::ParamExchange)
        .await
        .map_err(|failure| match failure.reason {
            FailureReason::ServerError => failure.retryable(),
            _ => failure,
        })?;

    let authtoken = match &config.auth {
        Some(auth) => {
            Some(auth_token(auth).map_err(|err| Failure::new(FailureReason::AuthFailed, err))?)
        }
        None => None,
    };
    let parameters = TestParameters {
        transport: config.transport,
        time_seconds: period.as_secs_f64().ceil() as u32,
        parallel: config.parallel,
        reverse: config.reverse,
        block_len: match config.transport {
            Transport::Tcp => TCP_BLOCK_LEN,
            Transport::Udp => UDP_BLOCK_LEN,
        },
        bitrate: config.bitrate,
        authtoken,
    };
    control
        .write(&protocol::frame_json(&parameters.to_json()))
        .await?;
    control.expect(State::CreateStreams).await?;

    let ids = protocol::stream_ids(config.parallel as usize);
    let mut sockets = Vec::with_capacity(ids.len());
    for _ in &ids {
        sockets.push(open_stream(config, address, &cookie).await?);
    }
    ctx.log(format!(
        "{} {:?} stream(s) open",
        sockets.len(),
        config.transport
    ));
    control.expect(State::TestStart).await?;
    control.expect(State::TestRunning).await?;

    let stop = Arc::new(AtomicU8::new(RUN));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let started = Instant::now();
    let sending = !config.reverse;
    let job = |socket| StreamJob {
        socket,
        sending,
        bitrate: config.bitrate,
        block_len: parameters.block_len as usize,
        deadline: ctx.deadline,
    };
    let mut tallies = sockets
        .into_iter()
        .map(|socket| job(socket).spawn(Arc::clone(&stop)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            Failure::new(
                FailureReason::ServerError,
                format!("starting a stream thread: {err}"),
            )
        })?;
    control.wait_out(period).await?;
    let local_seconds = started.elapsed().as_secs_f64();
    let mut local = Vec::new();
    if sending {
        // Stop writing; each stream waits until the server's kernel has acknowledged its bytes.
        stop.store(STOP, Ordering::SeqCst);
        local = collect(tallies.drain(..)).await;
    }
    control.write(&[State::TestEnd.to_byte()]).await?;
    control.expect(State::ExchangeResults).await?;
    if !sending {
        // The server has stopped sending: take what is still in flight, then count.
        stop.store(STOP, Ordering::SeqCst);
        local = collect(tallies.drain(..)).await;
    }

    let ours = local_results(&ids, &local, sending, config.transport, local_seconds);
    control
        .write(&protocol::frame_json(&ours.to_json()))
        .await?;
    let theirs = Results::parse(&control.read_json().await?)?;
    for stream in &theirs.streams {
        if !ids.contains(&stream.id) {
            return Err(Failure::new(
                FailureReason::ProtocolError,
                format!(
                    "the server's results name stream {} we never opened",
                    stream.id
                ),
            ));
        }
    }
    control.expect(State::DisplayResults).await?;
    control.write(&[State::IperfDone.to_byte()]).await?;
    let _ = control.stream.shutdown().await;
    Ok(combine(&ours, &theirs, sending, config.transport))
}

/// Opens one data stream: TCP with the cookie, UDP with the connect handshake.
async fn open_stream(
    config: &Config,
    address: SocketAddr,
    cookie: &[u8; COOKIE_LEN],
) -> Result<DataSocket, Failure> {
    let failed = |err: std::io::Error| {
        Failure::new(
            FailureReason::ConnectFailed,
            format!("opening a data stream to {address}: {err}"),
        )
    };
    match config.transport {
        Transport::Tcp => {
            let mut stream = connect_tcp(address, config.bind, false)
                .await
                .map_err(failed)?;
            stream.write_all(cookie).await.map_err(failed)?;
            let stream = stream.into_std().map_err(failed)?;
            stream.set_nonblocking(false).map_err(failed)?;
            Ok(DataSocket::Tcp(stream))
        }
        Transport::Udp => {
            let local = SocketAddr::new(
                config.bind.unwrap_or(if address.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                }),
                0,
            );
            let socket = tokio::net::UdpSocket::bind(local).await.map_err(failed)?;
            socket.connect(address).await.map_err(failed)?;
            socket
                .send(&protocol::UDP_CONNECT_MSG)
                .await
                .map_err(failed)?;
            let mut reply = vec![0u8; 64 * 1024];
            // A reverse-mode server may already send data; allow a few datagrams.
            for _ in 0..4 {
                let len = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut reply))
                    .await
                    .map_err(|_| {
                        Failure::new(
                            FailureReason::ServerError,
                            "the server did not answer the UDP stream handshake",
                        )
                    })?
                    .map_err(failed)?;
                if protocol::is_udp_connect_reply(&reply[..len]) {
                    let socket = socket.into_std().map_err(failed)?;
                    socket.set_nonblocking(false).map_err(failed)?;
                    return Ok(DataSocket::Udp(socket));
                }
            }
            Err(Failure::new(
                FailureReason::ProtocolError,
                "the server's answer to the UDP stream handshake is not 6789",
            ))
        }
    }
}

//! The raw-socket plumbing both ping drivers share: opening a non-blocking socket with kernel
//! timestamping (optionally bound to an interface), attaching a classic BPF filter, sending a
//! packet tagged with a stamp key, and receiving a packet or an error-queue entry with its
//! control messages (the batched receive loop over these is [`super::receiver`]).

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use super::timestamps::{self, ControlMessages};

/// Control buffer size for received messages: timestamping (3 timespecs) and an extended error
/// with its offender address, with room to spare.
const CONTROL_LEN: usize = 256;

/// Opens a non-blocking socket of `family`, `kind`, `protocol` with `SO_TIMESTAMPING` set to
/// `stamp_flags`, bound to `interface` if given.
pub fn open(
    v6: bool,
    kind: i32,
    protocol: i32,
    stamp_flags: u32,
    interface: Option<&str>,
) -> io::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(
        fd,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        &(stamp_flags as libc::c_int),
    )?;
    // Many targets answer at once: room for bursts of replies, and the pacing of sends by the
    // receive side grows with it (`scheduler::room_in_receive_buffer`). Past
    // `net.core.rmem_max` where CAP_NET_ADMIN allows (the kernel doubles either value: 16 MiB,
    // 8 MiB at most otherwise).
    if set_option(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &(8 << 20 as libc::c_int),
    )
    .is_err()
    {
        set_option(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &(4 << 20 as libc::c_int),
        )?;
    }
    if let Some(interface) = interface {
        set_option_bytes(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_bytes(),
        )
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("binding to interface {interface:?}: {err}"),
            )
        })?;
    }
    Ok(socket)
}

/// The receive buffer of `fd` in bytes, as the kernel accounts it (`SO_RCVBUF` read back).
pub fn receive_buffer(fd: RawFd) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writing an int and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(value).unwrap_or(0))
}

/// Bytes queued for reading on `fd` (replies and error-queue entries, as the kernel charges
/// them) and its receive buffer, from `SO_MEMINFO`.
pub fn receive_memory(fd: RawFd) -> io::Result<(usize, usize)> {
    let mut info = [0u32; 16];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len are valid for writing `len` bytes and the length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        info[libc::SK_MEMINFO_RMEM_ALLOC as usize] as usize,
        info[libc::SK_MEMINFO_RCVBUF as usize] as usize,
    ))
}

/// setsockopt with a value of type `T`.
pub fn set_option<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points at size_of::<T>() readable bytes. A value holding a pointer (the
    // `sock_fprog` of [`attach_filter`]) is the caller's to keep valid during the call; an
    // invalid one makes the kernel fail the call with EFAULT, it never writes through it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the classic BPF `program` to `fd` (`SO_ATTACH_FILTER`): the kernel runs it on
/// every packet before queueing it and drops those it returns 0 for.
pub fn attach_filter(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the program (it copies it during the call).
        filter: program.as_ptr().cast_mut(),
    };
    // `program` outlives the call, so the pointer inside `fprog` is valid for `len` entries.
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

fn set_option_bytes(fd: RawFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: value is a valid slice for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Converts an address (and port) to a sockaddr for the kernel.
pub fn sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address in a sockaddr the kernel filled in.
pub fn address_of(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// Binds `fd` to `address`.
pub fn bind(fd: RawFd, address: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(address);
    // SAFETY: storage holds a valid sockaddr of len bytes.
    let rc = unsafe { libc::bind(fd, (&raw const storage).cast(), len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The local address of `fd`.
pub fn local_address(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed storage, filled by getsockname.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer.
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    address_of(&storage).ok_or_else(|| io::Error::other("getsockname: unknown address family"))
}

/// Sends packets on one socket, tagging each with a stamp key. The key of the n-th successful
/// send is n (counting from 0): passed explicitly with `SCM_TS_OPT_ID` where the kernel knows it
/// (6.13+), and equal to the kernel's own per-socket counter otherwise.
#[derive(Debug)]
pub struct StampedSender {
    explicit_keys: AtomicBool,
}

impl Default for StampedSender {
    fn default() -> Self {
        StampedSender {
            explicit_keys: AtomicBool::new(true),
        }
    }
}

impl StampedSender {
    /// Sends `packet` to `to` with stamp key `key`.
    pub fn send(&self, fd: RawFd, packet: &[u8], to: SocketAddr, key: u32) -> io::Result<()> {
        if self.explicit_keys() {
            match send_to(fd, packet, to, Some(key)) {
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => self.no_explicit_keys(),
                other => return other,
            }
        }
        send_to(fd, packet, to, None)
    }

    /// Whether sends carry their stamp key (`SCM_TS_OPT_ID`).
    pub fn explicit_keys(&self) -> bool {
        self.explicit_keys.load(Ordering::Relaxed)
    }

    /// The kernel refused `SCM_TS_OPT_ID` (EINVAL): sends go without it from now on.
    pub fn no_explicit_keys(&self) {
        log::info!(
            "ping: kernel without SCM_TS_OPT_ID; stamp keys follow the socket's send counter"
        );
        self.explicit_keys.store(false, Ordering::Relaxed);
    }
}

fn send_to(fd: RawFd, packet: &[u8], to: SocketAddr, key: Option<u32>) -> io::Result<()> {
    let (mut storage, len) = sockaddr(to);
    let mut control = [0u8; timestamps::cmsg_space(4)];
    let mut iov = libc::iovec {
        iov_base: packet.as_ptr() as *mut _,
        iov_len: packet.len(),
    };
    // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_name = (&raw mut storage).cast();
    message.msg_namelen = len;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if let Some(key) = key {
        let used = timestamps::write_cmsg(
            &mut control,
            libc::SOL_SOCKET,
            timestamps::SCM_TS_OPT_ID,
            &key.to_ne_bytes(),
        );
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = used as _;
    }
    // SAFETY: message describes valid buffers.
    let sent = unsafe { libc::sendmsg(fd, &message, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message read from a socket.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub from: Option<IpAddr>,
    pub control: ControlMessages,
}

/// Reads one message (`MSG_ERRQUEUE` if `error_queue`) into `buffer`; `Ok(None)` when there is
/// none (EAGAIN).
pub fn receive(fd: RawFd, buffer: &mut [u8], error_queue: bool) -> io::Result<Option<Received>> {
    // SAFETY: zeroed storage is valid; recvmsg fills it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; CONTROL_LEN / 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: zeroed msghdr is valid; the pointers below outlive the call.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_name = (&raw mut storage).cast();
    message.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = CONTROL_LEN as _;
    let flags = libc::MSG_DONTWAIT | if error_queue { libc::MSG_ERRQUEUE } else { 0 };
    // SAFETY: message describes valid, writable buffers.
    let len = unsafe { libc::recvmsg(fd, &mut message, flags) };
    if len < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(err),
        };
    }
    let control_len = (message.msg_controllen as usize).min(CONTROL_LEN);
    // SAFETY: the control buffer is CONTROL_LEN initialised bytes.
    let control_bytes =
        unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), control_len) };
    Ok(Some(Received {
        len: (len as usize).min(buffer.len()),
        from: (message.msg_namelen > 0)
            .then(|| address_of(&storage))
            .flatten()
            .map(|address| address.ip()),
        control: timestamps::parse_control(control_bytes),
    }))
}

/// The raw descriptor of an owned socket.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

//! Batched datagram IO for the ping drivers: `sendmmsg(2)` of up to [`BATCH`] probes in one
//! system call, each with its own destination and stamp-key control message, and
//! `recvmmsg(2)` of up to [`BATCH`] replies or error-queue entries (transmit stamps), each with
//! its source address and control messages, parsed by the pure
//! [`timestamps::parse_control`]. The buffers are owned by the batch and reused from call to
//! call: no allocation per packet. The `mmsghdr`/`iovec` arrays that point into them are built
//! on the stack for the duration of each call only, so a batch holds no raw pointer and can
//! live across `.await` in a `Send` task.
//!
//! The two calls are this module's only `unsafe`; everything that decides what to send or how
//! to read what came back is plain code with unit tests.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    os::fd::RawFd,
};

use super::{
    socket::{self, Received},
    timestamps,
};

/// Most messages per system call.
pub(crate) const BATCH: usize = 64;
/// Largest probe packet a [`SendBatch`] holds (an echo request is 16 bytes, a SYN 24).
pub(crate) const MAX_PACKET: usize = 64;
/// Room for the one control message of a send (the stamp key, `SCM_TS_OPT_ID`).
const SEND_CONTROL: usize = timestamps::cmsg_space(4);
/// Control buffer of one received message: timestamping (3 timespecs) and an extended error
/// with its offender address, with room to spare (as [`socket::receive`]).
pub(crate) const RECEIVE_CONTROL: usize = 256;

/// Probes to send in one `sendmmsg`, built by [`SendBatch::push`].
#[derive(Default)]
pub(crate) struct SendBatch {
    messages: Vec<Outgoing>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("messages", &self.messages.len())
            .finish()
    }
}

/// One datagram of a [`SendBatch`]: its bytes, its destination and its control message.
struct Outgoing {
    packet: [u8; MAX_PACKET],
    packet_len: usize,
    name: libc::sockaddr_storage,
    name_len: libc::socklen_t,
    control: [u8; SEND_CONTROL],
    control_len: usize,
}

impl SendBatch {
    /// Empties the batch (its buffers stay allocated).
    pub(crate) fn clear(&mut self) {
        self.messages.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.messages.len() == BATCH
    }

    /// Adds `packet` (at most [`MAX_PACKET`] bytes) to `to`, tagged with stamp key `key` if
    /// given (`SCM_TS_OPT_ID`). Panics if the batch is full or the packet too long (callers
    /// check [`Self::is_full`]; probe packets are fixed-size).
    pub(crate) fn push(&mut self, packet: &[u8], to: SocketAddr, key: Option<u32>) {
        assert!(!self.is_full() && packet.len() <= MAX_PACKET);
        let (name, name_len) = socket::sockaddr(to);
        let mut message = Outgoing {
            packet: [0; MAX_PACKET],
            packet_len: packet.len(),
            name,
            name_len,
            control: [0; SEND_CONTROL],
            control_len: 0,
        };
        message.packet[..packet.len()].copy_from_slice(packet);
        if let Some(key) = key {
            message.control_len = timestamps::write_cmsg(
                &mut message.control,
                libc::SOL_SOCKET,
                timestamps::SCM_TS_OPT_ID,
                &key.to_ne_bytes(),
            );
        }
        self.messages.push(message);
    }

    /// Sends the messages from index `from` on with one `sendmmsg`; returns how many left
    /// (at least one), or the error of the first one (the kernel stops at a failing message
    /// and reports it only if nothing was sent before it: call again from the first unsent one
    /// to learn its error).
    pub(crate) fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let messages = &mut self.messages[from..];
        if messages.is_empty() {
            return Ok(0);
        }
        // SAFETY: all-zero iovec and mmsghdr are valid values (null pointers, zero lengths).
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for ((message, iov), header) in messages.iter_mut().zip(&mut iovecs).zip(&mut headers) {
            iov.iov_base = message.packet.as_mut_ptr().cast();
            iov.iov_len = message.packet_len;
            let hdr = &mut header.msg_hdr;
            hdr.msg_name = (&raw mut message.name).cast();
            hdr.msg_namelen = message.name_len;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            if message.control_len > 0 {
                hdr.msg_control = message.control.as_mut_ptr().cast();
                hdr.msg_controllen = message.control_len as _;
            }
        }
        let count = messages.len().min(BATCH);
        // SAFETY: `headers[..count]` describe valid buffers (the batch's packets, addresses and
        // control messages, and the iovecs above), all of which outlive the call; the kernel
        // only reads them, and writes each header's `msg_len`.
        let sent = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count as _, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Buffers for one `recvmmsg` of up to [`BATCH`] messages, and what it read.
pub(crate) struct ReceiveBatch {
    buffer_len: usize,
    buffers: Vec<u8>,
    /// `u64` for the alignment the kernel's `cmsghdr`s need.
    controls: Vec<u64>,
    names: Vec<libc::sockaddr_storage>,
    /// Per message read: bytes, control bytes, address bytes.
    read: Vec<(usize, usize, libc::socklen_t)>,
}

impl std::fmt::Debug for ReceiveBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveBatch")
            .field("buffer_len", &self.buffer_len)
            .field("read", &self.read.len())
            .finish()
    }
}

impl ReceiveBatch {
    /// Room for [`BATCH`] messages of up to `buffer_len` bytes each (longer ones are cut).
    pub(crate) fn new(buffer_len: usize) -> Self {
        ReceiveBatch {
            buffer_len,
            buffers: vec![0; BATCH * buffer_len],
            controls: vec![0; BATCH * RECEIVE_CONTROL / 8],
            // SAFETY: all-zero is a valid sockaddr_storage.
            names: vec![unsafe { zeroed() }; BATCH],
            read: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to [`BATCH`] waiting messages (from the error queue if `error_queue`) without
    /// blocking; returns how many (0 when none waits).
    pub(crate) fn receive(&mut self, fd: RawFd, error_queue: bool) -> io::Result<usize> {
        self.read.clear();
        // SAFETY: all-zero iovec and mmsghdr are valid values.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let buffers = self.buffers.chunks_exact_mut(self.buffer_len);
        let controls = self.controls.chunks_exact_mut(RECEIVE_CONTROL / 8);
        for ((((buffer, control), name), iov), header) in buffers
            .zip(controls)
            .zip(&mut self.names)
            .zip(&mut iovecs)
            .zip(&mut headers)
        {
            iov.iov_base = buffer.as_mut_ptr().cast();
            iov.iov_len = buffer.len();
            let hdr = &mut header.msg_hdr;
            hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = RECEIVE_CONTROL as _;
        }
        let flags = libc::MSG_DONTWAIT | if error_queue { libc::MSG_ERRQUEUE } else { 0 };
        // SAFETY: every header describes writable buffers owned by `self` (data, control,
        // address) and an iovec above, all of which outlive the call; no timeout pointer.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as _,
                flags,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(0),
                _ => Err(err),
            };
        }
        for header in &headers[..count as usize] {
            // `msg_controllen` is a `usize` with glibc, a `u32` with musl.
            #[allow(clippy::unnecessary_cast)]
            self.read.push((
                header.msg_len as usize,
                header.msg_hdr.msg_controllen as usize,
                header.msg_hdr.msg_namelen,
            ));
        }
        Ok(self.read.len())
    }

    /// Messages the last [`Self::receive`] read.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.read.len()
    }

    /// The `index`-th message the last [`Self::receive`] read: its bytes (cut to the buffer)
    /// and what came with it.
    pub(crate) fn message(&self, index: usize) -> (&[u8], Received) {
        let (len, control_len, name_len) = self.read[index];
        let len = len.min(self.buffer_len);
        let bytes = &self.buffers[index * self.buffer_len..][..len];
        let control = &self.controls[index * RECEIVE_CONTROL / 8..][..RECEIVE_CONTROL / 8];
        (
            bytes,
            Received {
                len,
                from: source(&self.names[index], name_len),
                control: timestamps::parse_control(control_bytes(control, control_len)),
            },
        )
    }
}

/// The first `len` bytes (at most the buffer) of a control buffer.
fn control_bytes(control: &[u64], len: usize) -> &[u8] {
    let all = control.len() * 8;
    // SAFETY: a `[u64]` is `8 * len` initialised bytes, readable as `u8` (alignment 1).
    let raw = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), all) };
    &raw[..len.min(all)]
}

/// The source address of a message, if the kernel filled one in.
fn source(name: &libc::sockaddr_storage, name_len: libc::socklen_t) -> Option<IpAddr> {
    (name_len > 0)
        .then(|| socket::address_of(name))
        .flatten()
        .map(|address| address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::UdpSocket, os::fd::AsRawFd as _};

    #[test]
    fn a_pushed_message_carries_its_destination_and_stamp_key() {
        let mut batch = SendBatch::default();
        let to: SocketAddr = "10.1.2.3:0".parse().unwrap();
        batch.push(&[8, 0, 1, 2], to, Some(0xdead_beef));
        batch.push(&[9; 24], "[2001:db8::1]:0".parse().unwrap(), None);
        assert_eq!(batch.len(), 2);
        let first = &batch.messages[0];
        assert_eq!(&first.packet[..first.packet_len], &[8, 0, 1, 2]);
        assert_eq!(socket::address_of(&first.name), Some(to));
        let control = &first.control[..first.control_len];
        assert_eq!(control.len(), timestamps::cmsg_space(4));
        let header = size_of::<libc::cmsghdr>();
        assert_eq!(
            i32::from_ne_bytes(control[size_of::<usize>() + 4..header].try_into().unwrap()),
            timestamps::SCM_TS_OPT_ID
        );
        assert_eq!(&control[header..header + 4], &0xdead_beef_u32.to_ne_bytes());
        assert_eq!(batch.messages[1].control_len, 0);
        assert_eq!(batch.messages[1].packet_len, 24);
        batch.clear();
        assert_eq!(batch.len(), 0);
    }

    #[test]
    fn control_bytes_are_cut_to_what_the_kernel_wrote() {
        let control = [u64::from_ne_bytes([1, 2, 3, 4, 5, 6, 7, 8]), 0];
        assert_eq!(control_bytes(&control, 3), &[1, 2, 3]);
        assert_eq!(control_bytes(&control, 100).len(), 16);
        assert!(control_bytes(&control, 0).is_empty());
    }

    #[test]
    fn no_source_when_the_kernel_filled_none() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let empty: libc::sockaddr_storage = unsafe { zeroed() };
        assert_eq!(source(&empty, 0), None);
        let (name, len) = socket::sockaddr("192.0.2.7:9".parse().unwrap());
        assert_eq!(source(&name, len), Some("192.0.2.7".parse().unwrap()));
    }

    // Loopback only: a batch out through one UDP socket and back in through another.
    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_call_each() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let mut batch = SendBatch::default();
        for byte in 0..3u8 {
            batch.push(&[byte; 5], to, None);
        }
        assert_eq!(batch.send(sender.as_raw_fd(), 1).unwrap(), 2);
        assert_eq!(batch.send(sender.as_raw_fd(), 0).unwrap(), 3);
        let mut received = ReceiveBatch::new(4);
        assert_eq!(received.receive(receiver.as_raw_fd(), false).unwrap(), 5);
        let firsts: Vec<u8> = (0..received.len())
            .map(|index| received.message(index).0[0])
            .collect();
        assert_eq!(firsts, [1, 2, 0, 1, 2]);
        let (bytes, message) = received.message(0);
        // Cut to the 4-byte buffer.
        assert_eq!((bytes.len(), message.len), (4, 4));
        assert_eq!(message.from, Some(sender.local_addr().unwrap().ip()));
        assert_eq!(received.receive(receiver.as_raw_fd(), false).unwrap(), 0);
    }
}

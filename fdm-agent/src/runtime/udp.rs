//! The agent's UDP socket, built so that a flood of garbage cannot crowd out the heartbeats that
//! carry the verdicts.
//!
//! Anyone who can reach the port can send it datagrams, and every datagram costs the agent a
//! receive and (for a well-formed forgery) a MAC before it can be refused. Three things keep the
//! real heartbeats flowing while that happens:
//!
//! - a large receive buffer, so that a burst, or a moment when the event loop is busy, is queued
//!   rather than dropped by the kernel (which drops indiscriminately: real heartbeats with the
//!   garbage). The size the kernel actually granted is logged and exported;
//! - batched receive (`recvmmsg`, [`BATCH`] datagrams per system call): one wake-up drains many
//!   datagrams, which is what makes the per-datagram cost low enough to keep up;
//! - a bound per turn of the event loop ([`TURN_BUDGET`]), so that timers (the master's evaluation,
//!   our own heartbeats) and datastore completions still get their turn under a flood.
//!
//! The cheap checks that refuse garbage before the MAC (length, magic, version, cluster, recipient)
//! live in `wire::open`, which the core calls first thing; they are counted by reason there.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use anyhow::Context;
use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Receive buffer asked for. Linux books a datagram's whole buffer (about 2.3 KiB on loopback for a
/// 1200-byte datagram, under 1 KiB for a heartbeat) against it, so 8 MiB holds a few thousand
/// datagrams: tens of milliseconds of a flood of 100 000 per second, longer than any pause of the
/// event loop seen under one.
pub(super) const RECEIVE_BUFFER: usize = 8 << 20;

/// Datagrams per `recvmmsg` call.
pub(super) const BATCH: usize = 64;

/// Datagrams handled per turn of the event loop before timers, completions and signals are looked
/// at again. At about 1-3 us per datagram this is well under a millisecond: a timer is never late
/// by more than that because of the socket.
pub(super) const TURN_BUDGET: usize = 4 * BATCH;

/// Bytes per receive slot: larger than any valid datagram (`wire::MAX_DATAGRAM`), so that a longer
/// one arrives truncated but still longer than the limit, and is refused as oversized.
const SLOT: usize = 2048;

/// The bound socket and the receive buffer the kernel granted (bytes, as the kernel counts them).
pub(super) fn bind(bind: SocketAddr) -> anyhow::Result<(UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let granted = grow_receive_buffer(&s);
    let _ = s.set_send_buffer_size(1 << 20);
    if bind.is_ipv4() {
        // DSCP CS6 (network control): heartbeats ahead of bulk traffic where the network honours it.
        let _ = s.set_tos(0xc0);
    }
    s.set_nonblocking(true)?;
    s.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    Ok((UdpSocket::from_std(s.into())?, granted))
}

/// Ask for [`RECEIVE_BUFFER`]; the kernel caps the request at `net.core.rmem_max` unless the agent
/// may override it (CAP_NET_ADMIN, as root), and then tries that. Says what it got.
fn grow_receive_buffer(s: &socket2::Socket) -> usize {
    let _ = s.set_recv_buffer_size(RECEIVE_BUFFER);
    let mut granted = s.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the size asked for (half of it is its bookkeeping allowance).
    if granted < RECEIVE_BUFFER {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let want = libc::c_int::try_from(RECEIVE_BUFFER).unwrap_or(libc::c_int::MAX);
            // SAFETY: a valid socket, a c_int option value of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&want as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                granted = s.recv_buffer_size().unwrap_or(granted);
            }
        }
    }
    if granted < RECEIVE_BUFFER {
        tracing::warn!(
            asked_bytes = RECEIVE_BUFFER,
            granted_bytes = granted,
            "the kernel granted a smaller UDP receive buffer than asked for: a flood of datagrams at this port will make the kernel drop real heartbeats sooner; raise the sysctl net.core.rmem_max to at least the asked size"
        );
    } else {
        tracing::info!(granted_bytes = granted, "UDP receive buffer");
    }
    granted
}

/// Where batched receives land, allocated once.
pub(super) struct Receiver {
    slots: Vec<[u8; SLOT]>,
    lens: [usize; BATCH],
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receiver(..)")
    }
}

impl Receiver {
    pub(super) fn new() -> Self {
        Receiver {
            slots: vec![[0u8; SLOT]; BATCH],
            lens: [0; BATCH],
        }
    }

    /// Receive up to [`BATCH`] queued datagrams without waiting: how many arrived, 0 when none was
    /// queued (readiness is then cleared, so the event loop waits for the next one).
    pub(super) fn receive(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        match sock.try_io(tokio::io::Interest::READABLE, || self.receive_now(sock)) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Datagram `i` of the last batch.
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        match (self.slots.get(i), self.lens.get(i)) {
            (Some(s), Some(&n)) => &s[..n.min(SLOT)],
            _ => &[],
        }
    }

    #[cfg(target_os = "linux")]
    fn receive_now(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // The headers point into `self.slots`, which stays put for the call; they are rebuilt each
        // time rather than kept, so that nothing refers into the receiver between calls.
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((slot, v), h) in self
            .slots
            .iter_mut()
            .zip(iov.iter_mut())
            .zip(hdrs.iter_mut())
        {
            v.iov_base = slot.as_mut_ptr().cast();
            v.iov_len = SLOT;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs` holds BATCH headers, each with one iovec over a live SLOT-byte buffer; no
        // source address or control buffer is asked for; MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(r) else {
            return Err(io::Error::last_os_error());
        };
        let n = n.min(BATCH);
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(n) {
            // A truncated datagram was longer than any slot: pass the whole slot, which the core
            // refuses as oversized.
            *len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                SLOT
            } else {
                h.msg_len as usize
            };
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn receive_now(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let mut n = 0;
        while n < BATCH {
            match sock.try_recv_from(&mut self.slots[n]) {
                Ok((len, _)) => {
                    self.lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// The kernel's count of datagrams it dropped at this socket because the receive queue was full:
/// the agent did not keep up. Kept as a running total across the kernel counter's 32-bit wrap.
#[derive(Debug, Default)]
pub(super) struct KernelDrops {
    last: Option<u32>,
    pub(super) total: u64,
}

impl KernelDrops {
    /// Read the counter again (Linux `SO_MEMINFO`); stays put where it cannot be read.
    pub(super) fn refresh(&mut self, sock: &UdpSocket) {
        if let Some(now) = read_socket_drops(sock) {
            self.advance(now);
        }
    }

    fn advance(&mut self, now: u32) {
        if let Some(last) = self.last {
            self.total = self.total.saturating_add(u64::from(now.wrapping_sub(last)));
        }
        self.last = Some(now);
    }
}

#[cfg(target_os = "linux")]
fn read_socket_drops(sock: &UdpSocket) -> Option<u32> {
    use std::os::fd::AsRawFd;
    const VARS: usize = 16;
    let mut info = [0u32; VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: a valid socket; `info` is writable for `len` bytes and the kernel writes at most that.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let at = usize::try_from(libc::SK_MEMINFO_DROPS).ok()?;
    let filled = usize::try_from(len).ok()? / std::mem::size_of::<u32>();
    (r == 0 && at < filled).then(|| info[at])
}

#[cfg(not(target_os = "linux"))]
fn read_socket_drops(_sock: &UdpSocket) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_drained_and_truncation_is_oversized() {
        let (rx, granted) = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        assert!(granted > 0);
        let to = rx.local_addr().expect("local addr");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("sender");
        for i in 0..(BATCH + 3) {
            tx.send_to(&[i as u8; 10], to).expect("send");
        }
        tx.send_to(&[7u8; 3000], to).expect("send a long one");
        rx.readable().await.expect("readable");
        let mut r = Receiver::new();
        let mut got = Vec::new();
        for _ in 0..10 {
            let n = r.receive(&rx).expect("receive");
            for i in 0..n {
                got.push(r.datagram(i).to_vec());
            }
            if got.len() == BATCH + 4 {
                break;
            }
            if n == 0 {
                rx.readable().await.expect("readable");
            }
        }
        assert_eq!(got.len(), BATCH + 4);
        assert_eq!(got[0], vec![0u8; 10]);
        assert_eq!(got[BATCH + 2], vec![(BATCH + 2) as u8; 10]);
        assert!(got[BATCH + 3].len() > crate::wire::MAX_DATAGRAM);
        // Nothing left: an empty receive says so rather than waiting.
        assert_eq!(r.receive(&rx).expect("empty receive"), 0);
        let mut drops = KernelDrops::default();
        drops.refresh(&rx);
        drops.refresh(&rx);
        assert_eq!(drops.total, 0);
    }

    #[test]
    fn drop_counter_survives_the_wrap() {
        let mut d = KernelDrops {
            last: Some(u32::MAX - 1),
            total: 10,
        };
        d.advance(3);
        assert_eq!(d.total, 15);
        d.advance(3);
        assert_eq!(d.total, 15);
        // The first reading is the baseline, not drops.
        let mut fresh = KernelDrops::default();
        fresh.advance(1000);
        assert_eq!(fresh.total, 0);
    }
}

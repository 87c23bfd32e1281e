//! When a datagram reached the caller's socket, as the kernel stamped it (`SO_TIMESTAMPNS`),
//! not when the caller's task got round to reading it. Hundreds of callers share a few cores
//! with the worker they measure; a caller woken late would otherwise count its own delay as the
//! agent's frame arriving late. Where the kernel gives no stamp, the read time stands in (as
//! it does itself for the first moments after stamping is turned on).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{SockAddr, SockAddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to stamp every datagram `socket` receives. Returns whether it will.
pub fn enable(socket: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and an int-sized option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// One datagram into `buf`: its length, its source, and when it arrived.
pub async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
    socket.async_io(Interest::READABLE, || recv_now(socket, buf)).await
}

fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
    let mut addr = SockAddrStorage::zeroed();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is a valid "empty" value for recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut SockAddrStorage).cast();
    msg.msg_namelen = addr.size_of();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` refers to a live buffer of the length given beside it.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let read_at = Instant::now();
    // SAFETY: recvmsg wrote a socket address of `msg_namelen` bytes into the storage.
    let source = unsafe { SockAddr::new(addr, msg.msg_namelen) }.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from an address that is neither IPv4 nor IPv6"))?;
    let arrived = kernel_stamp(&msg).map_or(read_at, |stamp| arrival_instant(stamp, SystemTime::now(), read_at));
    Ok((n as usize, source, arrived))
}

/// The `SCM_TIMESTAMPNS` control message of a received `msg`, as wall-clock time.
fn kernel_stamp(msg: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: walking the control messages recvmsg filled in, with the libc macros made for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// The monotonic instant of a wall-clock `stamp`, read `read_at` (wall clock `wall_now` then).
/// A stamp from the future (the wall clock stepped back) counts as arriving when read.
fn arrival_instant(stamp: SystemTime, wall_now: SystemTime, read_at: Instant) -> Instant {
    let waited = wall_now.duration_since(stamp).unwrap_or(Duration::ZERO);
    read_at.checked_sub(waited).unwrap_or(read_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram that waited in the socket is stamped when it arrived, not when it was read.
    #[tokio::test]
    async fn a_datagram_read_late_keeps_the_time_it_arrived() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(enable(&rx), "loopback sockets take SO_TIMESTAMPNS");
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Linux turns receive stamping on for the whole stack in deferred work; a datagram
        // that arrives before that is stamped when read. Calls last far longer than this.
        std::thread::sleep(Duration::from_millis(100));
        let sent = Instant::now();
        tx.send_to(b"frame", rx.local_addr().unwrap()).await.unwrap();
        std::thread::sleep(Duration::from_millis(80)); // the caller's task is busy elsewhere
        let mut buf = [0u8; 64];
        let (n, from, arrived) = recv(&rx, &mut buf).await.unwrap();
        let read = Instant::now();
        assert_eq!((&buf[..n], from), (&b"frame"[..], tx.local_addr().unwrap()));
        assert!(arrived >= sent.checked_sub(Duration::from_millis(5)).unwrap(), "stamped before it was sent");
        assert!(read.duration_since(arrived) >= Duration::from_millis(70), "stamped {:?} before the read, not ~80 ms", read.duration_since(arrived));
    }

    #[test]
    fn wall_clock_stamps_become_instants_and_a_future_stamp_is_the_read_time() {
        let (wall, read) = (SystemTime::now(), Instant::now());
        assert_eq!(arrival_instant(wall - Duration::from_millis(30), wall, read), read - Duration::from_millis(30));
        assert_eq!(arrival_instant(wall + Duration::from_secs(1), wall, read), read);
    }

    #[tokio::test]
    async fn ipv6_sources_are_read_too() {
        let Ok(rx) = UdpSocket::bind("[::1]:0").await else { return }; // no IPv6 loopback here
        enable(&rx);
        let tx = UdpSocket::bind("[::1]:0").await.unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 8];
        let (_, from, _) = recv(&rx, &mut buf).await.unwrap();
        assert_eq!(from, tx.local_addr().unwrap());
    }
}

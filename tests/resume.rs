//! The resume window of the Redis path: between the reply (which posts the resume event)
//! and the resume itself, a write event on the client connection runs the request's
//! phases. The access handler must still answer "suspended" then; otherwise the phases
//! run twice (two responses, or an alert) and the request's reference count goes wrong.
//!
//! The window is opened deterministically: both workers are stopped (SIGSTOP) while the
//! Redis reply and a client byte arrive, so that the next `epoll_wait` returns the Redis
//! socket first and the client socket second, in one batch. The client connection has a
//! registered write event because its first response filled the socket (small receive
//! buffer), which is how a keepalive connection looks after any large response.

mod common;

use common::*;
use std::fs;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Bigger than any socket buffer pair on loopback (client receive buffer pinned at 4 KiB,
/// server send buffer autotuned to at most `tcp_wmem[2]`, 4 MiB by default), so that the
/// first response must wait for the client (EAGAIN), which registers the write event.
const BIG: usize = 8 << 20;

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a process this test started (directly or through nginx).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Whether an established TCP socket matching (local port, remote port) has unread bytes.
fn unread(matches: impl Fn(u16, u16) -> bool) -> bool {
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        let (Some(local), Some(remote)) =
            (f.get(1).and_then(|a| port(a)), f.get(2).and_then(|a| port(a)))
        else {
            return false;
        };
        let established = f.get(3) == Some(&"01");
        let rx = f
            .get(4)
            .and_then(|q| q.split(':').nth(1))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        established && rx > 0 && matches(local, remote)
    })
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {UA}\r\n\r\n").into_bytes()
}

#[test]
fn a_write_event_between_reply_and_resume_does_not_run_the_phases_twice() {
    let redis = Redis::start();
    let http = default_http(&format!("sessions_redis redis://127.0.0.1:{};", redis.port));
    let mut ng = Nginx::start(&site(&http, ""));
    fs::write(ng.prefix.path.join("html/big.txt"), vec![b'x'; BIG]).unwrap();

    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&SocketAddr::from(([127, 0, 0, 1], ng.port)).into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);

    // 1. A response larger than the socket buffers: NGINX meets EAGAIN and registers the
    //    connection's write event, which stays registered for the next requests.
    out.write_all(&request("/big.txt")).unwrap();
    let r = read_response(&mut input, false).unwrap();
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body.len(), BIG);

    // 2. The next request waits on a stopped Redis.
    signal(redis.pid(), libc::SIGSTOP);
    out.write_all(&request("/")).unwrap();
    wait_for("the command to reach Redis", || unread(|local, _| local == redis.port));

    // 3. Workers stopped: the reply, then a client byte, arrive in that order.
    let workers = ng.worker_pids();
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        signal(w, libc::SIGSTOP);
    }
    signal(redis.pid(), libc::SIGCONT);
    wait_for("the reply to reach NGINX", || unread(|_, remote| remote == redis.port));
    // A bare CRLF: NGINX skips it before the next request line.
    out.write_all(b"\r\n").unwrap();
    let port = ng.port;
    wait_for("the client byte to reach NGINX", || unread(|local, _| local == port));
    for &w in &workers {
        signal(w, libc::SIGCONT);
    }

    // 4. Exactly one response to the suspended request, then the connection serves the
    //    next request normally.
    let r = read_response(&mut input, false).unwrap();
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("X-Status"), Some("new"), "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    assert_eq!(r.body_str(), "ok\n", "{r}");
    out.write_all(&request("/ret")).unwrap();
    let r = read_response(&mut input, false).unwrap();
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body_str(), "ret\n", "{r}");

    drop((out, input));
    ng.stop();
}

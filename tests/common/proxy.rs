//! A TCP delay line of our own, between a mount and sshd: holds every chunk a fixed delay in each
//! direction, so the round trip gains twice that; bandwidth is not limited. Only loopback.
//! Shared by the integration tests (in-process) and `examples/latency_proxy.rs` (benchmarks).
//!
//! The tests also break the link through its [`Link`]: cut every connection, black-hole them
//! (nothing delivered either way, no FIN: a suspended laptop, a dead Wi-Fi), refuse new ones.
//!
//! Plain threads and blocking sockets, two per direction: an async runtime busy with the data
//! fires its timers late, which would add delay nobody asked for.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// What a test can do to the link while it runs.
#[derive(Default)]
pub struct Link {
    /// Both ends of every connection made so far, to cut them.
    connections: Mutex<Vec<(TcpStream, TcpStream)>>,
    black_hole: AtomicBool,
    refuse: AtomicBool,
}

impl Link {
    /// Ends every connection now, on both sides (each side sees its connection end), and lets
    /// new ones through.
    pub fn cut(&self) {
        for (client, server) in self.connections.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// While on, nothing is delivered either way and nothing is closed: the connections stay
    /// open, silent. Off: what was held goes on.
    pub fn black_hole(&self, on: bool) {
        self.black_hole.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    fn hold_while_black_holed(&self) {
        while self.black_hole.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Listens on 127.0.0.1:`listen_port` (0: any free port) and forwards each connection to
/// 127.0.0.1:`target_port` with `delay` each way. Returns the port it listens on; the proxy runs
/// on threads until the process ends.
pub fn start(listen_port: u16, target_port: u16, delay: Duration) -> std::io::Result<u16> {
    start_with_link(listen_port, target_port, delay).map(|(port, _)| port)
}

/// [`start`], with the [`Link`] that breaks it.
pub fn start_with_link(
    listen_port: u16,
    target_port: u16,
    delay: Duration,
) -> std::io::Result<(u16, Arc<Link>)> {
    let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
    let port = listener.local_addr()?.port();
    let link = Arc::new(Link::default());
    let served = link.clone();
    thread::spawn(move || serve_link(listener, target_port, delay, served));
    Ok((port, link))
}

/// Accepts and forwards until the listener fails.
pub fn serve(listener: TcpListener, target_port: u16, delay: Duration) {
    serve_link(listener, target_port, delay, Arc::default())
}

fn serve_link(listener: TcpListener, target_port: u16, delay: Duration, link: Arc<Link>) {
    for client in listener.incoming().flatten() {
        if link.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            link.connections.lock().unwrap().push((c, s));
        }
        delay_line(client, server2, delay, link.clone());
        delay_line(server, client2, delay, link.clone());
    }
}

fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration, link: Arc<Link>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reading = link.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // Black-holed: nothing is read either, so the sender's buffers fill as they would.
            reading.hold_while_black_holed();
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            link.hold_while_black_holed();
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

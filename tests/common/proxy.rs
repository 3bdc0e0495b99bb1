//! A TCP delay line of our own, between a mount and sshd: holds every chunk a fixed delay in each
//! direction, so the round trip gains twice that; bandwidth is not limited. Only loopback.
//! Shared by the integration tests (in-process) and `examples/latency_proxy.rs` (benchmarks).
//!
//! Plain threads and blocking sockets, two per direction: an async runtime busy with the data
//! fires its timers late, which would add delay nobody asked for.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Listens on 127.0.0.1:`listen_port` (0: any free port) and forwards each connection to
/// 127.0.0.1:`target_port` with `delay` each way. Returns the port it listens on; the proxy runs
/// on threads until the process ends.
pub fn start(listen_port: u16, target_port: u16, delay: Duration) -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || serve(listener, target_port, delay));
    Ok(port)
}

/// Accepts and forwards until the listener fails.
pub fn serve(listener: TcpListener, target_port: u16, delay: Duration) {
    for client in listener.incoming().flatten() {
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        delay_line(client, server2, delay);
        delay_line(server, client2, delay);
    }
}

fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
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
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

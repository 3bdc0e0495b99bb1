//! A TCP delay line for benchmarks and tests: `latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS`
//! accepts on 127.0.0.1:LISTEN_PORT and forwards each connection to 127.0.0.1:TARGET_PORT, holding
//! every chunk DELAY_MS in each direction (so the round trip gains twice that). Bandwidth is not
//! limited: the far side's windows, not the proxy, decide how much is in flight. Only loopback.
//!
//! Plain threads and blocking sockets, two per direction: an async runtime busy with the data
//! fires its timers late, which would add delay the benchmark did not ask for.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS";
    let [_, listen, target, delay] = &args[..] else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(listen), Ok(target), Ok(delay)) = (
        listen.parse::<u16>(),
        target.parse::<u16>(),
        delay.parse::<u64>(),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay);
    let listener = TcpListener::bind(("127.0.0.1", listen)).unwrap_or_else(|e| {
        eprintln!("latency_proxy: cannot listen on 127.0.0.1:{listen}: {e}");
        std::process::exit(1)
    });
    for client in listener.incoming().flatten() {
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
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

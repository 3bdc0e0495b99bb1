//! A TCP delay line for benchmarks and tests: `latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS`
//! accepts on 127.0.0.1:LISTEN_PORT and forwards each connection to 127.0.0.1:TARGET_PORT, holding
//! every chunk DELAY_MS in each direction (so the round trip gains twice that). Bandwidth is not
//! limited: the far side's windows, not the proxy, decide how much is in flight. Only loopback.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
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
    let listener = TcpListener::bind(("127.0.0.1", listen))
        .await
        .unwrap_or_else(|e| {
            eprintln!("latency_proxy: cannot listen on 127.0.0.1:{listen}: {e}");
            std::process::exit(1)
        });
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delay_line(cr, sw, delay));
            tokio::spawn(delay_line(sr, cw, delay));
        });
    }
}

async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
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
    drop(tx);
    let _ = writer.await;
}

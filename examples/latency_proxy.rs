//! `latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS`: the tests' delay line as a program, for
//! scripts/bench. Accepts on 127.0.0.1:LISTEN_PORT, forwards to 127.0.0.1:TARGET_PORT, holding
//! every chunk DELAY_MS in each direction.

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::net::TcpListener;
use std::time::Duration;

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
    let listener = TcpListener::bind(("127.0.0.1", listen)).unwrap_or_else(|e| {
        eprintln!("latency_proxy: cannot listen on 127.0.0.1:{listen}: {e}");
        std::process::exit(1)
    });
    proxy::serve(listener, target, Duration::from_millis(delay));
}

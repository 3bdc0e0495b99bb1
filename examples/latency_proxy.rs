//! `latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS`: the tests' delay line as a program, for
//! scripts/bench. Accepts on 127.0.0.1:LISTEN_PORT, forwards to 127.0.0.1:TARGET_PORT, holding
//! every chunk DELAY_MS in each direction. Lines on its standard input break the link, for the
//! benchmark's fault case: `cut` (end every connection), `refuse` / `allow` (new connections),
//! `black-hole` / `restore`.

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::io::BufRead;
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
    let (_, link) = proxy::start_with_link(listen, target, Duration::from_millis(delay))
        .unwrap_or_else(|e| {
            eprintln!("latency_proxy: cannot listen on 127.0.0.1:{listen}: {e}");
            std::process::exit(1)
        });
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("cut") => link.cut(),
            Ok("refuse") => link.refuse(true),
            Ok("allow") => link.refuse(false),
            Ok("black-hole") => link.black_hole(true),
            Ok("restore") => link.black_hole(false),
            Ok(other) => eprintln!("latency_proxy: unknown command {other:?}"),
            Err(_) => break,
        }
    }
    // Standard input closed: serve until killed.
    loop {
        std::thread::park();
    }
}

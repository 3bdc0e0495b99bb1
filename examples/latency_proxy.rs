//! `latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS [RATE_MBIT]`: the tests' delay line as a
//! program, for scripts/bench. Accepts on 127.0.0.1:LISTEN_PORT, forwards to
//! 127.0.0.1:TARGET_PORT, holding every chunk DELAY_MS in each direction; with RATE_MBIT, each
//! direction carries at most that many megabits a second, behind a queue of 50 ms. Lines on its standard input break the link, for the
//! benchmark's fault case: `cut` (end every connection), `refuse` / `allow` (new connections),
//! `black-hole` / `restore`.

#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::io::BufRead;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: latency_proxy LISTEN_PORT TARGET_PORT DELAY_MS [RATE_MBIT]";
    let (listen, target, delay, rate) = match &args[1..] {
        [listen, target, delay] => (listen, target, delay, None),
        [listen, target, delay, rate] => (listen, target, delay, Some(rate)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let (Ok(listen), Ok(target), Ok(delay), Ok(rate)) = (
        listen.parse::<u16>(),
        target.parse::<u16>(),
        delay.parse::<u64>(),
        rate.map(|r| r.parse::<f64>()).transpose(),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay);
    let shape = match rate {
        Some(mbit) => proxy::Shape::rate_limited(delay, mbit),
        None => proxy::Shape::delay(delay),
    };
    let (_, link) = proxy::start_shaped(listen, target, shape).unwrap_or_else(|e| {
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

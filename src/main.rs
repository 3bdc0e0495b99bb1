//! The binary's edge: parse the command line, check the mount point, go to the background
//! (before any thread starts), run the mount, and turn every failure into one line and exit 1.

use std::process::ExitCode;

use sftpmount::mount;
use sftpmount::options::{self, Parsed};

fn main() -> ExitCode {
    let opts = match options::parse(std::env::args_os()) {
        Ok(Parsed::Mount(opts)) => *opts,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("sftpmount: {msg}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(opts.debug);
    let mountpoint = match mount::check_local(&opts.mountpoint) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sftpmount: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ready = if opts.foreground {
        None
    } else {
        match mount::daemonize() {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                eprintln!("sftpmount: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    match mount::run(opts, mountpoint, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sftpmount: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(debug: bool) {
    let default = if debug {
        "sftpmount=debug,info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SFTPMOUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

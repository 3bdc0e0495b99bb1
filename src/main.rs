//! The binary's edge: parse the command line, check the mount point, go to the background
//! (before any thread starts), run the mount, and turn every failure into one line and exit 1.

use std::process::ExitCode;

use sftpmount::mount;
use sftpmount::options::{self, Parsed};

fn main() -> ExitCode {
    let mut opts = match options::parse(std::env::args_os()) {
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
    if let Err(e) = init_logging(opts.debug, opts.logfile.as_deref()) {
        eprintln!("sftpmount: {e:#}");
        return ExitCode::FAILURE;
    }
    if mount::started_by_mount8() {
        opts.drop_suid_dev();
    }
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

/// Logs to stderr, or to `logfile` (opened here, before going to the background, so that a
/// relative path means what the user meant).
fn init_logging(debug: bool, logfile: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let default = if debug {
        "sftpmount=debug,info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SFTPMOUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

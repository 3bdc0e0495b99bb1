//! The binary's edge: parse the command line, check the mount point, go to the background
//! (before any thread starts), run the mount, and turn every failure into one line and exit 1.

use std::process::ExitCode;

use sftpmount::logging::{self, Destination, Logging};
use sftpmount::mount;
use sftpmount::options::{self, Parsed};

fn main() -> ExitCode {
    // In the background stderr goes nowhere: a panic of a task (a bug) reaches the log too.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("internal error, please report it: {info}");
        default_hook(info);
    }));
    // Secrets live in this process (a password, decrypted keys, kept for reconnections): no
    // core dump holds them, and no other process of the same user may ptrace it or read its
    // memory, as ssh-agent does.
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).is_some_and(|a| a == "status") {
        return match sftpmount::status::command(&args[2..]) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("sftpmount status: {msg}");
                ExitCode::FAILURE
            }
        };
    }
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
    let logging = Logging {
        debug: opts.debug,
        requests: opts.debug || opts.debug_requests,
    };
    let destination = match (&opts.logfile, opts.foreground) {
        (Some(file), _) => Destination::File(file),
        (None, true) => Destination::Stderr,
        (None, false) => Destination::Daemon,
    };
    if let Err(e) = logging::init(logging, destination, &opts.mountpoint) {
        eprintln!("sftpmount: {e}");
        return ExitCode::FAILURE;
    }
    if mount::started_by_mount8() {
        opts.drop_suid_dev();
    }
    for note in &opts.notes {
        eprintln!("sftpmount: note: {note}");
    }
    let mountpoint = match mount::check_local(&opts.mountpoint) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sftpmount: {}", mount::one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let ready = if opts.foreground {
        None
    } else {
        match mount::daemonize() {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                eprintln!("sftpmount: {}", mount::one_line(&e));
                return ExitCode::FAILURE;
            }
        }
    };
    match mount::run(opts, mountpoint, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sftpmount: {}", mount::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

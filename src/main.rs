//! The binary's edge: parse the command line, check the mount point, go to the background
//! (before any thread starts), run the mount, and turn every failure into one line and exit 1.

use std::process::ExitCode;

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
    let to_syslog = !opts.foreground && opts.logfile.is_none();
    let logging = Logging {
        debug: opts.debug,
        requests: opts.debug || opts.debug_requests,
    };
    if let Err(e) = init_logging(logging, opts.logfile.as_deref(), to_syslog) {
        eprintln!("sftpmount: {}", mount::one_line(&e));
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

/// Logs to stderr, or to `logfile` (opened here, before going to the background, so that a
/// relative path means what the user meant), or, in the background without a logfile, to
/// syslog (the systemd journal reads it): a lost connection must be told somewhere.
/// What is logged besides warnings and errors.
#[derive(Clone, Copy)]
struct Logging {
    /// `-d`: sftpmount's debug lines (connecting, authenticating, reconnections, ...).
    debug: bool,
    /// `-d` or `sshfs_debug`: a line per SFTP request, with its answer and its latency.
    requests: bool,
}

fn init_logging(
    logging: Logging,
    logfile: Option<&std::path::Path>,
    to_syslog: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // fuser warns when it cannot unmount what the user already unmounted (every clean
    // foreground `umount`): not worth a line.
    let mut default = if logging.debug {
        "sftpmount=debug,info,fuser::session=error".to_string()
    } else {
        "warn,fuser::session=error".to_string()
    };
    default.push_str(if logging.requests {
        ",sftpmount::requests=debug"
    } else {
        ",sftpmount::requests=off"
    });
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
        None if to_syslog => {
            // SAFETY: openlog with a static identity string.
            unsafe { libc::openlog(c"sftpmount".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(SyslogLine::default)
                .init();
        }
        None => {
            use std::io::IsTerminal;
            // Colour only for a person at a terminal, never into a file or a pipe.
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    Ok(())
}

/// One formatted log event, sent to syslog when dropped, with the priority its level names.
#[derive(Default)]
struct SyslogLine(Vec<u8>);

impl std::io::Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let level = text.split_whitespace().next().unwrap_or("");
        // The refusal itself goes to the terminal through the ready pipe, as one line; only
        // warnings are repeated there, while there is someone to read them.
        if level == "WARN" && mount::STARTING.load(std::sync::atomic::Ordering::Relaxed) {
            let message = text.trim_start()[level.len()..].trim_start();
            eprintln!("sftpmount: warning: {message}");
        }
        let priority = match level {
            "ERROR" => libc::LOG_ERR,
            "WARN" => libc::LOG_WARNING,
            "INFO" => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        let Ok(message) = std::ffi::CString::new(text.replace('\0', " ")) else {
            return;
        };
        // SAFETY: a "%s" format with one valid C string.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), message.as_ptr()) };
    }
}

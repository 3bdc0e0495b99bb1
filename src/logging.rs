//! Where the daemon's log goes: stderr in the foreground, the file `logfile=` names, else syslog
//! (the systemd journal reads it) or, where there is no syslog (containers, minimal systems), a
//! file in the user's state directory, said at mount. Warnings logged while a background mount
//! starts are shown on the terminal once it is up. Lines that may mix with other mounts' name their mount point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// What is logged besides warnings and errors.
#[derive(Clone, Copy)]
pub struct Logging {
    /// `-d`: sftpmount's debug lines (connecting, authenticating, reconnections, ...).
    pub debug: bool,
    /// `-d` or `sshfs_debug`: a line per SFTP request, with its answer and its latency.
    pub requests: bool,
}

/// Where the log goes.
pub enum Destination<'a> {
    /// The foreground: a person or a pipe is reading.
    Stderr,
    /// `logfile=PATH`.
    File(&'a Path),
    /// The background without a logfile.
    Daemon,
}

/// Whether the daemon's stderr is still where the mount was started from.
static STARTING: AtomicBool = AtomicBool::new(true);

/// Where a background daemon's lines go, and the mount point they name.
static SINK: OnceLock<(Sink, String)> = OnceLock::new();

enum Sink {
    Syslog,
    File(Mutex<std::fs::File>),
}

/// The note to give at mount when the log is not where the user would look (syslog missing).
static WHERE_NOTE: OnceLock<String> = OnceLock::new();

/// Warnings logged while the mount was starting in the background: shown on the terminal once
/// it is up (a refusal stays one line; the log has them either way).
static START_WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The mount is ready and stderr is about to go: from now on the log alone is read.
pub fn detached() {
    STARTING.store(false, Ordering::Relaxed);
}

/// What to tell the terminal once the mount is up: the warnings logged while it started, and
/// where the log goes when that is somewhere unexpected.
pub fn said_at_mount() -> Vec<String> {
    let mut lines: Vec<String> = std::mem::take(&mut *START_WARNINGS.lock().unwrap())
        .into_iter()
        .map(|w| format!("warning: {w}"))
        .collect();
    lines.extend(WHERE_NOTE.get().map(|n| format!("note: {n}")));
    lines
}

/// The log file used when there is no syslog: `$XDG_STATE_HOME/sftpmount/log`, else
/// `~/.local/state/sftpmount/log`.
fn state_log_path() -> Option<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(state.join("sftpmount/log"))
}

/// A log past this size is moved to `log.old` when a mount starts: the file stays bounded.
const STATE_LOG_LIMIT: u64 = 10 << 20;

fn open_state_log() -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = state_log_path()
        .ok_or_else(|| std::io::Error::other("neither XDG_STATE_HOME nor HOME is set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > STATE_LOG_LIMIT) {
        let _ = std::fs::rename(&path, path.with_extension("old"));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    Ok((path, file))
}

/// Whether a syslog daemon listens (libc's syslog drops lines silently when none does).
fn syslog_listens() -> bool {
    std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect("/dev/log").is_ok())
        || std::os::unix::net::UnixStream::connect("/dev/log").is_ok()
}

pub fn init(logging: Logging, destination: Destination, mountpoint: &Path) -> Result<(), String> {
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
    let label = std::env::current_dir()
        .map(|cwd| cwd.join(mountpoint))
        .unwrap_or_else(|_| mountpoint.to_path_buf())
        .display()
        .to_string();
    match destination {
        Destination::Stderr => {
            use std::io::IsTerminal;
            // Colour only for a person at a terminal, never into a file or a pipe.
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
            return Ok(());
        }
        Destination::File(path) => {
            // Opened here, before going to the background, so that a relative path means what
            // the user meant.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            let _ = SINK.set((Sink::File(Mutex::new(file)), label));
            builder
                .with_ansi(false)
                .with_writer(LogLine::default)
                .init();
        }
        Destination::Daemon if syslog_listens() => {
            // SAFETY: openlog with a static identity string.
            unsafe { libc::openlog(c"sftpmount".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            let _ = SINK.set((Sink::Syslog, label));
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(LogLine::default)
                .init();
        }
        Destination::Daemon => {
            let (path, file) = open_state_log().map_err(|e| {
                format!(
                    "no syslog here (/dev/log), and no log file in the state directory: {e}; \
                     give one with -o logfile=PATH"
                )
            })?;
            let _ = WHERE_NOTE.set(format!(
                "no syslog here (/dev/log): this mount logs to {}",
                path.display()
            ));
            let _ = SINK.set((Sink::File(Mutex::new(file)), label));
            builder
                .with_ansi(false)
                .with_writer(LogLine::default)
                .init();
        }
    }
    Ok(())
}

/// One formatted log event, written whole when dropped: to syslog with the priority its level
/// names, or to a file, with the mount point after the level; while the mount is starting, a
/// warning is kept for the terminal too.
#[derive(Default)]
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];

impl Drop for LogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let Some((sink, label)) = SINK.get() else {
            return;
        };
        // `[TIME] LEVEL message`: the level is the first word that is one.
        let Some((at, level)) = text
            .match_indices(|c: char| c.is_ascii_uppercase())
            .find_map(|(i, _)| {
                LEVELS
                    .iter()
                    .find(|l| text[i..].starts_with(**l))
                    .map(|l| (i, *l))
            })
        else {
            return;
        };
        let message = text[at + level.len()..].trim_start();
        if level == "WARN" && STARTING.load(Ordering::Relaxed) {
            START_WARNINGS.lock().unwrap().push(message.to_string());
        }
        let line = format!("{}{level} {label}: {message}", &text[..at]);
        match sink {
            Sink::File(file) => {
                let _ = writeln!(file.lock().unwrap(), "{line}");
            }
            Sink::Syslog => {
                let priority = match level {
                    "ERROR" => libc::LOG_ERR,
                    "WARN" => libc::LOG_WARNING,
                    "INFO" => libc::LOG_INFO,
                    _ => libc::LOG_DEBUG,
                };
                let Ok(message) = std::ffi::CString::new(line.replace('\0', " ")) else {
                    return;
                };
                // SAFETY: a "%s" format with one valid C string.
                unsafe { libc::syslog(priority, c"%s".as_ptr(), message.as_ptr()) };
            }
        }
    }
}

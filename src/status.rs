//! `sftpmount status [MOUNTPOINT]`: each mount's daemon answers on a Unix socket in a directory
//! only its user may enter (/run/sftpmount for root, /run/user/UID/sftpmount or
//! /tmp/sftpmount-UID for others), and answers only its user and root (the peer's credentials
//! are checked as well). The report is text the daemon writes; the command prints it.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::fs::Core;
use crate::remote::LinkPhase;

/// The directory of this user's status sockets, made (0700) if missing; refused when someone
/// else could have made it or may enter it.
pub fn socket_dir(create: bool) -> std::io::Result<PathBuf> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = if uid == 0 {
        PathBuf::from("/run/sftpmount")
    } else {
        let runtime = PathBuf::from(format!("/run/user/{uid}"));
        match std::fs::metadata(&runtime) {
            Ok(m) if m.is_dir() && m.uid() == uid => runtime.join("sftpmount"),
            _ => PathBuf::from(format!("/tmp/sftpmount-{uid}")),
        }
    };
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of uid {uid} that only it may enter",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The daemon's side: answers status requests until dropped, then removes its socket.
pub struct StatusServer {
    path: PathBuf,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the report says besides the core's state.
pub struct MountIdentity {
    pub mountpoint: PathBuf,
    pub source: String,
}

/// Starts answering on `<socket_dir>/<pid>.sock`. A failure costs the status, not the mount.
pub fn serve(core: Arc<Core>, identity: MountIdentity) -> Option<StatusServer> {
    let dir = match socket_dir(true) {
        Ok(dir) => dir,
        Err(e) => {
            warn!("sftpmount status will not see this mount: {e}");
            return None;
        }
    };
    let path = dir.join(format!("{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                "sftpmount status will not see this mount: {}: {e}",
                path.display()
            );
            return None;
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let rates = Arc::new(Mutex::new(Rates::default()));
    let sampler = tokio::spawn(sample(rates.clone()));
    let answerer = tokio::spawn(async move {
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                // Out of descriptors, say: the mount matters more than its status.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let peer = stream.peer_cred().map(|c| c.uid()).ok();
            let answer = match peer {
                Some(uid) if uid == owner || uid == 0 => report(&core, &identity, &rates),
                Some(uid) => {
                    debug!("status asked by uid {uid}: refused");
                    format!("refused: this mount belongs to uid {owner}\n")
                }
                None => "refused: the asker's credentials are unknown\n".to_string(),
            };
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    Some(StatusServer {
        path,
        tasks: [sampler, answerer],
    })
}

/// The transfer counters over the last few seconds, for the throughput.
#[derive(Default)]
struct Rates {
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
}

const RATE_WINDOW: usize = 5;

async fn sample(rates: Arc<Mutex<Rates>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut r = rates.lock().unwrap();
        r.samples.push_back((
            Instant::now(),
            crate::sftp::traffic::written(),
            crate::sftp::traffic::read(),
        ));
        while r.samples.len() > RATE_WINDOW + 1 {
            r.samples.pop_front();
        }
    }
}

fn report(core: &Core, identity: &MountIdentity, rates: &Mutex<Rates>) -> String {
    let files = core.files_status();
    let (written, read) = (
        crate::sftp::traffic::written(),
        crate::sftp::traffic::read(),
    );
    let link = core.link_state();
    let history = format!(
        "{}, {}",
        count(link.reconnections, "reconnection"),
        count(link.failed_attempts, "failed attempt")
    );
    let state = match &link.phase {
        LinkPhase::Connected { since } => {
            format!("connected for {} ({history})", duration(since.elapsed()))
        }
        LinkPhase::Reconnecting { since } => {
            format!("reconnecting for {} ({history})", duration(since.elapsed()))
        }
        LinkPhase::Down { why } => format!("down for good: {why} ({history})"),
    };
    let (up, down) = {
        let r = rates.lock().unwrap();
        match (r.samples.front(), r.samples.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = (last.0 - first.0).as_secs_f64();
                (
                    (last.1 - first.1) as f64 / secs,
                    (last.2 - first.2) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    };
    let errors = if files.files_with_errors == 0 {
        "none".to_string()
    } else {
        format!(
            "{} open files have a write failure their program will hear of at its next \
             write, fsync or close ({} bytes not on the server)",
            files.files_with_errors, files.lost_bytes
        )
    };
    format!(
        "{mountpoint}\n  source: {source}\n  daemon: pid {pid}\n  state: {state}\n  \
         written: {written} bytes ({w})\n  read: {read} bytes ({r})\n  \
         throughput: {up} bytes/s written ({uh}/s), {down} bytes/s read ({dh}/s)\n  \
         unacked: {unacked} bytes ({uah})\n  open files: {open}\n  errors: {errors}\n",
        mountpoint = identity.mountpoint.display(),
        source = identity.source,
        pid = std::process::id(),
        w = size(written as f64),
        r = size(read as f64),
        up = up as u64,
        uh = size(up),
        down = down as u64,
        dh = size(down),
        unacked = files.unacked_bytes,
        uah = size(files.unacked_bytes as f64),
        open = files.open_files,
    )
}

/// `n thing` or `n things`.
fn count(n: u64, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn size(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", value as u64)
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

const USAGE: &str = "usage: sftpmount status [MOUNTPOINT | SOCKET]\n\n\
Prints, for each sftpmount mount of this user (or the one at MOUNTPOINT): its source, state\n\
(connected, reconnecting for how long, down for good and why), reconnections and failed\n\
attempts, bytes written and read, throughput over the last 5 s, unacknowledged bytes, open\n\
files and write failures not yet reported to their programs. Each daemon answers only its\n\
user and root. The mount point itself is never touched.\n";

/// The `status` command: `args` are those after `status`. The text to print, or a one-line
/// error.
pub fn command(args: &[String]) -> Result<String, String> {
    match args {
        [flag] if flag == "-h" || flag == "--help" => Ok(USAGE.to_string()),
        [] => {
            let reports = all_reports()?;
            if reports.is_empty() {
                return Ok("no sftpmount mounts of this user\n".to_string());
            }
            Ok(reports.join("\n"))
        }
        [path] => {
            let path = Path::new(path);
            if path.extension().is_some_and(|x| x == "sock") {
                return ask(path).map_err(|e| format!("{}: {e}", path.display()));
            }
            // The mount point itself is never touched: a stat of it waits on an unreachable
            // server and fails with ENOTCONN on a dead mount, just when status matters.
            let wanted = absolute_untouched(path);
            if let Some(report) = all_reports()?
                .into_iter()
                .find(|r| r.lines().next() == Some(&*wanted.to_string_lossy()))
            {
                return Ok(report);
            }
            if crate::mount_table::fs_type_at(&wanted).as_deref() == Some("fuse.sftpmount") {
                return Err(format!(
                    "{0} is a mount whose daemon is gone (killed, or it crashed): unmount it \
                     (fusermount3 -u {0}, or umount as root), then mount again",
                    wanted.display()
                ));
            }
            Err(format!(
                "{} is not an sftpmount mount of this user",
                wanted.display()
            ))
        }
        _ => Err(format!(
            "too many arguments: {}",
            USAGE.lines().next().unwrap_or("")
        )),
    }
}

/// `path` made absolute as the mount table writes it, with no look at `path` itself: `.` and
/// `..` taken lexically, the parent's symlinks resolved (the parent is not the mount).
fn absolute_untouched(path: &Path) -> PathBuf {
    use std::path::Component;
    let joined = match std::env::current_dir() {
        Ok(cwd) => cwd.join(path),
        Err(_) => path.to_path_buf(),
    };
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(clean),
        _ => clean,
    }
}

fn all_reports() -> Result<Vec<String>, String> {
    let dir = match socket_dir(false) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    let mut reports = Vec::new();
    for socket in sockets {
        match ask(&socket) {
            Ok(report) => reports.push(report),
            // Its daemon is gone (killed): the socket is litter.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&socket);
            }
            Err(e) => return Err(format!("{}: {e}", socket.display())),
        }
    }
    Ok(reports)
}

fn ask(socket: &Path) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let _ = stream.flush();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(size(512.0), "512 B");
        assert_eq!(size(12.5 * 1024.0 * 1024.0), "12.5 MiB");
        assert_eq!(duration(Duration::from_secs(75)), "1 min 15 s");
        assert_eq!(count(1, "reconnection"), "1 reconnection");
        assert_eq!(count(0, "failed attempt"), "0 failed attempts");
    }
}

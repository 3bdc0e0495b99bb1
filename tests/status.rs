//! `sftpmount status` on a real mount: while a writer fills a 40 ms link it shows unacked bytes
//! and a throughput; a cut shows as reconnecting and then as one reconnection; another user is
//! turned away (by the socket's directory, and by the daemon when the directory is opened); the
//! socket goes with the mount. During an outage it counts failed attempts apart from
//! reconnections, a mount down for good says why, and a mount whose daemon was killed is named
//! as such.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn status(args: &[&Path]) -> std::process::Output {
    output_with_timeout(
        sftpmount_command().arg("status").args(args),
        None,
        BIN_TIMEOUT,
    )
}

/// The number in a report line `key: N bytes ...`.
fn bytes(report: &str, key: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {report}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn status_shows_a_writer_a_cut_and_refuses_other_users() {
    let sshd = Sshd::start();
    let (m, link) = Mount::far_with_link(&sshd, 20, &[]);
    let mp = m.path().to_path_buf();

    // A writer that keeps the link full for a while.
    let mut dd = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", m.join("big").display()))
        .args(["bs=1M", "count=400"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let busy = wait_until(Duration::from_secs(30), || {
        let out = status(&[&mp]);
        assert!(out.status.success(), "{out:?}");
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        bytes(&seen, "unacked") > 0 && bytes(&seen, "throughput") > 0
    });
    assert!(busy, "{seen}");
    assert!(seen.starts_with(&format!("{}\n", mp.display())), "{seen}");
    assert!(seen.contains("state: connected for"), "{seen}");
    assert!(
        seen.contains("0 reconnections") && seen.contains("open files: 1"),
        "{seen}"
    );
    assert!(dd.wait().unwrap().success());
    let after = String::from_utf8_lossy(&status(&[&mp]).stdout).into_owned();
    assert!(bytes(&after, "written") >= 400 << 20, "{after}");

    // Another user: the directory keeps it out; with the directory opened up, the daemon does.
    let ids = ensure_user("sftpmount-user");
    let socket = fs::read_dir("/run/sftpmount")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                == Some(m.daemon_pid())
        })
        .expect("the mount's socket");
    let as_other = || {
        output_with_timeout(
            sftpmount_command()
                .uid(ids.0)
                .gid(ids.1)
                .arg("status")
                .arg(&socket),
            None,
            BIN_TIMEOUT,
        )
    };
    let out = as_other();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = fs::set_permissions("/run/sftpmount", fs::Permissions::from_mode(0o700));
            }
        }
        let _restore = Restore;
        fs::set_permissions("/run/sftpmount", fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
        let out = as_other();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("refused") && !text.contains("written"),
            "{out:?}"
        );
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A cut with new connections refused: reconnecting; let through: one reconnection.
    link.refuse(true);
    link.cut();
    let reconnecting = wait_until(Duration::from_secs(60), || {
        String::from_utf8_lossy(&status(&[&mp]).stdout).contains("state: reconnecting for")
    });
    assert!(
        reconnecting,
        "{}",
        String::from_utf8_lossy(&status(&[&mp]).stdout)
    );
    link.refuse(false);
    let back = wait_until(Duration::from_secs(60), || {
        let text = String::from_utf8_lossy(&status(&[&mp]).stdout).into_owned();
        text.contains("state: connected") && text.contains("1 reconnection")
    });
    assert!(back, "{}", String::from_utf8_lossy(&status(&[&mp]).stdout));

    // The socket goes with the mount.
    assert!(m.unmount().success());
    assert!(!socket.exists());
    let out = status(&[]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&*mp.to_string_lossy()));
}

/// The `state:` line of a report.
fn state(report: &str) -> String {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("state: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn status_answers_during_an_outage_and_on_a_dead_mount_and_says_why_a_mount_is_down() {
    let sshd = Sshd::start();
    let (m, link) = Mount::far_with_link(&sshd, 5, &["-o", "reconnect_wait=1"]);
    let mp = m.path().to_path_buf();
    let report = || String::from_utf8_lossy(&status(&[&mp]).stdout).into_owned();
    // An outage past reconnect_wait, attempts refused: the status answers without touching the
    // mount point (which may answer EIO now), the failed attempts counted apart from
    // reconnections.
    link.refuse(true);
    link.cut();
    let mut seen = String::new();
    let failing = wait_until(Duration::from_secs(30), || {
        seen = state(&report());
        seen.starts_with("reconnecting for") && seen.contains("0 reconnections, 2 failed")
    });
    assert!(failing, "{seen}");
    link.refuse(false);
    let back = wait_until(Duration::from_secs(60), || {
        seen = state(&report());
        seen.starts_with("connected for") && seen.contains("(1 reconnection, ")
    });
    assert!(back, "{seen}");
    drop(m);

    // Down for good: the report says why.
    let (m, link) = Mount::far_with_link(&sshd, 5, &["-o", "reconnect=no"]);
    let mp = m.path().to_path_buf();
    link.cut();
    let down = wait_until(Duration::from_secs(30), || {
        seen = state(&String::from_utf8_lossy(&status(&[&mp]).stdout));
        seen.starts_with("down for good: the connection was lost and reconnect=no")
    });
    assert!(down, "{seen}");

    // Its daemon killed: the mount point answers ENOTCONN; status says what it is and what to
    // do, in one line.
    assert!(send_signal(m.daemon_pid(), libc::SIGKILL));
    assert!(m.wait_daemon_exit(Duration::from_secs(10)));
    let out = status(&[&mp]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("daemon is gone") && line.contains("fusermount3 -u"),
        "{line}"
    );
}

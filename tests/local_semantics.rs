//! What a local filesystem would show, where SFTP v3 does not force otherwise (issue #12): an
//! open file whose name was removed, create modes, ctime, errnos. Each check is a shell script
//! run on a real mount twice: as root, and as an ordinary user through a mount with
//! `default_permissions,allow_other`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;

const USER: &str = "sftpmount-user";

/// Runs `script` with `sh -e` in `dir` (a directory on the mount), as root or as `user`;
/// returns its stdout, panicking with its output when it fails.
fn sh(dir: &Path, user: Option<(u32, u32)>, script: &str) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-e", "-c", script]).current_dir(dir);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    let out = output_with_timeout(&mut cmd, None, RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two ways each check runs: root on a plain mount, and an ordinary user on a mount with
/// default_permissions,allow_other (in a directory of the server's the user owns).
fn each_way(sshd: &Sshd, check: impl Fn(&Path, Option<(u32, u32)>, &Path)) {
    let m = Mount::new(sshd, &[]);
    fs::create_dir(m.join("root")).unwrap();
    check(&m.join("root"), None, &sshd.remote_root().join("root"));
    drop(m);

    let ids = ensure_user(USER);
    let server_dir = sshd.remote_root().join("user");
    fs::create_dir(&server_dir).unwrap();
    std::os::unix::fs::chown(&server_dir, Some(ids.0), Some(ids.1)).unwrap();
    fs::set_permissions(sshd.remote_root(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::new(sshd, &["-o", "default_permissions,allow_other"]);
    check(&m.join("user"), Some(ids), &server_dir);
}

#[test]
fn an_open_file_whose_name_was_removed_still_stats() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        let out = sh(
            dir,
            user,
            "echo hi > g; exec 3<g; rm g; sleep 2; stat -L -c '%s %h' /dev/fd/3; cat <&3",
        );
        assert_eq!(out, "3 0\nhi\n");
        assert!(!server.join("g").exists());
    });
}

//! A mount by an ordinary user, as `sftpmount host:/dir ~/mnt` is meant to be used: through
//! fusermount3 (setuid), the mount the user's own (root is kept out without allow_root),
//! unmounted with `fusermount3 -u` by the same user or by a signal to its daemon; and /dev/fuse closed to the user named
//! as the reason in one line.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const USER: &str = "sftpmount-user";

/// /dev/fuse at `mode` while the value lives, its earlier mode after.
struct FuseMode(u32);

impl FuseMode {
    fn set(mode: u32) -> FuseMode {
        let old = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(mode)).unwrap();
        FuseMode(old)
    }
}

impl Drop for FuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

fn as_user<'a>(cmd: &'a mut Command, (uid, gid): (u32, u32), home: &Path) -> &'a mut Command {
    cmd.uid(uid).gid(gid).env("HOME", home).env("USER", USER)
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3_and_unmounts_with_fusermount3_u() {
    require_fuse();
    let ids = ensure_user(USER);
    // Debian's /dev/fuse is 0666; a machine with it tighter is set so for the test.
    let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o777;
    let _fuse = FuseMode::set(mode | 0o666);

    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let mp = dir.path().join("mnt");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::create_dir(&mp).unwrap();
    fs::copy(sshd.user_key_path(), home.join(".ssh/id_ed25519")).unwrap();
    fs::copy(sshd.known_hosts_path(), home.join(".ssh/known_hosts")).unwrap();
    for path in [
        &home,
        &home.join(".ssh"),
        &home.join(".ssh/id_ed25519"),
        &home.join(".ssh/known_hosts"),
        &mp,
    ] {
        chown(path, Some(ids.0), Some(ids.1)).unwrap();
    }
    let _cleanup = UnmountOnDrop(mp.clone());

    // As the user would type it: keys and known_hosts from ~/.ssh.
    let mount = || {
        let mut cmd = sftpmount_command();
        as_user(&mut cmd, ids, &home)
            .arg(sshd.source())
            .arg(&mp)
            .args(["-p", &sshd.port().to_string()]);
        output_with_timeout(&mut cmd, None, BIN_TIMEOUT)
    };
    let out = mount();
    assert!(out.status.success(), "{out:?}");
    let info = mount_info(&mp).expect("mounted");
    assert_eq!(info.fs_type, "fuse.sftpmount");
    assert!(
        info.super_options.contains(&format!("user_id={}", ids.0)),
        "{info:?}"
    );

    let out = output_with_timeout(
        as_user(&mut Command::new("sh"), ids, &home)
            .args(["-c", "echo by-the-user > \"$1\"/f && cat \"$1\"/f", "sh"])
            .arg(&mp),
        None,
        RUN_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"by-the-user\n");
    assert_eq!(
        fs::read(sshd.remote_root().join("f")).unwrap(),
        b"by-the-user\n"
    );
    // The user's mount, not root's: without allow_root even root is turned away.
    let e = fs::read_dir(&mp).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    let daemon = find_daemon_pid(&mp).expect("the daemon runs");
    // It holds secrets: not dumpable, so its /proc files are root's and the user's other
    // processes cannot ptrace it or read its memory.
    use std::os::unix::fs::MetadataExt;
    let environ = fs::metadata(format!("/proc/{daemon}/environ")).unwrap();
    assert_eq!(environ.uid(), 0, "the daemon is dumpable");
    let out = output_with_timeout(
        as_user(&mut Command::new("fusermount3"), ids, &home)
            .arg("-u")
            .arg(&mp),
        None,
        RUN_TIMEOUT,
    );
    assert!(out.status.success(), "fusermount3 -u: {out:?}");
    assert!(mount_info(&mp).is_none());
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{daemon}/exe"
        ))
        .exists()),
        "the daemon did not exit after fusermount3 -u"
    );

    // Ctrl-C, SIGTERM or a closed terminal's SIGHUP to the user's daemon: it may not umount(2), fusermount3 does it; the
    // data written just before is on the server, and nothing dead stays behind.
    for (signal, name) in [
        (libc::SIGTERM, "sigterm"),
        (libc::SIGINT, "sigint"),
        (libc::SIGHUP, "sighup"),
    ] {
        let out = mount();
        assert!(out.status.success(), "{out:?}");
        let data = random_bytes(3 << 20, signal as u64);
        let out = output_with_timeout(
            as_user(&mut Command::new("dd"), ids, &home)
                .arg(format!("of={}", mp.join(name).display()))
                .args(["bs=1M", "status=none"]),
            Some(&data),
            RUN_TIMEOUT,
        );
        assert!(out.status.success(), "{out:?}");
        let daemon = find_daemon_pid(&mp).expect("the daemon runs");
        assert!(send_signal(daemon, signal), "{name}: no such daemon");
        assert!(
            wait_until(Duration::from_secs(20), || !Path::new(&format!(
                "/proc/{daemon}/exe"
            ))
            .exists()),
            "{name}: the daemon did not exit"
        );
        assert!(mount_info(&mp).is_none(), "{name}: still mounted");
        assert!(
            fs::read_dir(&mp).is_ok(),
            "{name}: the mount point is usable"
        );
        assert_eq!(
            fs::read(sshd.remote_root().join(name)).unwrap(),
            data,
            "{name}"
        );
    }

    // /dev/fuse closed to the user: said so, not blamed on the mount point.
    let _closed = FuseMode::set(0o600);
    let out = mount();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("/dev/fuse") && line.contains("Permission denied"),
        "{line}"
    );
    assert!(mount_info(&mp).is_none());
}

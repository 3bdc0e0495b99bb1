//! sshfs's own options, as fstab lines carry them, on real mounts: symlinks followed or made
//! relative, hard links turned off, renamexdev letting mv copy across the server's
//! filesystems, direct_io, sshfs_sync, no_readahead, idmap=file, max_conns, auto_unmount,
//! max_read, the request log of -d, and the flags accepted or refused with their reason.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn follow_symlinks_shows_targets_and_transform_symlinks_keeps_them_inside() {
    let sshd = Sshd::start();
    let root = sshd.remote_root();
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("sub/f"), b"0123456789").unwrap();
    symlink(root.join("sub/f"), root.join("abs")).unwrap();
    symlink(root.join("sub"), root.join("sub/deeper/up")).unwrap();
    symlink("/etc/hostname", root.join("outside")).unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();

    // Default: symlinks as the server has them.
    let m = Mount::try_new(&sshd, &[]).unwrap();
    assert!(fs::symlink_metadata(m.join("abs")).unwrap().is_symlink());
    assert_eq!(fs::read_link(m.join("abs")).unwrap(), root.join("sub/f"));
    drop(m);

    let m = Mount::try_new(&sshd, &["-o", "follow_symlinks"]).unwrap();
    let meta = fs::symlink_metadata(m.join("abs")).unwrap();
    assert!(meta.is_file() && meta.len() == 10, "{meta:?}");
    assert!(
        fs::symlink_metadata(m.join("sub/deeper/up"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(fs::read(m.join("abs")).unwrap(), b"0123456789");
    // The listing says the same as lookups do (ls -l reads both).
    let listed: Vec<(String, bool)> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().unwrap().is_symlink(),
            )
        })
        .collect();
    assert!(listed.contains(&("abs".into(), false)), "{listed:?}");
    assert!(
        fs::symlink_metadata(m.join("dangling"))
            .unwrap()
            .is_symlink()
    );
    assert!(listed.contains(&("dangling".into(), true)), "{listed:?}");
    drop(m);

    let m = Mount::try_new(&sshd, &["-o", "transform_symlinks"]).unwrap();
    assert_eq!(
        fs::read_link(m.join("abs")).unwrap().to_str(),
        Some("sub/f")
    );
    assert_eq!(
        fs::read_link(m.join("sub/deeper/up")).unwrap().to_str(),
        Some("..")
    );
    assert_eq!(fs::read(m.join("abs")).unwrap(), b"0123456789");
    // A target outside the mounted directory is never rewritten to lead out of the mount.
    assert_eq!(
        fs::read_link(m.join("outside")).unwrap().to_str(),
        Some("/etc/hostname")
    );
    assert_eq!(
        fs::read_link(m.join("dangling")).unwrap().to_str(),
        Some("nowhere")
    );
}

#[test]
fn contain_symlinks_refuses_every_target_that_could_lead_out_of_the_mount() {
    let sshd = Sshd::start();
    let root = sshd.remote_root();
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("sub/f"), b"inside").unwrap();
    // A local file a rogue server's link would reach, through the kernel on this machine.
    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("secret"), b"local").unwrap();
    symlink(local.path().join("secret"), root.join("abs_out")).unwrap();
    symlink(root.join("sub/f"), root.join("abs_in")).unwrap();
    symlink(
        "../../../../../../../../etc/hostname",
        root.join("sub/climb"),
    )
    .unwrap();
    symlink("sub/../sub/f", root.join("dotdot_in")).unwrap();
    symlink("sub/f", root.join("rel")).unwrap();

    let m = Mount::try_new(&sshd, &["-o", "contain_symlinks"]).unwrap();
    for name in ["abs_out", "abs_in", "sub/climb", "dotdot_in"] {
        let e = fs::read_link(m.join(name)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "readlink {name}: {e}");
        let e = fs::read(m.join(name)).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EPERM),
            "open through {name}: {e}"
        );
        // The link itself is still there to see (and to remove).
        assert!(fs::symlink_metadata(m.join(name)).unwrap().is_symlink());
    }
    assert_eq!(fs::read(m.join("rel")).unwrap(), b"inside");
    assert!(fs::write(m.join("abs_out"), b"overwritten").is_err());
    assert_eq!(fs::read(local.path().join("secret")).unwrap(), b"local");
    drop(m);

    // With transform_symlinks, a target inside the mounted directory is made relative and
    // stays usable; one outside is still refused.
    let m = Mount::try_new(&sshd, &["-o", "contain_symlinks,transform_symlinks"]).unwrap();
    assert_eq!(fs::read(m.join("abs_in")).unwrap(), b"inside");
    let e = fs::read_link(m.join("abs_out")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    drop(m);

    // The default, and no_contain_symlinks: links as the server has them.
    let m = Mount::try_new(&sshd, &["-o", "contain_symlinks,no_contain_symlinks"]).unwrap();
    assert_eq!(
        fs::read_link(m.join("abs_out")).unwrap(),
        local.path().join("secret")
    );
    drop(m);
}

#[test]
fn disable_hardlink_and_renamexdev() {
    let sshd = Sshd::start();
    let m = Mount::try_new(&sshd, &["-o", "disable_hardlink"]).unwrap();
    fs::write(m.join("a"), b"a").unwrap();
    // ENOSYS from the filesystem, which the kernel gives link(2) as EPERM: "the filesystem
    // does not support hard links".
    let e = fs::hard_link(m.join("a"), m.join("b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert!(!sshd.remote_root().join("b").exists());
    drop(m);

    // A directory on another filesystem of the server: its rename fails there with EXDEV,
    // which OpenSSH's sftp-server answers as a bare FAILURE.
    let other_fs = sshd.remote_root().join("other");
    fs::create_dir(&other_fs).unwrap();
    let mounted = run(
        "mount",
        &["-t", "tmpfs", "tmpfs", other_fs.to_str().unwrap()],
        "/",
    );
    assert!(mounted.status.success(), "{mounted:?}");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(other_fs.clone());
    let data = random_bytes(300_000, 3);
    fs::write(sshd.remote_root().join("f"), &data).unwrap();

    let m = Mount::try_new(&sshd, &[]).unwrap();
    let out = try_run("mv", &[m.join("f"), m.join("other/f")], "/");
    assert!(
        !out.status.success(),
        "mv across the server's filesystems: {out:?}"
    );
    drop(m);
    let m = Mount::try_new(&sshd, &["-o", "workaround=renamexdev"]).unwrap();
    let out = try_run("mv", &[m.join("f"), m.join("other/f")], "/");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(other_fs.join("f")).unwrap(), data);
    assert!(!sshd.remote_root().join("f").exists());
    drop(m);
    let line = refusal(Mount::try_new(&sshd, &["-o", "workaround=frobnicate"]).unwrap_err());
    assert!(line.contains("renamexdev"), "{line}");
}

#[test]
fn direct_io_reads_the_server_each_time() {
    let sshd = Sshd::start();
    let file = sshd.remote_root().join("f");
    fs::write(&file, b"first!").unwrap();
    let change = || {
        // Same size, same mtime: only the bytes differ, nothing tells a cache they did.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        fs::write(&file, b"second").unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    let m = Mount::try_new(&sshd, &["-o", "direct_io,kernel_cache,dir_cache=no"]).unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"first!");
    change();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"second");
    drop(m);
    // Without it the kernel keeps the pages it read (kernel_cache): the test sees a difference.
    fs::write(&file, b"first!").unwrap();
    let m = Mount::try_new(&sshd, &["-o", "kernel_cache,dir_cache=no"]).unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"first!");
    change();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"first!");
}

#[test]
fn sshfs_sync_returns_from_write_once_the_server_has_it() {
    let sshd = Sshd::start();
    let m = Mount::far(&sshd, 20, &["-o", "sshfs_sync"]);
    let mut f = fs::File::create(m.join("f")).unwrap();
    let data = random_bytes(1 << 20, 9);
    use std::io::Write;
    f.write_all(&data).unwrap();
    // Still open, nothing flushed: the bytes are on the server already.
    assert_eq!(fs::read(sshd.remote_root().join("f")).unwrap(), data);
    drop(f);
}

#[test]
fn no_readahead_reads_only_what_is_asked() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_with(SshdOptions {
        sftp_server: Some(recorder.subsystem()),
        ..SshdOptions::default()
    });
    random_file(sshd.remote_root().join("big"), 8 << 20, 5);
    let read_first_mib = |m: &Mount| {
        let before = recorder.requests();
        let out = try_run(
            "dd",
            &[
                &format!("if={}", m.join("big").display()),
                "of=/dev/null",
                "bs=128k",
                "count=8",
            ],
            "/",
        );
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(Duration::from_millis(500));
        recorder.requests().since(&before).read_bytes
    };
    let m = Mount::try_new(&sshd, &["-o", "no_readahead"]).unwrap();
    let without = read_first_mib(&m);
    drop(m);
    let m = Mount::try_new(&sshd, &[]).unwrap();
    let default = read_first_mib(&m);
    assert!(
        (1 << 20..=1_500_000).contains(&without),
        "no_readahead read {without}"
    );
    assert!(default > 1_500_000, "the default reads ahead: {default}");
}

#[test]
fn idmap_file_maps_names_ids_and_nomap_decides_the_rest() {
    let sshd = Sshd::start();
    let root = sshd.remote_root();
    fs::write(root.join("mapped"), b"").unwrap();
    fs::write(root.join("unmapped"), b"").unwrap();
    std::os::unix::fs::chown(root.join("mapped"), Some(4242), Some(4343)).unwrap();
    std::os::unix::fs::chown(root.join("unmapped"), Some(5151), Some(5252)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The server's ids by name; the local ids of those names (root, daemon) are shown.
    fs::write(dir.path().join("uids"), "root:4242\nno-such-user-here:77\n").unwrap();
    fs::write(dir.path().join("gids"), "daemon:4343\n").unwrap();
    let files = format!(
        "idmap=file,uidfile={},gidfile={}",
        dir.path().join("uids").display(),
        dir.path().join("gids").display()
    );
    let m = Mount::try_new(&sshd, &["-o", &files]).unwrap();
    let meta = fs::metadata(m.join("mapped")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 1));
    let meta = fs::metadata(m.join("unmapped")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "nomap=error: nobody"
    );
    // A chown through the mount goes back through the map.
    std::os::unix::fs::chown(m.join("unmapped"), Some(0), Some(1)).unwrap();
    let server = fs::metadata(root.join("unmapped")).unwrap();
    assert_eq!((server.uid(), server.gid()), (4242, 4343));
    drop(m);
    let m = Mount::try_new(&sshd, &["-o", &format!("{files},nomap=ignore")]).unwrap();
    std::os::unix::fs::chown(root.join("unmapped"), Some(5151), Some(5252)).unwrap();
    let meta = fs::metadata(m.join("unmapped")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (5151, 5252));
    drop(m);
    let e = refusal(Mount::try_new(&sshd, &["-o", "idmap=file"]).unwrap_err());
    assert!(e.contains("uidfile"), "{e}");
}

#[test]
fn max_conns_spreads_the_channels_over_several_connections() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: vec!["LogLevel INFO".into()],
        ..SshdOptions::default()
    });
    let m = Mount::try_new(&sshd, &["-o", "max_conns=3"]).unwrap();
    let logins = sshd.log().matches("Accepted publickey").count();
    assert_eq!(logins, 3, "{}", sshd.log());
    let data = random_bytes(24 << 20, 11);
    fs::write(m.join("big"), &data).unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("big")).unwrap(), data);
    // A cut of all of them: the mount comes back with three again.
    assert!(sshd.kill_connections() > 0);
    fs::write(m.join("after"), b"after the cut").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("after")).unwrap(),
        b"after the cut"
    );
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 6);
}

#[test]
fn auto_unmount_leaves_no_dead_mount_and_max_read_reaches_the_kernel() {
    let sshd = Sshd::start();
    let m = Mount::try_new(&sshd, &["-o", "auto_unmount,max_read=65536"]).unwrap();
    let info = m.info().expect("mounted");
    assert!(info.super_options.contains("max_read=65536"), "{info:?}");
    assert!(m.signal_daemon(libc::SIGKILL));
    assert!(
        wait_until(Duration::from_secs(10), || m.info().is_none()),
        "the mount stayed after its daemon was killed"
    );
}

#[test]
fn flags_sshfs_takes_are_accepted_or_refused_with_the_reason() {
    let sshd = Sshd::start();
    let m = Mount::try_new(
        &sshd,
        &[
            "-s",
            "-C",
            "-o",
            "contain_symlinks,kernel_cache,workaround=rename:truncate,use_ino,no_check_root",
            "-o",
            "hard_remove,max_readahead=131072,allow_root",
        ],
    )
    .unwrap();
    fs::write(m.join("f"), b"x").unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("f")).unwrap(), b"x");
    drop(m);
    let line = refusal(Mount::try_new(&sshd, &["-1"]).unwrap_err());
    assert!(line.contains("protocol 1"), "{line}");
    let line = refusal(Mount::try_new(&sshd, &["-o", "ssh_protocol=1"]).unwrap_err());
    assert!(line.contains("protocol 1"), "{line}");
    let line = refusal(Mount::try_new(&sshd, &["-o", "modules=subdir"]).unwrap_err());
    assert!(line.contains("modules"), "{line}");
    let line = refusal(Mount::try_new(&sshd, &["-o", "allow_other,allow_root"]).unwrap_err());
    assert!(line.contains("allow_root"), "{line}");
}

#[test]
fn debug_logs_each_request_with_its_latency() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let log = dir.path().join("log");
    let mut child = sftpmount_command()
        .env("HOME", sshd.client_home())
        .arg(sshd.source())
        .arg(&mp)
        .arg("-d")
        .args(sshd.ssh_opts())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let live = wait_until(Duration::from_secs(20), || mount_info(&mp).is_some());
    if live {
        let _ = fs::metadata(mp.join("no-such-name"));
        fs::write(mp.join("f"), b"x").unwrap();
        fs::read_dir(&mp).unwrap().for_each(drop);
    }
    let _ = std::process::Command::new("umount").arg(&mp).status();
    let status = within(Duration::from_secs(30), move || child.wait().unwrap());
    assert!(
        live && status.success(),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("logged in to 127.0.0.1:"), "{text}");
    let lstat = text
        .lines()
        .find(|l| l.contains("LSTAT") && l.contains("no-such-name"))
        .unwrap_or_else(|| panic!("no LSTAT line: {text}"));
    assert!(
        lstat.contains("NO_SUCH_FILE in ") && lstat.ends_with(" ms"),
        "{lstat}"
    );
    // Handles are shown as the paths they were opened by (they are reused across files and
    // channels), and the server's features once per connection, not once per channel.
    let f = sshd.remote_root().join("f");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("WRITE {} 0+1", f.display())) && l.contains("-> OK in ")),
        "{text}"
    );
    let root = sshd.remote_root().display().to_string();
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("READDIR {root} ->"))),
        "{text}"
    );
    assert!(!text.contains("handle 0"), "{text}");
    assert_eq!(text.matches("ServerFeatures").count(), 1, "{text}");
}

/// idmap=names: the server names its ids (users-groups-by-id@openssh.com), and a remote user
/// whose name exists here shows as the local user of that name, as NFSv4 maps owners. The
/// server here is this machine's sftp-server in a mount namespace of its own whose
/// /etc/passwd and /etc/group give the user another uid and gid than this machine's; chown
/// through the mount maps back; an id the server has no name for follows nomap=. A server
/// without the extension (gesftpserver) is refused in one line.
#[test]
fn idmap_names_shows_the_servers_users_as_the_local_users_of_those_names() {
    let user = "sftpmount-idname";
    let (local_uid, local_gid) = ensure_user(user);
    let (remote_uid, remote_gid) = (local_uid + 3000, local_gid + 3000);
    let etc = tempfile::tempdir().unwrap();
    for (file, line) in [
        (
            "passwd",
            format!("{user}:x:{remote_uid}:{remote_gid}::/nonexistent:/bin/false"),
        ),
        ("group", format!("{user}:x:{remote_gid}:")),
    ] {
        let real = fs::read_to_string(Path::new("/etc").join(file)).unwrap();
        let mut lines: Vec<String> = real
            .lines()
            .filter(|l| !l.starts_with(&format!("{user}:")))
            .map(String::from)
            .collect();
        lines.push(line);
        fs::write(etc.path().join(file), lines.join("\n") + "\n").unwrap();
    }
    // unshare(1) makes the namespace's mounts private: nothing is seen outside it.
    let server = etc.path().join("sftp-server");
    fs::write(
        &server,
        format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind {dir}/passwd /etc/passwd && \
             mount --bind {dir}/group /etc/group && exec {SFTP_SERVER}'\n",
            dir = etc.path().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sshd = Sshd::start_with(SshdOptions {
        sftp_server: Some(server.display().to_string()),
        ..SshdOptions::default()
    });
    let root = sshd.remote_root();
    fs::write(root.join("theirs"), b"").unwrap();
    fs::write(root.join("nameless"), b"").unwrap();
    fs::write(root.join("given"), b"").unwrap();
    std::os::unix::fs::chown(root.join("theirs"), Some(remote_uid), Some(remote_gid)).unwrap();
    std::os::unix::fs::chown(root.join("nameless"), Some(60123), Some(60123)).unwrap();
    let m = Mount::new(&sshd, &["-o", "idmap=names"]);
    let meta = fs::metadata(m.join("theirs")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (local_uid, local_gid));
    let meta = fs::metadata(m.join("nameless")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "nomap=error: nobody"
    );
    let meta = fs::metadata(m.join("given")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "root is root on both sides"
    );
    std::os::unix::fs::chown(m.join("given"), Some(local_uid), Some(local_gid)).unwrap();
    let on_server = fs::metadata(root.join("given")).unwrap();
    assert_eq!((on_server.uid(), on_server.gid()), (remote_uid, remote_gid));
    drop(m);
    let m = Mount::new(&sshd, &["-o", "idmap=names,nomap=ignore"]);
    let meta = fs::metadata(m.join("nameless")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (60123, 60123));
    drop(m);
    let bare = Sshd::start_with(SshdOptions {
        sftp_server: Some("/usr/libexec/gesftpserver".into()),
        ..SshdOptions::default()
    });
    let e = refusal(Mount::try_new(&bare, &["-o", "idmap=names"]).unwrap_err());
    assert!(
        e.contains("users-groups-by-id") && e.contains("idmap=file"),
        "{e}"
    );
}

/// A far link gets more channels: sshd grants a channel a 2 MiB window, which caps an upload
/// over 7 data channels at 49 MB/s at 300 ms. Over 200 ms a mount opens 16 channels over 2
/// connections (sshd allows 10 a connection), near it 8 over 1; max_conns= (or sftp_channels=)
/// given keeps the mount to what they say.
#[test]
fn a_far_link_gets_a_second_connection_unless_max_conns_says_otherwise() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: vec!["LogLevel VERBOSE".into()],
        ..SshdOptions::default()
    });
    let count = |what: &str| sshd.log().matches(what).count();
    let logins = || count("Accepted publickey");
    let channels = || count("subsystem 'sftp'");
    let near = Mount::new(&sshd, &[]);
    assert_eq!((logins(), channels()), (1, 8), "{}", sshd.log());
    drop(near);
    let far_away = proxy::Shape::delay(Duration::from_millis(110));
    let (far, _link) = Mount::shaped(&sshd, far_away, &[]);
    assert_eq!((logins(), channels()), (3, 24), "{}", sshd.log());
    let data = random_bytes(24 << 20, 12);
    fs::write(far.join("big"), &data).unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("big")).unwrap(), data);
    drop(far);
    let far_away = proxy::Shape::delay(Duration::from_millis(110));
    let (chosen, _link) = Mount::shaped(&sshd, far_away, &["-o", "max_conns=1"]);
    assert_eq!((logins(), channels()), (4, 32), "{}", sshd.log());
    drop(chosen);
}

//! The command line as users meet it: help, version, what /proc/mounts shows, the fstab helper
//! path, every bad input (exit code and one clear line, nothing left mounted), and clean
//! unmounts by umount, fusermount3 -u, SIGTERM and SIGINT with data still in flight.

mod common;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stderr_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got: {text:?}"
    );
    assert!(
        lines[0].starts_with("sftpmount: "),
        "message should name the program: {text:?}"
    );
    lines[0].to_string()
}

/// Runs a mount that must fail: exit code 1, one line containing every `needles`, and nothing
/// mounted afterwards.
fn assert_refused<S: AsRef<OsStr>>(sshd: &Sshd, source: &str, args: &[S], needles: &[&str]) {
    match Mount::try_with(sshd, source, args, None) {
        Ok(m) => panic!("mount unexpectedly succeeded at {}", m.path().display()),
        Err(out) => {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let line = stderr_line(&out);
            for n in needles {
                assert!(line.contains(n), "{line:?} lacks {n:?}");
            }
        }
    }
}

#[test]
fn help_and_version() {
    let out = run_sftpmount(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[user@]host:[dir]",
        "-p <PORT>",
        "-F <SSH_CONFIG>",
        "-f",
        "--debug",
        "StrictHostKeyChecking",
        "password_stdin",
        "idmap",
        "umask",
        "fstab",
        "sftpmount status [MOUNTPOINT]",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
    let out = run_sftpmount(&["-V"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn proc_mounts_shows_type_and_source() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    let info = m.info().expect("mounted");
    assert_eq!(info.fs_type, "fuse.sftpmount");
    assert_eq!(info.source, sshd.source());
}

#[test]
fn command_line_errors_are_one_line() {
    let sshd = Sshd::start();
    let opts = sshd.ssh_opts();
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = opts.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    assert_refused(
        &sshd,
        &sshd.source(),
        &with(&["-o", "frobnicate=1"]),
        &["unknown option", "frobnicate"],
    );
    assert_refused(
        &sshd,
        &sshd.source(),
        &with(&["-o", "umask=xyz"]),
        &["umask"],
    );
    assert_refused(&sshd, "no-colon-here", &opts, &["[user@]host:[dir]"]);
    // Missing arguments.
    let out = run_sftpmount(&["host:dir"]);
    assert_eq!(out.status.code(), Some(1));
    stderr_line(&out);
}

#[test]
fn bad_mount_points_are_refused_before_connecting() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    for (mp, needle) in [(&missing, "does not exist"), (&file, "not a directory")] {
        let mut args: Vec<String> = vec![sshd.source(), mp.display().to_string()];
        args.extend(sshd.ssh_opts());
        let out = run_sftpmount(&args);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr_line(&out).contains(needle));
    }
    // Already mounted.
    let m = Mount::new(&sshd, &[]);
    let mut args: Vec<String> = vec![sshd.source(), m.path().display().to_string()];
    args.extend(sshd.ssh_opts());
    let out = run_sftpmount(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("already a mount point"));
    assert_eq!(mount_info(m.path()).unwrap().fs_type, "fuse.sftpmount");
    // A mount whose daemon was killed: says to unmount it.
    let dead = Mount::new(&sshd, &[]);
    assert!(dead.signal_daemon(libc::SIGKILL));
    assert!(dead.wait_daemon_exit(Duration::from_secs(10)));
    let mut args: Vec<String> = vec![sshd.source(), dead.path().display().to_string()];
    args.extend(sshd.ssh_opts());
    let out = run_sftpmount(&args);
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(
        line.contains("daemon is gone") && line.contains("umount"),
        "{line}"
    );
}

#[test]
fn unreachable_host_and_silent_server() {
    let sshd = Sshd::start();
    // Nothing listens on this port.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut args = sshd.ssh_opts();
    args[1] = port.to_string();
    assert_refused(
        &sshd,
        &sshd.source(),
        &args,
        &["cannot connect", &port.to_string()],
    );
    // The cause once, not again after itself.
    let out = Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err();
    let line = stderr_line(&out);
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");

    // A server that accepts and never speaks: refused within ConnectTimeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let conn = silent.accept();
        std::thread::sleep(Duration::from_secs(8));
        drop(conn);
    });
    let mut args = sshd.ssh_opts();
    args[1] = silent_port.to_string();
    assert_connect_timeout_of_2_s(&sshd, args);
    holder.join().unwrap();
}

/// Mounting with `args` and ConnectTimeout=2 fails with a timeout, well within 7 s.
fn assert_connect_timeout_of_2_s(sshd: &Sshd, mut args: Vec<String>) {
    args.extend(["-o".to_string(), "ConnectTimeout=2".to_string()]);
    let started = Instant::now();
    assert_refused(
        sshd,
        &sshd.source(),
        &args,
        &["timed out", "ConnectTimeout"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "took {:?}",
        started.elapsed()
    );
}

/// A server that answers the connection and the key exchange, then stalls the login (here
/// sshd's AuthorizedKeysCommand sleeps): refused within ConnectTimeout, as ssh does. Before,
/// only the key exchange was bounded: a reconnection could wait on such a login for ever, with
/// every operation behind it.
#[test]
fn a_login_the_server_stalls_is_refused_within_connect_timeout() {
    let sshd = Sshd::start_with(SshdOptions {
        // Keys from the command only (sshd reads the files first otherwise).
        extra_config: vec![
            "AuthorizedKeysFile none".into(),
            "AuthorizedKeysCommand /usr/bin/sleep 20".into(),
            "AuthorizedKeysCommandUser nobody".into(),
        ],
        ..Default::default()
    });
    assert_connect_timeout_of_2_s(&sshd, sshd.ssh_opts());
}

#[test]
fn authentication_refused() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other_key");
    keygen(&other, "not authorized");
    let args: Vec<String> = vec![
        "-p".into(),
        sshd.port().to_string(),
        "-o".into(),
        format!("IdentityFile={}", other.display()),
        "-o".into(),
        format!("UserKnownHostsFile={}", sshd.known_hosts_path().display()),
    ];
    assert_refused(
        &sshd,
        &sshd.source(),
        &args,
        &["authentication refused", "root@"],
    );
    // A key file that does not exist is named.
    let args: Vec<String> = vec![
        "-p".into(),
        sshd.port().to_string(),
        "-o".into(),
        "IdentityFile=/nonexistent/key".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", sshd.known_hosts_path().display()),
    ];
    assert_refused(&sshd, &sshd.source(), &args, &["/nonexistent/key"]);
}

#[test]
fn missing_remote_directory() {
    let sshd = Sshd::start();
    let source = sshd.source_as("root", &sshd.remote_root().join("no/such/dir"));
    assert_refused(
        &sshd,
        &source,
        &sshd.ssh_opts(),
        &["remote directory", "No such file"],
    );
    fs::write(sshd.remote_root().join("plainfile"), b"x").unwrap();
    let source = sshd.source_as("root", &sshd.remote_root().join("plainfile"));
    assert_refused(&sshd, &source, &sshd.ssh_opts(), &["not a directory"]);
}

/// `user`'s home as /etc/passwd has it.
fn passwd_home(user: &str) -> String {
    fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .map(|l| l.split(':').nth(5).unwrap().to_string())
        .unwrap()
}

fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

/// `host:~/dir`, `host:~user/dir` resolve as `sftp host:~/dir` resolves them: by the server
/// (expand-path@openssh.com, which the recorder sees asked); a user without a home there is
/// refused in one line. A server without the extensions (gesftpserver) has the login's own
/// `~` from the directory it starts in, and refuses `~user` saying to give the full path.
#[test]
fn home_paths_resolve_as_sftp_resolves_them() {
    let user = "sftpmount-home";
    ensure_user(user);
    let sub = Path::new(&passwd_home(user)).join("mounted-by-test");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("marker"), b"here").unwrap();
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    {
        let m = Mount::with_source(
            &sshd,
            &format!("root@127.0.0.1:~{user}/mounted-by-test"),
            &[],
        );
        assert_eq!(fs::read(m.join("marker")).unwrap(), b"here");
        assert!(
            recorder
                .settled()
                .extended
                .contains_key("expand-path@openssh.com"),
            "{:?}",
            recorder.settled().extended
        );
        let root_home = Mount::with_source(&sshd, "root@127.0.0.1:~/", &[]);
        let root_dir = Mount::with_source(&sshd, "root@127.0.0.1:~root", &[]);
        assert_eq!(names_in(root_home.path()), names_in(root_dir.path()));
        assert_eq!(
            names_in(root_home.path()),
            names_in(Path::new(&passwd_home("root")))
        );
    }
    assert_refused(
        &sshd,
        "root@127.0.0.1:~no-such-user-sftpmount/x",
        &sshd.ssh_opts(),
        &["remote directory ~no-such-user-sftpmount/x"],
    );
    let bare = Sshd::start_with(SshdOptions {
        sftp_server: Some("/usr/libexec/gesftpserver".into()),
        ..SshdOptions::default()
    });
    {
        let own = Mount::with_source(&bare, "root@127.0.0.1:~/", &[]);
        assert_eq!(
            names_in(own.path()),
            names_in(Path::new(&passwd_home("root")))
        );
    }
    assert_refused(
        &bare,
        &format!("root@127.0.0.1:~{user}/mounted-by-test"),
        &bare.ssh_opts(),
        &["cannot expand ~sftpmount-home", "full path"],
    );
    fs::remove_dir_all(&sub).unwrap();
}

#[test]
fn relative_and_empty_dirs_are_relative_to_the_remote_home() {
    let sshd = Sshd::start();
    // root's home on the server is /root (or whatever getpwnam says): mount it and compare.
    let home = std::env::var("HOME").ok();
    let m = Mount::with_source(&sshd, "root@127.0.0.1:", &[]);
    let passwd_home = fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("root:"))
        .map(|l| l.split(':').nth(5).unwrap().to_string())
        .unwrap();
    let names = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(m.path()),
        names(Path::new(&passwd_home)),
        "HOME={home:?}"
    );
}

#[test]
fn no_dev_fuse() {
    let sshd = Sshd::start();
    let mp = tempfile::tempdir().unwrap();
    // In a private mount namespace whose /dev is an empty tmpfs.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} {} {} {}",
        BIN,
        sshd.source(),
        mp.path().display(),
        sshd.ssh_opts().join(" ")
    );
    let out = output_with_timeout(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        None,
        BIN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr_line(&out).contains("no /dev/fuse"));
}

#[test]
fn fstab_helper_mode_through_mount_fuse3() {
    let sshd = Sshd::start();
    let mp = tempfile::tempdir().unwrap();
    let _unmount = UnmountOnDrop(mp.path().to_owned());
    let opts = format!(
        "port={},IdentityFile={},UserKnownHostsFile={},_netdev,noatime,x-systemd.automount",
        sshd.port(),
        sshd.user_key_path().display(),
        sshd.known_hosts_path().display()
    );
    // mount(8) -> mount.fuse3 -> `sftpmount SOURCE MOUNTPOINT -o OPTIONS`, and mount(8) waits
    // for it: when it returns, the mount must be live.
    let source = format!("{BIN}#{}", sshd.source());
    let out = output_with_timeout(
        Command::new("mount")
            .env("HOME", sshd.client_home())
            .args(["-t", "fuse", &source])
            .arg(mp.path())
            .args(["-o", &opts]),
        None,
        BIN_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let info = mount_info(mp.path()).expect("mounted when mount(8) returned");
    assert_eq!(info.fs_type, "fuse.sftpmount");
    // mount.fuse3 appended dev,suid: they are not the user's.
    assert_nosuid_nodev(&info);
    fs::write(mp.path().join("via-fstab"), b"ok").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("via-fstab")).unwrap(),
        b"ok"
    );
    let pid = find_daemon_pid(mp.path());
    let out = output_with_timeout(Command::new("umount").arg(mp.path()), None, BIN_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    if let Some(pid) = pid {
        assert!(wait_until(Duration::from_secs(10), || !Path::new(
            &format!("/proc/{pid}/cmdline")
        )
        .exists()
            || fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.is_empty())));
    }
}

fn assert_nosuid_nodev(info: &MountInfo) {
    let options: Vec<&str> = info.mount_options.split(',').collect();
    assert!(
        options.contains(&"nosuid") && options.contains(&"nodev"),
        "a server's setuid files and devices would act here: {}",
        info.mount_options
    );
}

#[test]
fn an_fstab_line_keeps_nosuid_nodev_and_the_command_line_may_lift_them() {
    let sshd = Sshd::start();
    let mp = tempfile::tempdir().unwrap();
    let mp_path = mp.path().canonicalize().unwrap();
    let _unmount = UnmountOnDrop(mp_path.clone());
    let fstab = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        fstab.path(),
        format!(
            "# sftpmount's test\n{BIN}#{} {} fuse rw,port={},IdentityFile={},UserKnownHostsFile={},_netdev 0 0\n",
            sshd.source(),
            mp_path.display(),
            sshd.port(),
            sshd.user_key_path().display(),
            sshd.known_hosts_path().display()
        ),
    )
    .unwrap();
    let out = output_with_timeout(
        Command::new("mount")
            .env("HOME", sshd.client_home())
            .arg("-T")
            .arg(fstab.path())
            .arg(&mp_path),
        None,
        BIN_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let info = mount_info(&mp_path).expect("mounted when mount(8) returned");
    assert_eq!(info.fs_type, "fuse.sftpmount");
    assert_nosuid_nodev(&info);
    let out = output_with_timeout(Command::new("umount").arg(&mp_path), None, BIN_TIMEOUT);
    assert!(out.status.success(), "{out:?}");

    // On the command line, suid and dev are the user's own word.
    let m = Mount::new(&sshd, &["-o", "suid,dev"]);
    let info = m.info().expect("mounted");
    let options: Vec<&str> = info.mount_options.split(',').collect();
    assert!(
        !options.contains(&"nosuid") && !options.contains(&"nodev"),
        "{}",
        info.mount_options
    );
}

/// Writes `len` bytes into the mount and keeps the file open, so the data may still be in
/// flight; returns the writer process.
fn writer_holding_file_open(path: &Path, seed: u64, len: usize) -> std::process::Child {
    let data_file = tempfile::NamedTempFile::new().unwrap();
    fs::write(data_file.path(), random_bytes(len, seed)).unwrap();
    let (_, keep) = data_file.keep().unwrap();
    // cat copies, then sleeps with the descriptor open; the test ends it by its pid.
    let script = format!(
        "exec 3>'{}'; cat '{}' >&3; echo written; sleep 30",
        path.display(),
        keep.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "written");
    fs::remove_file(keep).unwrap();
    child
}

#[test]
fn sigterm_and_sigint_write_data_in_flight_then_unmount() {
    for (sig, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let sshd = Sshd::start();
        let m = Mount::new(&sshd, &[]);
        let len = 24 * 1024 * 1024;
        let mut writer = writer_holding_file_open(&m.join(name), 11, len);
        assert!(m.signal_daemon(sig));
        assert!(
            m.wait_daemon_exit(Duration::from_secs(60)),
            "daemon did not exit on {name}"
        );
        let _ = writer.kill();
        let _ = writer.wait();
        assert!(
            files_equal_bytes(&sshd.remote_root().join(name), &random_bytes(len, 11)),
            "data written before SIG{name} did not all reach the server"
        );
        assert!(
            mount_info(m.path()).is_none(),
            "still mounted after SIG{name}"
        );
    }
}

fn files_equal_bytes(path: &Path, expected: &[u8]) -> bool {
    fs::read(path).is_ok_and(|d| d == expected)
}

/// Starts `sftpmount -f` on `mp` with `extra` arguments and `stderr`, and waits until the mount
/// is live (killing the child and failing if it never is).
fn foreground_mount(sshd: &Sshd, mp: &Path, extra: &[&str], stderr: Stdio) -> std::process::Child {
    let mut child = sftpmount_command()
        .env("HOME", sshd.client_home())
        .arg(sshd.source())
        .arg(mp)
        .arg("-f")
        .args(extra)
        .args(sshd.ssh_opts())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let live = wait_until(Duration::from_secs(20), || {
        mount_info(mp).is_some_and(|i| i.fs_type == "fuse.sftpmount")
    });
    if !live {
        let _ = child.kill();
        let _ = child.wait();
        panic!("foreground mount never came up");
    }
    child
}

/// Waits (30 s at most) for a foreground daemon to exit after `what`.
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("foreground daemon did not exit after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn foreground_mode_exits_zero_on_sigterm() {
    let sshd = Sshd::start();
    let mp = tempfile::tempdir().unwrap();
    let mut child = foreground_mount(&sshd, mp.path(), &[], Stdio::null());
    let mut f = File::create(mp.path().join("fg")).unwrap();
    f.write_all(&random_bytes(4 << 20, 1)).unwrap();
    drop(f);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, "SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(mount_info(mp.path()).is_none());
    assert_eq!(
        fs::read(sshd.remote_root().join("fg")).unwrap(),
        random_bytes(4 << 20, 1)
    );
}

#[test]
fn a_foreground_mount_unmounted_by_umount_exits_quietly_and_logs_without_colour() {
    let sshd = Sshd::start();
    let mp = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = foreground_mount(&sshd, mp.path(), &["-d"], log.reopen().unwrap().into());
    fs::write(mp.path().join("f"), b"x").unwrap();
    let umounted = Command::new("umount").arg(mp.path()).status().unwrap();
    assert!(umounted.success());
    let status = wait_exit(&mut child, "umount");
    assert_eq!(status.code(), Some(0));
    let text = fs::read_to_string(log.path()).unwrap();
    assert!(!text.is_empty(), "-d logs something");
    assert!(
        !text.contains('\x1b'),
        "colour escapes in a redirected log: {text:?}"
    );
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn no_arguments_say_which_are_missing() {
    let out = run_sftpmount::<&str>(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(
        text.contains("<SOURCE>") && text.contains("<MOUNTPOINT>") && text.contains("usage"),
        "{text}"
    );
}

#[test]
fn umount_and_fusermount_unmount_cleanly() {
    for tool in ["umount", "fusermount3"] {
        let sshd = Sshd::start();
        let m = Mount::new(&sshd, &[]);
        let data = random_bytes(8 << 20, 2);
        fs::write(m.join("f"), &data).unwrap();
        let args: Vec<&OsStr> = if tool == "umount" {
            vec![m.path().as_os_str()]
        } else {
            vec![OsStr::new("-u"), m.path().as_os_str()]
        };
        let out = output_with_timeout(Command::new(tool).args(&args), None, BIN_TIMEOUT);
        assert!(out.status.success(), "{tool}: {out:?}");
        assert!(
            m.wait_daemon_exit(Duration::from_secs(20)),
            "{tool}: daemon lingers"
        );
        assert_eq!(fs::read(sshd.remote_root().join("f")).unwrap(), data);
    }
}

#[test]
fn sshfs_options_that_fit_work_and_those_that_cannot_are_refused_with_the_reason() {
    let sshd = Sshd::start();
    let m = Mount::new(
        &sshd,
        &[
            "-o",
            "fsname=backup,subtype=sshfs,nonempty,sync_readdir,delay_connect",
        ],
    );
    let info = m.info().expect("mounted");
    assert_eq!(info.fs_type, "fuse.sshfs");
    assert_eq!(info.source, "backup");
    let said = String::from_utf8_lossy(&m.mount_output().stderr).to_string();
    assert!(said.contains("note: delay_connect"), "{said}");
    fs::write(m.join("f"), b"x").unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("f")).unwrap(), b"x");
    drop(m);

    for opt in [
        "ssh_command=ssh -v",
        "sftp_server=/usr/lib/openssh/sftp-server",
    ] {
        let mut args = sshd.ssh_opts();
        args.extend(["-o".to_string(), opt.to_string()]);
        let name = opt.split('=').next().unwrap();
        assert_refused(&sshd, &sshd.source(), &args, &[name, "runs no ssh"]);
    }
}

#[test]
fn allow_other_without_default_permissions_says_what_it_means() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &["-o", "allow_other"]);
    let said = String::from_utf8_lossy(&m.mount_output().stderr).to_string();
    assert!(
        said.contains("note: allow_other without default_permissions")
            && said.lines().filter(|l| l.contains("allow_other")).count() == 1,
        "{said}"
    );
    drop(m);
    let m = Mount::new(&sshd, &["-o", "allow_other,default_permissions"]);
    let said = String::from_utf8_lossy(&m.mount_output().stderr).to_string();
    assert!(!said.contains("allow_other"), "{said}");
}

#[test]
fn without_syslog_the_log_goes_to_the_state_directory_and_names_the_mount_point() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (mp, home) = (dir.path().join("mnt"), dir.path().join("home"));
    fs::create_dir(&mp).unwrap();
    fs::create_dir(&home).unwrap();
    // The daemon runs in a mount namespace of its own where /dev/log, if the machine has one,
    // is /dev/null: no syslog listens. The mount lives in that namespace; the files it logs to
    // are the machine's.
    let out = output_with_timeout(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind /dev/null /dev/log 2>/dev/null; exec \"$@\"")
            .arg("sh")
            .arg(sftpmount_command().get_program())
            .arg(sshd.source())
            .arg(&mp)
            .args(sshd.ssh_opts())
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .env_remove("SSH_AUTH_SOCK"),
        None,
        BIN_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let log = home.join(".local/state/sftpmount/log");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("this mount logs to {}", log.display())),
        "{said}"
    );
    let daemon = find_daemon_pid(&mp).expect("the daemon runs");
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            send_signal(self.0, libc::SIGTERM);
        }
    }
    let _stop = Stop(daemon);
    // A loss, told after the daemon left the terminal: in the file, naming the mount point.
    assert!(sshd.kill_connections() > 0);
    let wanted = format!("WARN {}: connection to 127.0.0.1 lost", mp.display());
    let logged = wait_until(Duration::from_secs(20), || {
        fs::read_to_string(&log).is_ok_and(|text| text.contains(&wanted))
    });
    assert!(logged, "{:?}", fs::read_to_string(&log));
    assert!(send_signal(daemon, libc::SIGTERM));
    assert!(wait_until(Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/proc/{daemon}/exe")).exists()
    }));
}

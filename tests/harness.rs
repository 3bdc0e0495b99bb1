//! Checks of the test harness itself (tests/common), with OpenSSH's own sftp client: when these
//! fail, the environment or the harness is broken, not sftpmount.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs OpenSSH's `sftp` against `sshd` with `commands` on stdin (not `-b`, which forbids
/// password prompts).
fn sftp(sshd: &Sshd, extra: &[&str], source: &str, commands: &str) -> std::process::Output {
    let known_hosts = format!("UserKnownHostsFile={}", sshd.known_hosts_path().display());
    output_with_timeout(
        Command::new("sftp")
            .env_remove("SSH_AUTH_SOCK")
            .args(["-P", &sshd.port().to_string()])
            .args(["-o", &known_hosts, "-o", "StrictHostKeyChecking=yes"])
            .args(extra)
            .arg(source),
        Some(commands.as_bytes()),
        Duration::from_secs(30),
    )
}

#[test]
fn sshd_serves_sftp_with_the_user_key() {
    let sshd = Sshd::start();
    fs::write(sshd.remote_root().join("a"), b"hello").unwrap();
    let key = sshd.user_key_path();
    // The local side in a directory of the test's own, not the checkout (a stray `b` there).
    let local = tempfile::TempDir::new().unwrap();
    let out = sftp(
        &sshd,
        &["-i", key.to_str().unwrap(), "-o", "BatchMode=yes"],
        &sshd.source(),
        &format!("lcd {}\nget a b\nput b c\n", local.path().display()),
    );
    assert!(
        out.status.success(),
        "sftp failed: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(fs::read(sshd.remote_root().join("c")).unwrap(), b"hello");
}

#[test]
fn sshd_refuses_an_unknown_key() {
    let sshd = Sshd::start();
    let other = sshd.client_home().join("other_key");
    keygen(&other, "not-authorized");
    let out = sftp(
        &sshd,
        &["-i", other.to_str().unwrap(), "-o", "BatchMode=yes"],
        &sshd.source(),
        "ls\n",
    );
    assert!(!out.status.success());
}

#[test]
fn sshd_with_password_auth() {
    let password = "harness-pw-1";
    ensure_password_user(PASSWORD_USER, password);
    let sshd = Sshd::start_with_password_auth();
    sshd.chown_remote_root(PASSWORD_USER);
    let askpass = sshd.client_home().join("askpass");
    fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    run("chmod", &["755", askpass.to_str().unwrap()], "/");
    let out = output_with_timeout(
        Command::new("sftp")
            .env_remove("SSH_AUTH_SOCK")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .args(["-P", &sshd.port().to_string()])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                sshd.known_hosts_path().display()
            ))
            .args(["-o", "PubkeyAuthentication=no"])
            .arg(sshd.source_as(PASSWORD_USER, &sshd.remote_root())),
        Some(b"mkdir d\n"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "sftp failed: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert!(sshd.remote_root().join("d").is_dir());
}

#[test]
fn sshds_start_in_parallel_on_distinct_ports() {
    let starts: Vec<_> = (0..4).map(|_| std::thread::spawn(Sshd::start)).collect();
    let all: Vec<Sshd> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ports: Vec<u16> = all.iter().map(Sshd::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), all.len());
}

#[test]
fn sshd_restarts_on_its_port() {
    let mut sshd = Sshd::start();
    let port = sshd.port();
    sshd.stop();
    assert!(sshd.pid().is_none());
    sshd.restart();
    assert_eq!(sshd.port(), port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn random_data_is_deterministic() {
    assert_eq!(random_bytes(1001, 1), random_bytes(1001, 1));
    assert_ne!(random_bytes(64, 1), random_bytes(64, 2));
    assert_ne!(random_bytes(64, 0), vec![0; 64]);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let len = (3 << 20) + 5;
    random_file(&a, len, 3);
    assert_eq!(fs::read(&a).unwrap(), random_bytes(len as usize, 3));
    random_file(&b, len, 4);
    assert!(files_equal(&a, &a));
    assert!(!files_equal(&a, &b));
}

#[test]
fn mountinfo_is_parsed() {
    let proc = mount_info(Path::new("/proc")).expect("/proc is a mount point");
    assert_eq!(proc.fs_type, "proc");
}

#[test]
#[should_panic(expected = "did not finish within")]
fn commands_that_hang_are_killed() {
    output_with_timeout(
        Command::new("sleep").arg("30"),
        None,
        Duration::from_millis(200),
    );
}

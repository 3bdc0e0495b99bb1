//! The network going away: the connection is cut, black-holed or refused through our delay line
//! (tests/common/proxy.rs), and the mount reconnects by itself, within the bounds it promises.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// A mount through a delay line of `delay_ms` each way, logging to a file the test reads.
fn far_mount_with_log(
    sshd: &Sshd,
    delay_ms: u64,
    options: &str,
) -> (
    Mount,
    std::sync::Arc<proxy::Link>,
    PathBuf,
    tempfile::TempDir,
) {
    let logdir = tempfile::Builder::new()
        .prefix("sftpmount-log-")
        .tempdir()
        .unwrap();
    let log = logdir.path().join("log");
    let mut all = format!("logfile={}", log.display());
    if !options.is_empty() {
        all.push(',');
        all.push_str(options);
    }
    let (m, link) = Mount::far_with_link(sshd, delay_ms, &["-o", &all]);
    (m, link, log, logdir)
}

#[test]
fn a_cut_connection_is_reestablished_and_the_mount_goes_on() {
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 5, "");
    fs::write(m.join("before"), b"before the cut").unwrap();
    link.cut();
    // The next operations wait for the new connection (about a second), then work.
    let started = Instant::now();
    let path = m.join("after");
    within(Duration::from_secs(30), move || {
        fs::write(path, b"after the cut")
    })
    .expect("a write after the cut");
    assert_eq!(
        fs::read(sshd.remote_root().join("after")).unwrap(),
        b"after the cut"
    );
    assert_eq!(fs::read(m.join("before")).unwrap(), b"before the cut");
    let names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("connection to 127.0.0.1 lost"), "{log}");
    assert!(log.contains("reconnected to 127.0.0.1 after"), "{log}");
}

#[test]
fn while_the_server_is_unreachable_operations_fail_within_the_bound_then_recover() {
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 5, "reconnect_wait=3,dir_cache=no");
    fs::write(m.join("f"), b"contents").unwrap();
    link.refuse(true);
    link.cut();
    // Within the bound plus a little: an error, not a hang.
    let started = Instant::now();
    let path = m.join("f");
    let err = within(Duration::from_secs(30), move || {
        fs::metadata(path).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    // Past the bound: at once.
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let path = m.join("g");
    let err = within(Duration::from_secs(30), move || {
        fs::write(path, b"x").unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Back: the mount recovers by itself.
    link.refuse(false);
    let path = m.join("f");
    assert!(
        wait_until(Duration::from_secs(60), || fs::read(&path)
            .is_ok_and(|d| d == b"contents")),
        "the mount did not recover; log: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    fs::write(m.join("g"), b"written after").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("g")).unwrap(),
        b"written after"
    );
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("reconnection attempt 1 failed"), "{log}");
}

#[test]
fn after_an_outage_longer_than_reconnect_wait_the_first_access_reconnects() {
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 5, "reconnect_wait=2");
    fs::write(m.join("f"), b"before").unwrap();
    link.refuse(true);
    link.cut();
    // Down long past reconnect_wait, and long enough for the backoff to grow: attempts at
    // 1, 3 and 7 s (give or take a quarter), the fourth not before 11.25 s.
    std::thread::sleep(Duration::from_secs(9));
    link.refuse(false);
    // The first access asks for an attempt and waits for it, as sshfs's first access does.
    let path = m.join("g");
    within(Duration::from_secs(30), move || fs::write(path, b"after")).unwrap_or_else(|e| {
        panic!(
            "the first access after the outage failed: {e}; log: {}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(fs::read(sshd.remote_root().join("g")).unwrap(), b"after");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"before");
}

#[test]
fn umount_works_while_the_server_is_unreachable() {
    let sshd = Sshd::start();
    let (m, link, _log, _logdir) = far_mount_with_log(&sshd, 5, "reconnect_wait=2");
    fs::write(m.join("f"), b"contents").unwrap();
    link.refuse(true);
    link.cut();
    std::thread::sleep(Duration::from_millis(500));
    let unmounted = m.unmount();
    assert!(unmounted.success(), "{unmounted:?}");
}

#[test]
fn reconnect_no_leaves_the_mount_down() {
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 5, "reconnect=no,reconnect_wait=2");
    fs::write(m.join("f"), b"contents").unwrap();
    link.cut();
    // Once the mount has seen the loss (a moment after the cut: until then it may still answer
    // from what it holds, as for a small file read back), reading fails with EIO.
    let path = m.join("f");
    let down = within(Duration::from_secs(40), move || {
        wait_until(Duration::from_secs(30), || {
            fs::read(&path).is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
        })
    });
    assert!(down, "reading f never failed with EIO after the cut");
    std::thread::sleep(Duration::from_secs(3));
    // A name the mount has never asked about: only the server can answer (ENOENT).
    assert_eq!(
        fs::metadata(m.join("never-asked"))
            .map_err(|e| e.raw_os_error())
            .unwrap_err(),
        Some(libc::EIO),
        "reconnected with reconnect=no"
    );
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("not reconnecting"), "{log}");
}

const MIB: usize = 1 << 20;

/// Writes `data` to `path` (1 MiB at a time, then fsync) on a thread; the closure tells how much
/// was accepted so far.
fn spawn_writer(
    path: PathBuf,
    data: &[u8],
) -> (
    std::thread::JoinHandle<std::io::Result<()>>,
    impl Fn() -> usize,
) {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let (data, counter) = (data.to_vec(), accepted.clone());
    let writer = std::thread::spawn(move || {
        let mut f = fs::File::create(path)?;
        for chunk in data.chunks(MIB) {
            f.write_all(chunk)?;
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        f.sync_all()
    });
    (writer, move || accepted.load(Ordering::Relaxed))
}

#[test]
fn a_writer_carries_on_across_a_cut_and_the_server_file_is_byte_identical() {
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 20, "");
    let data = random_bytes(80 * MIB, 21);
    let (writer, accepted) = spawn_writer(m.join("big"), &data);
    assert!(wait_until(Duration::from_secs(60), || accepted() >= 16 * MIB));
    // Down for 2 s: the first reconnection attempts are refused.
    link.refuse(true);
    link.cut();
    std::thread::sleep(Duration::from_secs(2));
    link.refuse(false);
    let written = within(Duration::from_secs(120), move || writer.join().unwrap());
    let log = fs::read_to_string(&log).unwrap_or_default();
    written.unwrap_or_else(|e| panic!("the writer failed across the cut: {e}; log: {log}"));
    assert!(log.contains("reopened 1 of 1 open files"), "{log}");
    let on_server = fs::read(sshd.remote_root().join("big")).unwrap();
    assert_eq!(on_server.len(), data.len());
    if let Some(at) = (0..data.len()).find(|&i| on_server[i] != data[i]) {
        panic!("server byte {at} differs after the cut");
    }
}

#[test]
fn readers_carry_on_across_a_cut_and_read_every_byte_right() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let sshd = Sshd::start();
    random_file(sshd.remote_root().join("f"), 32 * MIB as u64, 22);
    let expected = fs::read(sshd.remote_root().join("f")).unwrap();
    let (m, link, _log, _logdir) = far_mount_with_log(&sshd, 10, "");
    // Sequential, through the read-ahead.
    let mut f = fs::File::open(m.join("f")).unwrap();
    let mut got = vec![0u8; expected.len()];
    f.read_exact(&mut got[..8 * MIB]).unwrap();
    link.cut();
    f.read_exact(&mut got[8 * MIB..]).unwrap();
    assert!(got == expected, "sequential read differs after the cut");
    // Random reads on another descriptor, across another cut.
    let g = fs::File::open(m.join("f")).unwrap();
    let mut x = 7u64;
    for i in 0..400 {
        if i == 200 {
            link.cut();
        }
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let at = (x >> 20) as usize % (expected.len() - 4096);
        let mut buf = [0u8; 4096];
        g.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf[..] == expected[at..at + 4096], "random read at {at}");
    }
}

#[test]
fn a_file_replaced_on_the_server_during_a_cut_fails_its_writer_and_is_left_alone() {
    use std::io::Write;
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 5, "");
    let mut f = fs::File::create(m.join("f")).unwrap();
    f.write_all(&random_bytes(4 * MIB, 23)).unwrap();
    f.sync_all().unwrap();
    link.refuse(true);
    link.cut();
    let remote = sshd.remote_root().join("f");
    fs::remove_file(&remote).unwrap();
    fs::write(&remote, b"the replacement").unwrap();
    link.refuse(false);
    let outcome = within(Duration::from_secs(60), move || {
        f.write_all(&random_bytes(MIB, 24))?;
        f.sync_all()
    });
    let err = outcome.expect_err("the writer of a replaced file must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(&remote).unwrap(), b"the replacement");
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("cannot be reopened"), "{log}");
}

#[test]
fn a_black_hole_is_noticed_without_any_fin_and_open_files_go_on_after_it() {
    let sshd = Sshd::start();
    // Short timeouts so that the black hole is noticed within the test's time: requests
    // unanswered for 4 s, then a probe of the connection (10 s).
    let (m, link, log, _logdir) =
        far_mount_with_log(&sshd, 10, "request_timeout=4,ConnectTimeout=5");
    let data = random_bytes(48 * MIB, 25);
    let (writer, accepted) = spawn_writer(m.join("big"), &data);
    assert!(wait_until(Duration::from_secs(60), || accepted() >= 8 * MIB));
    link.black_hole(true);
    std::thread::sleep(Duration::from_secs(18));
    link.black_hole(false);
    let written = within(Duration::from_secs(120), move || writer.join().unwrap());
    let log = fs::read_to_string(&log).unwrap_or_default();
    written.unwrap_or_else(|e| panic!("the writer failed across the black hole: {e}; log: {log}"));
    assert!(log.contains("stalled"), "{log}");
    assert!(log.contains("reconnected"), "{log}");
    let on_server = fs::read(sshd.remote_root().join("big")).unwrap();
    assert!(
        on_server == *data,
        "the server's file differs after the black hole"
    );
    fs::write(m.join("after"), b"after").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("after")).unwrap(),
        b"after"
    );
}

#[test]
fn a_suspend_of_a_minute_is_survived_with_the_default_settings() {
    // A laptop asleep for a minute: nothing delivered either way, no FIN. Whatever the mount
    // notices first (keepalives unanswered after 45 s, requests after 60 s), the writer that
    // was mid-file finishes without an error once the link is back, and no byte is wrong.
    let sshd = Sshd::start();
    let (m, link, log, _logdir) = far_mount_with_log(&sshd, 10, "");
    let data = random_bytes(32 * MIB, 26);
    let (writer, accepted) = spawn_writer(m.join("asleep"), &data);
    assert!(wait_until(Duration::from_secs(60), || accepted() >= 4 * MIB));
    link.black_hole(true);
    std::thread::sleep(Duration::from_secs(60));
    link.black_hole(false);
    let written = within(Duration::from_secs(180), move || writer.join().unwrap());
    let log = fs::read_to_string(&log).unwrap_or_default();
    written.unwrap_or_else(|e| panic!("the writer failed across the suspend: {e}; log: {log}"));
    let on_server = fs::read(sshd.remote_root().join("asleep")).unwrap();
    assert!(
        on_server == *data,
        "the server's file differs after the suspend"
    );
    let path = m.join("after");
    within(Duration::from_secs(60), move || fs::write(path, b"after")).unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("after")).unwrap(),
        b"after"
    );
}

#[test]
fn sshd_restarted_with_another_host_key_is_refused_and_the_mount_stays_down() {
    let mut sshd = Sshd::start();
    let (m, _link, log, _logdir) = far_mount_with_log(&sshd, 2, "reconnect_wait=3");
    fs::write(m.join("f"), b"contents").unwrap();
    // Another host key where the server was: a man in the middle, as far as we can tell.
    let key = sshd.host_key_path();
    fs::remove_file(&key).unwrap();
    let _ = fs::remove_file(key.with_extension("pub"));
    keygen(&key, "another-host-key");
    sshd.kill_connections();
    sshd.restart();
    let path = m.join("f");
    assert!(
        wait_until(Duration::from_secs(30), || fs::read_to_string(&log)
            .is_ok_and(
                |l| l.contains("refused") && l.to_lowercase().contains("host key")
            )),
        "no refusal in the log: {}; known_hosts: {}",
        fs::read_to_string(&log).unwrap_or_default(),
        fs::read_to_string(sshd.known_hosts_path()).unwrap_or_default()
    );
    let err = within(Duration::from_secs(30), move || fs::read(path).unwrap_err());
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn changes_in_flight_at_the_cut_are_applied_once_or_fail() {
    // The server carries out the first change of "target" but its reply never comes; the
    // connection is cut meanwhile. A MKDIR, REMOVE or RENAME is sent again on the next
    // connection, whose answer (EEXIST, ENOENT) says it was made: the program is told it
    // worked. An exclusive create is not sent again (EEXIST would not say whose file it is):
    // EIO. Each is made exactly once.
    type Change = fn(&std::path::Path) -> std::io::Result<()>;
    type Check = fn(&std::path::Path) -> bool;
    let cases: [(&str, Change, Check, bool); 4] = [
        (
            "mkdir",
            |m| fs::create_dir(m.join("target")),
            |r| r.join("target").is_dir(),
            true,
        ),
        (
            "exclusive create",
            |m| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(m.join("target"))
                    .map(drop)
            },
            |r| r.join("target").is_file(),
            false,
        ),
        (
            "unlink",
            |m| fs::remove_file(m.join("target")),
            |r| !r.join("target").exists(),
            true,
        ),
        (
            "rename",
            |m| fs::rename(m.join("target"), m.join("renamed")),
            |r| !r.join("target").exists() && r.join("renamed").is_file(),
            true,
        ),
    ];
    for (what, change, done, succeeds) in cases {
        let sshd = Sshd::start_faulty(&["stall-change-once=target"]);
        if what == "unlink" || what == "rename" {
            fs::write(sshd.remote_root().join("target"), b"t").unwrap();
        }
        let (m, link, _log, _logdir) = far_mount_with_log(&sshd, 2, "");
        // The kernel looks the name up first: answered, it is not a change.
        let _ = fs::metadata(m.join("target"));
        let mount = m.path().to_owned();
        let changing = std::thread::spawn(move || change(&mount));
        std::thread::sleep(Duration::from_secs(1));
        link.cut();
        let result = within(Duration::from_secs(60), move || changing.join().unwrap());
        if succeeds {
            result.unwrap_or_else(|e| panic!("{what}: {e}"));
        } else {
            let e = result.expect_err(what);
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
        }
        assert!(
            sshd.remote_root().join(".stalled-target").exists(),
            "{what}: the first was stalled"
        );
        assert!(done(&sshd.remote_root()), "{what}: applied once");
    }
}

#[test]
fn a_password_given_at_mount_time_serves_the_reconnection() {
    let sshd = Sshd::start_with_password_auth();
    let password = "pw-Zz9!long enough";
    let m = sshd.mount_with_password(password);
    fs::write(m.join("before"), b"x").unwrap();
    // Every connection's sshd and sftp-server killed: the connection drops, sshd listens on.
    assert!(sshd.kill_connections() > 0);
    let path = m.join("after");
    within(Duration::from_secs(30), move || fs::write(path, b"y"))
        .expect("a write after the reconnection, with the password kept in memory");
    assert_eq!(fs::read(sshd.remote_root().join("after")).unwrap(), b"y");
}

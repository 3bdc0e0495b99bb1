//! No silent loss or misplaced data, whatever other programs do at the same time: a name
//! unlinked or replaced under a writer, two descriptors and an mmap writing the same range,
//! fsync through any descriptor, a writer that never pauses, and a shutdown in the middle of a
//! write. Every check reads the server's copy: a read through the mount may be served by the
//! kernel's page cache and hide a wrong server file.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn a_writer_never_writes_into_a_file_that_took_its_name() {
    let sshd = Sshd::start();
    let m = Mount::far(&sshd, 20, &[]);
    let remote = sshd.remote_root();
    let data = random_bytes(16 * MIB, 1);

    // Unlinked and created again through the mount while the writer goes on: the writer's
    // later writes (spread over more channels after 2 MiB) must not reopen the name.
    let mut f = File::create(m.join("f")).unwrap();
    f.write_all(&data[..MIB]).unwrap();
    fs::remove_file(m.join("f")).unwrap();
    fs::write(m.join("f"), b"new file\n").unwrap();
    f.write_all(&data[MIB..]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(remote.join("f")).unwrap(), b"new file\n");

    // Renamed over through the mount: the name now reaches the other file.
    fs::write(m.join("other"), b"the other file\n").unwrap();
    let mut g = File::create(m.join("g")).unwrap();
    g.write_all(&data[..MIB]).unwrap();
    fs::rename(m.join("other"), m.join("g")).unwrap();
    g.write_all(&data[MIB..]).unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert_eq!(fs::read(remote.join("g")).unwrap(), b"the other file\n");

    // Renamed away: the writer's data follows the file to its new name.
    let mut h = File::create(m.join("h")).unwrap();
    h.write_all(&data[..MIB]).unwrap();
    fs::rename(m.join("h"), m.join("h2")).unwrap();
    h.write_all(&data[MIB..]).unwrap();
    h.sync_all().unwrap();
    drop(h);
    assert!(files_equal(remote.join("h2"), write_tmp(&data)));

    // Replaced on the server itself, behind the mount's back.
    let mut k = File::create(m.join("k")).unwrap();
    k.write_all(&data[..MIB]).unwrap();
    k.sync_all().unwrap();
    fs::remove_file(remote.join("k")).unwrap();
    fs::write(remote.join("k"), b"server's new file\n").unwrap();
    k.write_all(&data[MIB..]).unwrap();
    k.sync_all().unwrap();
    drop(k);
    assert_eq!(fs::read(remote.join("k")).unwrap(), b"server's new file\n");
}

/// `data` in a local temporary file, to compare with a server file.
fn write_tmp(data: &[u8]) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("sftpmount-expected-")
        .tempdir()
        .unwrap()
        .keep();
    let path = dir.join("expected");
    fs::write(&path, data).unwrap();
    path
}

#[test]
fn fsync_through_any_descriptor_waits_for_every_earlier_write_of_the_file() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let m = Mount::far(&sshd, 50, &[]);
    let remote = sshd.remote_root().join("f");
    let data = random_bytes(8 * MIB, 2);
    let mut w = File::create(m.join("f")).unwrap();
    // Accepted into the write buffer: most of it is still on its way over a 100 ms link.
    w.write_all(&data).unwrap();
    let before = recorder.requests();
    let r = File::open(m.join("f")).unwrap();
    r.sync_all().unwrap();
    assert!(
        fs::read(&remote).unwrap() == data,
        "fsync of a read-only descriptor returned before the other descriptor's writes landed"
    );
    let during = recorder.requests().since(&before);
    assert!(
        during.count("EXTENDED") >= 1,
        "no fsync@openssh.com sent: {during:?}"
    );

    // `sync FILE` is the same, from a program.
    let more = random_bytes(4 * MIB, 3);
    w.write_all(&more).unwrap();
    run("sync", &[m.join("f")], "/");
    let on_server = fs::read(&remote).unwrap();
    assert_eq!(on_server.len(), data.len() + more.len(), "sync FILE");
    assert!(on_server[data.len()..] == more[..], "sync FILE");
}

#[test]
fn a_writer_that_never_pauses_does_not_starve_fsync_or_close() {
    let sshd = Sshd::start();
    let m = Mount::far(&sshd, 20, &[]);
    let path = m.join("busy");
    File::create(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let chunk = random_bytes(MIB, 4);
            let started = Instant::now();
            let mut i = 0u64;
            // Rewrites a 16 MiB region forever, until told to stop (or gives up).
            while !stop.load(Ordering::Relaxed) {
                if started.elapsed() > Duration::from_secs(90) {
                    return false;
                }
                f.write_all_at(&chunk, (i % 16) * MIB as u64).unwrap();
                i += 1;
            }
            true
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (p1, p2) = (path.clone(), path.clone());
    within(Duration::from_secs(60), move || {
        OpenOptions::new().write(true).open(&p1).unwrap().sync_all()
    })
    .expect("fsync through a second descriptor");
    within(Duration::from_secs(60), move || {
        File::open(&p2).unwrap().sync_all()
    })
    .expect("fsync through a read-only descriptor");
    within(Duration::from_secs(60), move || {
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.flush()
    })
    .expect("close of a second writer");
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.join().unwrap(),
        "the writer was still writing when the barriers returned"
    );
}

#[test]
fn overlapping_writes_of_two_descriptors_and_an_mmap_land_in_order() {
    let sshd = Sshd::start();
    let m = Mount::far(&sshd, 10, &[]);
    let size = 8 * MIB;
    let path = m.join("shared");
    fs::write(&path, vec![0u8; size]).unwrap();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut expected = vec![0u8; size];
    for round in 1..=4u8 {
        // a rewrites the whole file (spread over channels), then b the middle of it, at once.
        let whole = vec![round * 2; size];
        a.write_all_at(&whole, 0).unwrap();
        expected.copy_from_slice(&whole);
        let middle = vec![round * 2 + 1; size / 2];
        b.write_all_at(&middle, (size / 4) as u64).unwrap();
        expected[size / 4..size / 4 + size / 2].copy_from_slice(&middle);
    }
    // A shared mmap writes the first MiB back from the page cache; then b writes over it.
    let c = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                c.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: `map` is MIB bytes long and writable.
        unsafe {
            std::ptr::write_bytes(map as *mut u8, 0xAA, MIB);
            assert_eq!(libc::msync(map, MIB, libc::MS_ASYNC), 0);
        }
        b.write_all_at(&vec![0xBB; MIB / 2], 0).unwrap();
        expected[..MIB / 2].fill(0xBB);
        expected[MIB / 2..MIB].fill(0xAA);
        // SAFETY: as above.
        unsafe {
            assert_eq!(libc::msync(map, MIB, libc::MS_SYNC), 0);
            assert_eq!(libc::munmap(map, MIB), 0);
        }
    }
    for f in [&a, &b, &c] {
        f.sync_all().unwrap();
    }
    drop((a, b, c));
    let on_server = fs::read(sshd.remote_root().join("shared")).unwrap();
    assert_eq!(on_server.len(), size);
    if let Some(at) = (0..size).find(|&i| on_server[i] != expected[i]) {
        panic!(
            "server byte {at} is {:#x}, expected {:#x}: an older write landed last",
            on_server[at], expected[at]
        );
    }
}

#[test]
fn sigterm_during_a_write_loses_nothing_that_was_accepted() {
    let sshd = Sshd::start();
    let logdir = tempfile::Builder::new()
        .prefix("sftpmount-log-")
        .tempdir()
        .unwrap();
    let log = logdir.path().join("log");
    let m = Mount::far(&sshd, 20, &["-o", &format!("logfile={}", log.display())]);
    let path = m.join("big");
    let data = Arc::new(random_bytes(4 * MIB, 5));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (data, progress) = (data.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut f = File::create(&path).unwrap();
            let mut accepted = 0usize;
            // Until refused: 1 GiB at most.
            for _ in 0..256 {
                let mut pos = 0;
                while pos < data.len() {
                    match f.write(&data[pos..]) {
                        Ok(n) => {
                            pos += n;
                            accepted += n;
                            progress.store(accepted, Ordering::Relaxed);
                        }
                        Err(e) => return (accepted, Some(e)),
                    }
                }
            }
            (accepted, f.sync_all().err())
        })
    };
    assert!(wait_until(Duration::from_secs(60), || progress
        .load(Ordering::Relaxed)
        >= 16 * MIB));
    assert!(m.signal_daemon(libc::SIGTERM));
    let (accepted, error) = within(Duration::from_secs(120), move || writer.join().unwrap());
    assert!(
        m.wait_daemon_exit(Duration::from_secs(60)),
        "the daemon did not exit"
    );
    assert!(
        error.is_some(),
        "the writer was never refused ({accepted} bytes)"
    );
    let on_server = fs::read(sshd.remote_root().join("big")).unwrap();
    assert!(
        on_server.len() >= accepted,
        "{accepted} bytes accepted, {} on the server",
        on_server.len()
    );
    for (i, chunk) in on_server[..accepted].chunks(data.len()).enumerate() {
        assert!(
            chunk == &data[..chunk.len()],
            "wrong bytes in round {i} on the server"
        );
    }
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains("did not reach the server"),
        "nothing was lost, yet the log says: {log}"
    );
}

#[test]
fn writes_lost_at_shutdown_are_logged_with_file_and_bytes() {
    // The server stops reading at the first WRITE: what the writer was told is accepted cannot
    // reach it. SIGTERM must not end the process as if all were well.
    let sshd = Sshd::start_faulty(&["freeze-on-write=60"]);
    let logdir = tempfile::Builder::new()
        .prefix("sftpmount-log-")
        .tempdir()
        .unwrap();
    let log = logdir.path().join("log");
    let m = Mount::new(
        &sshd,
        &[
            "-o",
            &format!(
                "logfile={},request_timeout=3,sftp_channels=1",
                log.display()
            ),
        ],
    );
    // Less than a file may hold unacked before the link's rate is known: all of it accepted.
    let mut f = File::create(m.join("doomed")).unwrap();
    f.write_all(&random_bytes(2 * MIB, 11)).unwrap();
    assert!(m.signal_daemon(libc::SIGTERM));
    assert!(
        m.wait_daemon_exit(Duration::from_secs(30)),
        "the daemon did not exit"
    );
    drop(f);
    let log = fs::read_to_string(&log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("did not reach the server"))
        .unwrap_or_else(|| panic!("no loss in the log: {log}"));
    assert!(line.contains("/doomed"), "{line}");
    // `TIME ERROR MOUNTPOINT: N bytes written to PATH did not reach the server: ...`
    let words: Vec<&str> = line.split_whitespace().collect();
    let bytes: u64 = words
        .iter()
        .position(|w| *w == "bytes")
        .and_then(|i| words.get(i.checked_sub(1)?))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {line}"));
    assert!(
        line.contains(&format!("ERROR {}: ", m.path().display())),
        "{line}"
    );
    assert!(bytes > 0 && bytes <= 2 * MIB as u64, "{line}");
}

//! The pipelined write engine through real mounts: a full disk reports ENOSPC, memory stays
//! bounded for a writer faster than the link, concurrent and random-offset writers end
//! byte-identical on the server, writes are taken whole (short counts reach write(2) only with short_writes).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;

#[test]
fn full_disk_reports_enospc_not_eio_and_the_mount_stays_usable() {
    let sshd = Sshd::start();
    let _disk = SmallDisk::new(&sshd.remote_root().join("small"), "32m");
    let m = Mount::new(&sshd, &[]);
    let path = m.join("small/big");
    let errno = within(Duration::from_secs(120), move || {
        let mut f = File::create(&path).unwrap();
        let chunk = random_bytes(1 << 20, 5);
        for _ in 0..64 {
            if let Err(e) = f.write_all(&chunk) {
                return e.raw_os_error();
            }
        }
        if let Err(e) = f.sync_all() {
            return e.raw_os_error();
        }
        // close(2) is the last place the error may surface.
        let fd = f.into_raw_fd();
        if unsafe { libc::close(fd) } != 0 {
            return std::io::Error::last_os_error().raw_os_error();
        }
        None
    });
    assert_eq!(
        errno,
        Some(libc::ENOSPC),
        "64 MiB into 32 MiB must fail with ENOSPC"
    );
    // Still usable: other writes and reads work.
    fs::write(m.join("after"), b"still fine").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("after")).unwrap(),
        b"still fine"
    );
    fs::remove_file(m.join("small/big")).unwrap();
    // The server frees the space once the last handle on "big" is closed, which the kernel's
    // asynchronous release of the writer's descriptor does a moment after close(2) returned;
    // until then a write fails with ENOSPC at fsync (never silently).
    let again = m.join("small/again");
    let mut failures = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let written = File::create(&again).and_then(|mut f| {
                f.write_all(b"space again")?;
                f.sync_all()
            });
            match written {
                Ok(()) => true,
                Err(e) => {
                    failures.push(e.raw_os_error());
                    false
                }
            }
        }),
        "writes never succeeded after the big file was removed: {failures:?}"
    );
    assert!(
        failures.iter().all(|&e| e == Some(libc::ENOSPC)),
        "{failures:?}"
    );
    assert_eq!(
        fs::read(sshd.remote_root().join("small/again")).unwrap(),
        b"space again"
    );
}

#[test]
fn memory_stays_bounded_for_a_writer_faster_than_the_link() {
    let sshd = Sshd::start();
    // 20 ms each way: far slower than a local writer.
    let m = Mount::far(&sshd, 20, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 384 << 20, 8);
    run(
        "dd",
        &[
            format!("if={}", src.display()),
            format!("of={}", m.join("big").display()),
            "bs=1M".into(),
            "status=none".into(),
        ],
        "/",
    );
    let hwm_mib = m.daemon_vm_hwm_kib() / 1024;
    assert!(
        hwm_mib <= 128,
        "peak RSS {hwm_mib} MiB exceeds the 128 MiB cap"
    );
    assert_files_equal(&src, sshd.remote_root().join("big"));
}

#[test]
fn eight_writers_to_eight_files() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let path = m.join(format!("w{i}"));
            std::thread::spawn(move || {
                let data = random_bytes(24 << 20, 100 + i);
                let mut f = File::create(&path).unwrap();
                for chunk in data.chunks(128 * 1024 + 7) {
                    f.write_all(chunk).unwrap();
                }
                f.sync_all().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..8u64 {
        assert_eq!(
            fs::read(sshd.remote_root().join(format!("w{i}"))).unwrap(),
            random_bytes(24 << 20, 100 + i),
            "file w{i}"
        );
    }
}

#[test]
fn four_writers_to_ranges_of_one_file() {
    let sshd = Sshd::start();
    let m = Mount::far(&sshd, 5, &[]);
    let part = 16usize << 20;
    File::create(m.join("shared")).unwrap();
    let threads: Vec<_> = (0..4usize)
        .map(|i| {
            let path = m.join("shared");
            std::thread::spawn(move || {
                let data = random_bytes(part, 200 + i as u64);
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                for (k, chunk) in data.chunks(300_001).enumerate() {
                    f.write_all_at(chunk, (i * part + k * 300_001) as u64)
                        .unwrap();
                }
                f.sync_all().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let remote = fs::read(sshd.remote_root().join("shared")).unwrap();
    assert_eq!(remote.len(), 4 * part);
    for i in 0..4usize {
        assert!(
            remote[i * part..(i + 1) * part] == random_bytes(part, 200 + i as u64)[..],
            "range {i} differs"
        );
    }
}

#[test]
fn random_offset_overlapping_writes_end_identical() {
    let sshd = Sshd::start();
    // Far enough that writes are in flight on several channels at once.
    let m = Mount::far(&sshd, 10, &[]);
    let local = tempfile::tempdir().unwrap();
    let reference = File::create(local.path().join("ref")).unwrap();
    let mounted = File::create(m.join("random")).unwrap();
    let mut rng = RandomBytes::new(77);
    let size = 48u64 << 20;
    for round in 0..500u64 {
        let len = (rng.next_u64() % (700 * 1024)) as usize + 1;
        let offset = rng.next_u64() % (size - len as u64);
        let data = random_bytes(len, 1000 + round);
        reference.write_all_at(&data, offset).unwrap();
        mounted.write_all_at(&data, offset).unwrap();
    }
    drop(mounted);
    reference.sync_all().unwrap();
    assert_files_equal(local.path().join("ref"), sshd.remote_root().join("random"));
    // And reads through the mount agree too.
    assert_files_equal(local.path().join("ref"), m.join("random"));
}

/// write(2) of `buf` at the file's position; returns how many calls came back short.
fn write_counting_short(f: &File, buf: &[u8]) -> usize {
    use std::os::fd::AsRawFd;
    let mut shorts = 0;
    let mut done = 0;
    while done < buf.len() {
        let want = buf.len() - done;
        let n = unsafe { libc::write(f.as_raw_fd(), buf[done..].as_ptr().cast(), want) };
        assert!(
            n > 0,
            "write(2) returned {n}: {}",
            std::io::Error::last_os_error()
        );
        if (n as usize) < want {
            shorts += 1;
        }
        done += n as usize;
    }
    shorts
}

#[test]
fn a_write_is_taken_whole_unless_short_counts_are_asked_for() {
    let sshd = Sshd::start();
    let data = random_bytes(24 << 20, 9);
    // A program that ignores write(2)'s count (as many do for regular files): by default a
    // full buffer makes the write wait, so nothing is lost.
    let m = Mount::far(&sshd, 20, &["-o", "write_buffer=1M,write_buffer_total=1M"]);
    let f = File::create(m.join("whole")).unwrap();
    let mut shorts = 0;
    for chunk in data.chunks(4 << 20) {
        use std::os::fd::AsRawFd;
        let n = unsafe { libc::write(f.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
        assert!(n > 0, "write(2): {}", std::io::Error::last_os_error());
        shorts += usize::from((n as usize) < chunk.len());
    }
    drop(f);
    assert_eq!(shorts, 0, "write(2) returned a short count");
    assert_same_file(&sshd.remote_root().join("whole"), &data);
    drop(m);

    let m = Mount::far(
        &sshd,
        20,
        &["-o", "write_buffer=1M,write_buffer_total=1M,short_writes"],
    );
    let f = File::create(m.join("short")).unwrap();
    let mut shorts = 0;
    for chunk in data.chunks(1 << 20) {
        shorts += write_counting_short(&f, chunk);
    }
    drop(f);
    assert!(
        shorts > 0,
        "short_writes: a full 1 MiB buffer answers with short counts"
    );
    assert_same_file(&sshd.remote_root().join("short"), &data);
}

/// The server's file holds exactly `data` (compared without dumping megabytes).
fn assert_same_file(path: &std::path::Path, data: &[u8]) {
    let got = fs::read(path).unwrap();
    assert_eq!(got.len(), data.len(), "{}: length", path.display());
    assert!(got == data, "{}: contents differ", path.display());
}

#[test]
fn dd_onto_a_full_disk_fails_and_leaves_a_clean_prefix() {
    let sshd = Sshd::start();
    let _disk = SmallDisk::new(&sshd.remote_root().join("small"), "5m");
    let src = tempfile::NamedTempFile::new().unwrap();
    random_file(src.path(), 10 << 20, 91);
    let m = Mount::new(&sshd, &[]);
    let out = try_run(
        "dd",
        &[
            format!("if={}", src.path().display()),
            format!("of={}", m.join("small/out").display()),
            "bs=1M".into(),
            "count=10".into(),
        ],
        "/",
    );
    assert!(!out.status.success(), "dd onto a full disk succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What is on the server is what dd wrote, from its start to where it ends: no hole, and
    // nothing after one (a resuming tool would build on it).
    let landed = fs::read(sshd.remote_root().join("small/out")).unwrap();
    let written = fs::read(src.path()).unwrap();
    assert!(!landed.is_empty() && landed.len() < written.len());
    let differs = landed.iter().zip(&written).position(|(a, b)| a != b);
    assert_eq!(
        differs,
        None,
        "the server's {} bytes differ from what dd wrote",
        landed.len()
    );
}

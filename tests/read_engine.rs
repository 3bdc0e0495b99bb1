//! The read-ahead through real mounts over a far link: sequential reads of odd sizes across the
//! window's growth, random reads at many offsets and sizes, all byte-identical to the server.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use common::*;

#[test]
fn sequential_and_random_reads_are_byte_identical() {
    let sshd = Sshd::start();
    let len = 40 * 1024 * 1024 + 4321;
    random_file(sshd.remote_root().join("big"), len as u64, 31);
    let original = fs::read(sshd.remote_root().join("big")).unwrap();
    let m = Mount::far(&sshd, 5, &[]);

    for bufsize in [100_003usize, 1 << 20, 4096] {
        let mut f = File::open(m.join("big")).unwrap();
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; bufsize];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got == original,
            "sequential read with {bufsize}-byte buffers differs"
        );
    }

    let f = File::open(m.join("big")).unwrap();
    let mut rng = RandomBytes::new(5);
    for _ in 0..300 {
        let size = (rng.next_u64() % 300_000) as usize + 1;
        let offset = rng.next_u64() % (len as u64 + 1000);
        let mut buf = vec![0u8; size];
        let n = f.read_at(&mut buf, offset).unwrap();
        let start = (offset as usize).min(len);
        let end = (offset as usize + size).min(len);
        assert_eq!(n, end - start, "size at {offset}+{size}");
        assert!(buf[..n] == original[start..end], "data at {offset}+{size}");
    }
}

#[test]
fn reads_see_writes_and_truncates_through_the_mount() {
    let sshd = Sshd::start();
    random_file(sshd.remote_root().join("f"), 8 << 20, 3);
    let m = Mount::far(&sshd, 2, &[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("f"))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // Sequential reads fill the read-ahead, then a write lands inside it.
    f.read_exact_at(&mut buf, 0).unwrap();
    f.read_exact_at(&mut buf, 1 << 20).unwrap();
    f.write_all_at(&[0xAB; 5000], (2 << 20) + 100).unwrap();
    f.read_exact_at(&mut buf, 2 << 20).unwrap();
    assert!(
        buf[100..5100].iter().all(|&b| b == 0xAB),
        "read-ahead served stale data"
    );
    f.set_len(3 << 20).unwrap();
    let mut rest = Vec::new();
    let mut g = File::open(m.join("f")).unwrap();
    g.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), 3 << 20);
    assert_eq!(rest, fs::read(sshd.remote_root().join("f")).unwrap());
}

#[test]
fn a_file_growing_on_the_server_is_read_on_the_same_descriptor() {
    let sshd = Sshd::start();
    let remote = sshd.remote_root().join("log");
    random_file(&remote, 3 << 20, 8);
    let m = Mount::far(&sshd, 2, &["-o", "dcache_timeout=1"]);
    let mut f = File::open(m.join("log")).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 3 << 20);

    // Appended on the server, as a log being written there: `tail -f` reads on from the end.
    let mut more = vec![0u8; 700_000];
    RandomBytes::new(9).fill(&mut more);
    OpenOptions::new()
        .append(true)
        .open(&remote)
        .unwrap()
        .write_all(&more)
        .unwrap();
    let mut tail = Vec::new();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            f.read_to_end(&mut tail).unwrap();
            tail.len() >= more.len()
        }),
        "read {} of {} appended bytes",
        tail.len(),
        more.len()
    );
    assert!(tail == more, "appended bytes differ");
}

#[test]
fn a_small_file_read_at_random_costs_one_fetch_of_all_of_it() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let len = 300_000u64;
    random_file(sshd.remote_root().join("pack"), len, 12);
    let original = fs::read(sshd.remote_root().join("pack")).unwrap();
    let m = Mount::new(&sshd, &[]);
    // `git index-pack` and linkers read small files at random offsets; the kernel's own
    // read-ahead is off for them, so each page it lacks is a READ of its own.
    let f = File::open(m.join("pack")).unwrap();
    use std::os::unix::io::AsRawFd;
    let advised = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(advised, 0);
    let before = recorder.settled();
    let mut rng = RandomBytes::new(13);
    let mut buf = vec![0u8; 4096];
    for _ in 0..40 {
        let offset = rng.next_u64() % (len - 4096) / 4096 * 4096;
        f.read_exact_at(&mut buf, offset).unwrap();
        let at = offset as usize;
        assert!(
            buf[..] == original[at..at + 4096],
            "bytes at {offset} differ"
        );
    }
    let cost = recorder.settled().since(&before);
    // Two READs away from each other, then the whole file (in the server's largest READs).
    assert!(cost.count("READ") <= 6, "{cost:?}");
    assert!(cost.read_bytes <= len + 3 * 4096, "{cost:?}");
}

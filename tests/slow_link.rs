//! Links as users have them (issue #21): a home uplink's rate with a queue in front of it
//! (tests/common/proxy.rs's `Shape`), a bulk transfer through the mount filling it, and a
//! program that only wants to look around meanwhile.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// `ls -l` of a directory and `cat` of a small file in it, both seen for the first time (so the
/// server is asked): how long they took.
fn look(dir: &Path) -> Duration {
    let started = Instant::now();
    for entry in fs::read_dir(dir).unwrap() {
        entry.unwrap().metadata().unwrap();
    }
    assert_eq!(fs::read(dir.join("small")).unwrap().len(), 2000);
    started.elapsed()
}

#[test]
fn a_small_request_is_answered_promptly_during_a_bulk_upload_and_a_bulk_download() {
    let sshd = Sshd::start();
    let root = sshd.remote_root();
    for look in ["look-idle", "look-up", "look-down"] {
        fs::create_dir(root.join(look)).unwrap();
        fs::write(root.join(look).join("small"), [7u8; 2000]).unwrap();
        fs::write(root.join(look).join("other"), b"x").unwrap();
    }
    let len = 24u64 << 20;
    random_file(root.join("down"), len, 4);
    // 20 Mbit/s each way, 40 ms round trip, 50 ms of queue: 24 MiB take about 10 s.
    let shape = proxy::Shape::rate_limited(Duration::from_millis(20), 20.0);
    let (m, _link) = Mount::shaped(&sshd, shape, &[]);
    let idle = look(&m.join("look-idle"));

    let up = m.join("up");
    let uploading = thread::spawn(move || {
        let mut f = File::create(up).unwrap();
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..len >> 20 {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    });
    thread::sleep(Duration::from_secs(3));
    let during_upload = look(&m.join("look-up"));
    uploading.join().unwrap();
    assert_eq!(fs::metadata(root.join("up")).unwrap().len(), len);

    let down = m.join("down");
    let downloading = thread::spawn(move || {
        let mut got = Vec::new();
        File::open(down).unwrap().read_to_end(&mut got).unwrap();
        got.len() as u64
    });
    thread::sleep(Duration::from_secs(3));
    let during_download = look(&m.join("look-down"));
    assert_eq!(downloading.join().unwrap(), len);

    let bound = Duration::from_millis(1500);
    assert!(
        during_upload < bound && during_download < bound,
        "ls -l + cat took {during_upload:?} during an upload and {during_download:?} during a \
         download ({idle:?} idle) on a 20 Mbit/s link"
    );
}

/// `rsync --progress` over a 2 MB/s uplink showed 100% after 4 s, then sat there for 17 s while
/// 32 MiB drained, and Ctrl-C took 13 s (issue #21): a file may hold only a few seconds of the
/// link's rate unacked, so that write(2) returns about as fast as the link takes the data.
#[test]
fn a_writer_s_progress_follows_a_slow_link() {
    let sshd = Sshd::start();
    // 20 Mbit/s each way: 16 MiB take about 7 s.
    let shape = proxy::Shape::rate_limited(Duration::from_millis(20), 20.0);
    let (m, _link) = Mount::shaped(&sshd, shape, &[]);
    let block = vec![0xa5u8; 1 << 20];
    let mut f = File::create(m.join("up")).unwrap();
    let started = Instant::now();
    for _ in 0..16 {
        f.write_all(&block).unwrap();
    }
    let written = started.elapsed();
    drop(f);
    let closed = started.elapsed();
    assert_eq!(
        fs::metadata(sshd.remote_root().join("up")).unwrap().len(),
        16 << 20
    );
    let drain = closed - written;
    assert!(
        drain < Duration::from_secs(4),
        "the last write(2) returned {written:?} in, the close {closed:?}: {drain:?} of data \
         sat in the mount after the writer was told it was taken"
    );
}

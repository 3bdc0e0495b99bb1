//! The filesystem core driven directly, without FUSE or SSH, through a connector whose
//! connections the test cuts, black-holes and refuses (`tests/common/local_server.rs`: OpenSSH's
//! real sftp-server over pipes). What a writer and a reader see across each fault, and what
//! arrived on the server's disk; and what only shows without FUSE: what a directory read a page
//! at a time costs.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sftpmount::fs::cache::CacheConfig;
use sftpmount::fs::{
    Core, CoreConfig, CreateMode, FsResult, IdMapping, KeepCache, SetAttr, SymlinkMode,
};
use sftpmount::remote::{Remote, RemoteSettings};
use tempfile::TempDir;

use common::local_server::LocalServer;
use common::random_bytes;

const MIB: usize = 1 << 20;
const ROOT: u64 = 1;
const PIECE: usize = 256 * 1024;

struct Fixture {
    server: Arc<LocalServer>,
    core: Arc<Core>,
    dir: TempDir,
}

fn settings() -> RemoteSettings {
    RemoteSettings {
        request_timeout: Duration::from_secs(60),
        sftp_channels: 4,
        reconnect: true,
        reconnect_wait: Duration::from_secs(20),
        far: None,
    }
}

async fn start(settings: RemoteSettings) -> Fixture {
    let dir = TempDir::new().unwrap();
    let server = LocalServer::new();
    let remote = Remote::connect(server.clone(), settings)
        .await
        .expect("connect to the local sftp-server");
    let first = remote.current().await.unwrap();
    let root = Bytes::copy_from_slice(dir.path().as_os_str().as_encoded_bytes());
    let core = Arc::new(Core::new(
        remote,
        &first,
        root,
        CoreConfig {
            ids: IdMapping::default(),
            write_buffer: 8 * MIB,
            write_buffer_total: 64 * MIB,
            short_writes: true,
            cache: CacheConfig::default(),
            keep_cache: KeepCache::default(),
            dir_prefetch: false,
            readahead: true,
            sync_writes: false,
            symlinks: SymlinkMode::default(),
            hardlinks: true,
            rename_failure_is_exdev: false,
            name_max: 255,
            owner_from_caller: false,
        },
    ));
    tokio::spawn(core.clone().background_work());
    Fixture { server, core, dir }
}

impl Fixture {
    async fn create(&self, name: &str) -> u64 {
        let mode = CreateMode {
            mode: 0o644,
            umask: 0o022,
            owner: (0, 0),
        };
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        let (_, fh) = self
            .core
            .create(ROOT, name.as_bytes(), mode, flags, std::process::id())
            .await
            .expect("create");
        fh
    }

    async fn open(&self, name: &str, flags: i32) -> u64 {
        let entry = self
            .core
            .lookup(ROOT, name.as_bytes())
            .await
            .expect("lookup");
        self.core
            .open(entry.attr.ino.0, flags, std::process::id())
            .await
            .expect("open")
            .fh
    }

    /// Writes all of `data` at `offset` as write(2) would: short counts are written on.
    async fn write_all(&self, fh: u64, offset: usize, data: &[u8]) -> FsResult<()> {
        let mut done = 0;
        while done < data.len() {
            let piece = Bytes::copy_from_slice(&data[done..]);
            done += self
                .core
                .write(fh, (offset + done) as u64, piece, false)
                .await? as usize;
        }
        Ok(())
    }

    /// close(2): flush, then release.
    async fn close(&self, fh: u64) -> FsResult<()> {
        let flushed = self.core.flush(fh).await;
        let released = self.core.release(fh).await;
        flushed.and(released)
    }

    /// A small file of one byte, written through the core and closed.
    async fn write_small(&self, name: &str) {
        let fh = self.create(name).await;
        self.write_all(fh, 0, b"x").await.unwrap();
        self.close(fh).await.unwrap();
    }

    /// What the server's disk holds.
    fn on_server(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir.path().join(name)).unwrap()
    }
}

/// Fails with the first difference, not with two multi-megabyte dumps.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_goes_on_across_a_cut_and_every_byte_lands() {
    let f = start(settings()).await;
    let data = random_bytes(24 * MIB, 9);
    let fh = f.create("f").await;
    for (i, piece) in data.chunks(PIECE).enumerate() {
        if i * PIECE == 10 * MIB {
            // Past 2 MiB the file spreads over all four channels: every one of them has
            // writes in flight at the cut.
            f.server.cut();
        }
        f.write_all(fh, i * PIECE, piece)
            .await
            .expect("a write across the cut");
    }
    within(Duration::from_secs(60), "close", f.close(fh))
        .await
        .expect("close after the cut");
    assert_eq!(f.server.connections(), 2, "one reconnection");
    assert_same("the server's file", &f.on_server("f"), &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_across_a_cut_and_every_byte_is_right() {
    let f = start(settings()).await;
    let data = random_bytes(12 * MIB, 10);
    fs::write(f.dir.path().join("r"), &data).unwrap();
    let fh = f.open("r", libc::O_RDONLY).await;
    let mut read = Vec::new();
    while read.len() < data.len() {
        if read.len() == 5 * MIB {
            f.server.cut();
        }
        let got = f
            .core
            .read(fh, read.len() as u64, 128 * 1024)
            .await
            .expect("read");
        assert!(!got.is_empty(), "early end of file at {}", read.len());
        read.extend_from_slice(&got);
    }
    assert_same("a sequential read across a cut", &read, &data);
    // Random reads, with another cut among them.
    for (i, at) in [11 * MIB + 7, 3, 6 * MIB - 100, 9 * MIB + 4096, 1234567]
        .into_iter()
        .enumerate()
    {
        if i == 2 {
            f.server.cut();
        }
        let got = f.core.read(fh, at as u64, 4096).await.expect("read");
        assert_same(
            "a random read",
            &got,
            &data[at..(at + 4096).min(data.len())],
        );
    }
    f.close(fh).await.unwrap();
    assert_eq!(f.server.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_found_and_a_new_connection_carries_the_writes() {
    // Requests unanswered for 2 s, then a probe unanswered (10 s): the connection is left.
    let f = start(RemoteSettings {
        request_timeout: Duration::from_secs(2),
        ..settings()
    })
    .await;
    let data = random_bytes(6 * MIB, 11);
    let fh = f.create("b").await;
    for (i, piece) in data.chunks(PIECE).enumerate() {
        if i * PIECE == MIB {
            f.server.black_hole();
        }
        within(
            Duration::from_secs(60),
            "a write",
            f.write_all(fh, i * PIECE, piece),
        )
        .await
        .expect("a write across the black hole");
    }
    within(Duration::from_secs(60), "close", f.close(fh))
        .await
        .expect("close after the black hole");
    assert_eq!(f.server.connections(), 2);
    assert_same("the server's file", &f.on_server("b"), &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_stays_away_operations_fail_within_the_bound_then_work_again() {
    let wait = Duration::from_secs(3);
    let f = start(RemoteSettings {
        reconnect_wait: wait,
        ..settings()
    })
    .await;
    let fh = f.create("kept").await;
    let first = random_bytes(MIB, 12);
    f.write_all(fh, 0, &first).await.unwrap();
    f.core.flush(fh).await.unwrap();

    f.server.refuse();
    f.server.cut();
    let started = Instant::now();
    let lost = within(
        wait + Duration::from_secs(10),
        "a lookup while down",
        f.core.lookup(ROOT, b"nothing-here"),
    )
    .await;
    assert_eq!(
        lost.err(),
        Some(libc::EIO),
        "a lookup while the server is away"
    );
    assert!(started.elapsed() >= wait - Duration::from_millis(500));
    // Past the bound, new operations fail at once.
    let again = within(
        Duration::from_secs(2),
        "a second lookup while down",
        f.core.lookup(ROOT, b"nothing-here"),
    )
    .await;
    assert_eq!(again.err(), Some(libc::EIO));

    f.server.accept();
    // A name only the server knows: its lookup cannot be answered from the cache.
    fs::write(f.dir.path().join("marker"), b"").unwrap();
    let back = Instant::now();
    loop {
        match f.core.lookup(ROOT, b"marker").await {
            Ok(_) => break,
            Err(e) => assert!(
                back.elapsed() < Duration::from_secs(60),
                "still failing ({e}) a minute after the server came back"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The file opened before the loss goes on.
    let second = random_bytes(MIB, 13);
    f.write_all(fh, MIB, &second)
        .await
        .expect("a write after the server came back");
    f.close(fh).await.expect("close after the server came back");
    assert_same(
        "the server's file",
        &f.on_server("kept"),
        &[first, second].concat(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_during_the_cut_is_left_alone_and_its_writer_gets_eio() {
    let f = start(settings()).await;
    let fh = f.create("w").await;
    f.write_all(fh, 0, &random_bytes(MIB, 14)).await.unwrap();
    f.core.flush(fh).await.unwrap();

    // Down for a moment, and meanwhile another program puts a new file under the name.
    f.server.refuse();
    f.server.cut();
    let replacement = b"someone else's file\n";
    let other = f.dir.path().join("other");
    fs::write(&other, replacement).unwrap();
    fs::rename(&other, f.dir.path().join("w")).unwrap();
    f.server.accept();

    let more = random_bytes(MIB, 15);
    let written = async {
        f.write_all(fh, MIB, &more).await?;
        f.core.flush(fh).await
    };
    let outcome = within(Duration::from_secs(60), "the writer's outcome", written).await;
    assert_eq!(
        outcome.err(),
        Some(libc::EIO),
        "the writer of a replaced file"
    );
    let _ = f.core.release(fh).await;
    assert_eq!(
        f.on_server("w"),
        replacement,
        "the replacement is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_retrying_cannot_mend_ends_the_reconnecting() {
    let f = start(settings()).await;
    f.server.refuse_for_good();
    f.server.cut();
    let lost = within(
        Duration::from_secs(30),
        "a lookup after the refusal",
        f.core.lookup(ROOT, b"x"),
    )
    .await;
    assert_eq!(lost.err(), Some(libc::EIO));
    // The supervisor gave up: nothing waits any more, and no connection is tried again.
    f.server.accept();
    let again = within(
        Duration::from_secs(1),
        "a lookup once given up",
        f.core.lookup(ROOT, b"x"),
    )
    .await;
    assert_eq!(again.err(), Some(libc::EIO));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.server.connections(), 1);
}

/// Names in the server's directory, hidden ones of the mount's included.
fn server_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_file_whose_name_was_removed_or_replaced_lives_on_across_a_cut() {
    let f = start(settings()).await;
    // `a` is open and replaced by a rename; `c` is open and removed.
    let (first_a, first_c) = (random_bytes(MIB, 21), random_bytes(MIB, 22));
    let a = f.create("a").await;
    f.write_all(a, 0, &first_a).await.unwrap();
    f.core.flush(a).await.unwrap();
    let c = f.create("c").await;
    f.write_all(c, 0, &first_c).await.unwrap();
    f.core.flush(c).await.unwrap();
    let b = f.create("b").await;
    f.write_all(b, 0, b"the new a\n").await.unwrap();
    f.close(b).await.unwrap();
    f.core.rename(ROOT, b"b", ROOT, b"a", false).await.unwrap();
    f.core.unlink(ROOT, b"c").await.unwrap();
    assert_eq!(f.on_server("a"), b"the new a\n");
    assert_eq!(
        server_names(f.dir.path()).len(),
        3,
        "a and two hidden files"
    );

    // Cut: both are reopened by their hidden names and written on; nothing reaches `a`.
    f.server.cut();
    let (more_a, more_c) = (random_bytes(MIB, 23), random_bytes(MIB, 24));
    let written = async {
        f.write_all(a, MIB, &more_a).await?;
        f.write_all(c, MIB, &more_c).await?;
        f.core.flush(a).await?;
        f.core.flush(c).await
    };
    within(Duration::from_secs(60), "writes after the cut", written)
        .await
        .expect("the open files go on after the cut");
    assert_eq!(f.on_server("a"), b"the new a\n", "the new `a` is untouched");
    let hidden: Vec<Vec<u8>> = server_names(f.dir.path())
        .iter()
        .filter(|n| n.as_str() != "a")
        .map(|n| f.on_server(n))
        .collect();
    let mut want = [[first_a, more_a].concat(), [first_c, more_c].concat()];
    want.sort();
    let mut got = hidden;
    got.sort();
    assert_eq!(got.len(), 2);
    assert_same("a's old file", &got[0], &want[0]);
    assert_same("c's old file", &got[1], &want[1]);

    // The last close takes the hidden names away.
    f.close(a).await.unwrap();
    f.close(c).await.unwrap();
    assert_eq!(server_names(f.dir.path()), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_replaced_during_the_cut_by_a_larger_one_is_left_alone() {
    let f = start(settings()).await;
    // dd over an existing file: opened with O_TRUNC, which the kernel sends as an open and a
    // truncate to 0, then written on.
    fs::write(f.dir.path().join("big"), random_bytes(4 * MIB, 31)).unwrap();
    let fh = f.open("big", libc::O_WRONLY).await;
    let ino = f.core.lookup(ROOT, b"big").await.unwrap().attr.ino.0;
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    f.core
        .setattr(ino, Some(fh), truncate, std::process::id())
        .await
        .unwrap();
    let first = random_bytes(2 * MIB, 32);
    f.write_all(fh, 0, &first).await.unwrap();
    f.core.flush(fh).await.unwrap();

    // During the cut the file is moved away and a larger one takes its name.
    f.server.refuse();
    f.server.cut();
    fs::rename(f.dir.path().join("big"), f.dir.path().join("big.old")).unwrap();
    let replacement = random_bytes(64 * MIB, 33);
    fs::write(f.dir.path().join("big"), &replacement).unwrap();
    f.server.accept();

    let written = async {
        f.write_all(fh, 2 * MIB, &random_bytes(MIB, 34)).await?;
        f.core.flush(fh).await
    };
    let outcome = within(Duration::from_secs(60), "the writer's outcome", written).await;
    assert_eq!(
        outcome.err(),
        Some(libc::EIO),
        "the writer of a replaced file"
    );
    let _ = f.core.release(fh).await;
    assert_same("the replacement", &f.on_server("big"), &replacement);
    assert_same("the file written", &f.on_server("big.old"), &first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_file_replaced_during_the_cut_gets_eio_not_the_new_file() {
    let f = start(settings()).await;
    let path = |name: &str| f.dir.path().join(name);
    // Replaced by a smaller file (a log rotated), and by one of the same size but an older
    // modification time (a backup moved into place).
    let old_time = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for (name, replacement_len, older) in [("log", MIB / 4, false), ("data", MIB, true)] {
        fs::write(path(name), random_bytes(MIB, 41)).unwrap();
        let fh = f.open(name, libc::O_RDONLY).await;
        assert_eq!(f.core.read(fh, 0, 4096).await.unwrap().len(), 4096);

        f.server.refuse();
        f.server.cut();
        let other = path("other");
        fs::write(&other, random_bytes(replacement_len, 42)).unwrap();
        if older {
            fs::File::options()
                .write(true)
                .open(&other)
                .unwrap()
                .set_modified(old_time)
                .unwrap();
        }
        fs::rename(&other, path(name)).unwrap();
        f.server.accept();

        let read = within(
            Duration::from_secs(60),
            "a read after the cut",
            f.core.read(fh, MIB as u64 / 2, 4096),
        )
        .await;
        assert_eq!(
            read.err(),
            Some(libc::EIO),
            "{name}: the reader of a replaced file"
        );
        let _ = f.core.release(fh).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_removed_or_replaced_while_its_last_release_is_on_its_way_leaves_no_hidden_file() {
    // The kernel sends a release after close(2) returned: `cat f; rm f` can have the removal
    // decide to hide the open file, and the release pass, before the removal's reply.
    let f = start(settings()).await;
    for round in 0..150 {
        f.write_small("a").await;
        let a = f.open("a", libc::O_RDONLY).await;
        let (removed, released) = tokio::join!(f.core.unlink(ROOT, b"a"), f.core.release(a));
        released.unwrap();
        removed.unwrap();
        assert!(server_names(f.dir.path()).is_empty(), "round {round}");

        f.write_small("a").await;
        f.write_small("b").await;
        let a = f.open("a", libc::O_RDONLY).await;
        let (renamed, released) = tokio::join!(
            f.core.rename(ROOT, b"b", ROOT, b"a", false),
            f.core.release(a)
        );
        released.unwrap();
        renamed.unwrap();
        assert_eq!(server_names(f.dir.path()), ["a"], "round {round}");
        f.core.unlink(ROOT, b"a").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_set_after_writes_stay_set_when_a_cut_makes_the_writes_go_again() {
    let f = start(settings()).await;
    // Less than a file may hold unacked before the link's rate is known.
    let data = random_bytes(3 * MIB, 11);
    let fh = f.create("f").await;
    let ino = f.core.lookup(ROOT, b"f").await.expect("lookup").attr.ino.0;
    // Nothing reaches the server from here on: the writes, and the times set after them (as
    // cp -p, tar and rsync -t set them after their last write), wait for the next connection.
    f.server.black_hole();
    f.write_all(fh, 0, &data)
        .await
        .expect("writes held for the link");
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let times = SetAttr {
        atime: Some(mtime),
        mtime: Some(mtime),
        ..SetAttr::default()
    };
    // Answered at once on a server that keeps order (OpenSSH's: the change is sent behind the
    // writes); elsewhere (gesftpserver) it waits for them to land, after the cut.
    let core = f.core.clone();
    let futimens =
        tokio::spawn(async move { core.setattr(ino, Some(fh), times, std::process::id()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.server.cut();
    within(Duration::from_secs(60), "futimens", futimens)
        .await
        .expect("the futimens task")
        .expect("futimens");
    within(Duration::from_secs(60), "close", f.close(fh))
        .await
        .expect("close after the cut");
    assert_eq!(f.server.connections(), 2, "one reconnection");
    assert_same("the server's file", &f.on_server("f"), &data);
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(f.dir.path().join("f")).unwrap();
    assert_eq!(
        meta.mtime(),
        1_500_000_000,
        "the writes sent again moved the mtime"
    );
}

/// Found by scripts/namespace-fsx (seed 970261146, with cuts): `File::create` over a file
/// another descriptor has open is an open and a truncate; the truncate waited for the link, and
/// the mount took the file's size as already 0, so the reconnection found the server's file
/// "larger than it could be" and failed both descriptors with EIO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_waiting_for_the_link_leaves_the_file_s_descriptors_reopenable() {
    let f = start(settings()).await;
    let data = random_bytes(40_000, 12);
    let first = f.create("f").await;
    f.write_all(first, 0, &data).await.expect("write");
    f.core.fsync(first).await.expect("fsync");
    let second = f.open("f", libc::O_WRONLY).await;
    let ino = f.core.lookup(ROOT, b"f").await.expect("lookup").attr.ino.0;
    // Nothing reaches the server from here on: the truncate waits for the next connection,
    // whose reopening of both descriptors comes first.
    f.server.black_hole();
    let core = f.core.clone();
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    let truncating = tokio::spawn(async move {
        core.setattr(ino, Some(second), truncate, std::process::id())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.server.cut();
    let attr = within(Duration::from_secs(60), "truncate", truncating)
        .await
        .expect("the truncate task")
        .expect("truncate");
    assert_eq!(attr.size, 0);
    assert_eq!(f.server.connections(), 2, "one reconnection");
    f.write_all(first, 0, b"after")
        .await
        .expect("the first descriptor writes after the reconnection");
    f.close(second).await.expect("close the second");
    f.close(first).await.expect("close the first");
    assert_same("the server's file", &f.on_server("f"), b"after");
}

impl Fixture {
    /// Runs `change` while the server carries out requests but its answers are held, then cuts
    /// the link: the answer is lost, the change was made.
    async fn with_answer_lost<T: Send + 'static>(
        &self,
        change: impl std::future::Future<Output = FsResult<T>> + Send + 'static,
    ) -> FsResult<T> {
        self.server.hold_replies();
        let running = tokio::spawn(change);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.server.cut();
        within(Duration::from_secs(30), "the change", running)
            .await
            .expect("the change's task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_server_made_whose_answer_was_lost_with_the_connection_succeeds() {
    let f = start(settings()).await;
    for name in ["gone", "open", "moved", "linked"] {
        f.write_small(name).await;
    }
    let kept_open = f.open("open", libc::O_RDONLY).await;
    let dir = f.dir.path();
    let mode = CreateMode {
        mode: 0o755,
        umask: 0o022,
        owner: (0, 0),
    };
    fs::create_dir(dir.join("empty")).unwrap();
    let core = f.core.clone();
    let linked = core
        .lookup(ROOT, b"linked")
        .await
        .expect("lookup")
        .attr
        .ino
        .0;

    let c = core.clone();
    f.with_answer_lost(async move { c.unlink(ROOT, b"gone").await })
        .await
        .expect("unlink");
    assert!(!dir.join("gone").exists());
    let c = core.clone();
    f.with_answer_lost(async move { c.unlink(ROOT, b"open").await })
        .await
        .expect("unlink of an open file");
    assert!(!dir.join("open").exists());
    let c = core.clone();
    f.with_answer_lost(async move { c.rename(ROOT, b"moved", ROOT, b"there", false).await })
        .await
        .expect("rename");
    assert!(dir.join("there").exists() && !dir.join("moved").exists());
    let c = core.clone();
    f.with_answer_lost(async move { c.rmdir(ROOT, b"empty").await })
        .await
        .expect("rmdir");
    assert!(!dir.join("empty").exists());
    let c = core.clone();
    f.with_answer_lost(async move { c.mkdir(ROOT, b"new", mode).await })
        .await
        .expect("mkdir");
    assert!(dir.join("new").is_dir());
    let c = core.clone();
    f.with_answer_lost(async move { c.symlink(ROOT, b"sym", b"there", (0, 0)).await })
        .await
        .expect("symlink");
    assert_eq!(fs::read_link(dir.join("sym")).unwrap(), Path::new("there"));
    let c = core.clone();
    f.with_answer_lost(async move { c.link(linked, ROOT, b"second").await })
        .await
        .expect("link");
    assert_eq!(fs::read(dir.join("second")).unwrap(), b"x");
    // Changes of attributes by path (no descriptor open for writing).
    let c = core.clone();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    f.with_answer_lost(async move { c.setattr(linked, None, chmod, 0).await })
        .await
        .expect("chmod");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.join("linked"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let there = core
        .lookup(ROOT, b"there")
        .await
        .expect("lookup")
        .attr
        .ino
        .0;
    let c = core.clone();
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    let attr = f
        .with_answer_lost(async move { c.setattr(there, None, truncate, 0).await })
        .await
        .expect("truncate");
    assert_eq!(attr.size, 0);
    assert_eq!(fs::metadata(dir.join("there")).unwrap().len(), 0);
    assert_eq!(f.server.connections(), 10, "a connection per change");
    // The open file lived on under a hidden name, and goes at its close.
    let read = f
        .core
        .read(kept_open, 0, 10)
        .await
        .expect("read the open file");
    assert_eq!(&read[..], b"x");
    f.close(kept_open).await.expect("close");
    let names = server_names(dir);
    assert_eq!(
        names,
        ["linked", "new", "second", "sym", "there"],
        "no hidden name left"
    );
}

/// The kernel reads a directory a page at a time (`add` answers "full"): each page must cost
/// only the entries it holds. Before, every page made an entry (and, for readdirplus, an inode
/// with a kernel reference, forgotten again) of every name after it: `ls -l` of 100,000 names
/// took 14.6 s and 413 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_read_a_page_at_a_time_costs_only_what_each_page_holds() {
    let f = start(settings()).await;
    let big = f.dir.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..3000 {
        fs::write(big.join(format!("f{i:05}")), b"").unwrap();
    }
    let dir = f.core.lookup(ROOT, b"big").await.unwrap().attr.ino.0;
    let fh = f.core.opendir(dir).await.unwrap();
    let before = f.core.known_inodes();
    let (mut offset, mut names, mut built) = (0, Vec::new(), 0);
    loop {
        let mut page = Vec::new();
        f.core
            .readdir(fh, offset, true, |e| {
                built += 1;
                if page.len() == 20 {
                    return true;
                }
                page.push((e.offset, e.name.clone()));
                false
            })
            .await
            .unwrap();
        let Some(&(last, _)) = page.last() else {
            break;
        };
        offset = last;
        names.extend(page.into_iter().map(|(_, name)| name));
        if names.len() == 100 {
            // Five pages in: the kernel holds references to the entries it was given, no more.
            assert_eq!(
                f.core.known_inodes() - before,
                100 - 2,
                "inodes after 5 pages"
            );
        }
    }
    f.core.releasedir(fh);
    assert_eq!(names.len(), 3002, "every name once, with . and ..");
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), 3002, "no name twice");
    // One entry more than each page holds is looked at, the one that did not fit.
    assert!(
        built <= 3002 + 3002 / 20 + 1,
        "{built} entries built for 3002 names"
    );
}

//! Repositories and the tools that scan trees (issue #22): what git, restic, rsync and make
//! compare between runs (`st_ino` among it) must hold across mounts, or every file looks changed
//! after a remount. Real sshd, real mounts, real git.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use common::*;

fn ino(path: impl AsRef<Path>) -> u64 {
    fs::symlink_metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .ino()
}

fn inos(root: &Path, paths: &[&str]) -> Vec<u64> {
    paths.iter().map(|p| ino(root.join(p))).collect()
}

#[test]
fn inode_numbers_are_the_same_in_every_mount_and_distinct_within_one() {
    let sshd = Sshd::start();
    let remote = sshd.remote_root();
    fs::create_dir_all(remote.join("src/deep")).unwrap();
    for p in ["a", "b", "src/x.c", "src/deep/y.h"] {
        fs::write(remote.join(p), p).unwrap();
    }
    let paths = ["src", "src/deep", "a", "b", "src/x.c", "src/deep/y.h"];
    let m = Mount::new(&sshd, &[]);
    let first = inos(m.path(), &paths);
    assert_eq!(
        first.iter().collect::<HashSet<_>>().len(),
        paths.len(),
        "distinct within a mount: {first:?}"
    );
    // readdir's d_ino is the st_ino a stat gives (`ls -i`, `find -inum`, rsync).
    for entry in fs::read_dir(m.join("src")).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.ino(), ino(entry.path()), "{:?}", entry.file_name());
    }

    // A hard link made through the mount shares its file's number.
    fs::hard_link(m.join("a"), m.join("a2")).unwrap();
    assert_eq!(ino(m.join("a2")), first[2]);
    // A rename keeps the file's number; a new file at the old name, while the renamed one is
    // held, gets another.
    let held = fs::File::open(m.join("b")).unwrap();
    fs::rename(m.join("b"), m.join("b2")).unwrap();
    assert_eq!(ino(m.join("b2")), first[3], "a rename keeps the number");
    fs::write(m.join("b"), "new").unwrap();
    assert_ne!(ino(m.join("b")), first[3], "two live files, one number");
    drop(held);
    drop(m);

    // Another mount of the same directory, and one that names it otherwise (a trailing slash).
    let unchanged = ["src", "src/deep", "a", "src/x.c", "src/deep/y.h"];
    let want: Vec<u64> = [0, 1, 2, 4, 5].iter().map(|&i| first[i]).collect();
    let m = Mount::new(&sshd, &[]);
    assert_eq!(inos(m.path(), &unchanged), want, "after a remount");
    drop(m);
    let source = format!("{}/", sshd.source());
    let m = Mount::with_source(&sshd, &source, &[]);
    assert_eq!(inos(m.path(), &unchanged), want, "mounted as {source}");
}

/// What the goal is for: git's index records each file's stat data (st_ino among it); a file
/// whose stat data differs is read again to compare contents. After a remount, `git status`
/// must find the tree clean without reading any file.
#[test]
fn git_status_after_a_remount_reads_no_file() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let m = Mount::new(&sshd, &[]);
    let repo = m.join("repo");
    fs::create_dir(&repo).unwrap();
    run("git", &["init", "-q"], &repo);
    for i in 0..40 {
        let dir = repo.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(50),
        )
        .unwrap();
    }
    run("git", &["add", "-A"], &repo);
    let commit = [
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@localhost",
        "commit",
        "-q",
        "-m",
        "tree",
    ];
    run("git", &commit, &repo);
    // Written more than a second ago: git's "racily clean" rule would read them otherwise.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    run("git", &["update-index", "--refresh", "-q"], &repo);
    drop(m);

    let m = Mount::new(&sshd, &[]);
    let repo = m.join("repo");
    let before = recorder.settled();
    let out = run("git", &["status", "--porcelain"], &repo);
    let cost = recorder.settled().since(&before);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "the tree is clean"
    );
    // git reads its own files under .git (the index, HEAD, config), none of the tree's.
    let tree_files: Vec<_> = cost
        .opened_files
        .keys()
        .filter(|path| !path.contains("/.git/"))
        .collect();
    assert!(
        tree_files.is_empty(),
        "git status after a remount read {} of the 40 files: {tree_files:?}",
        tree_files.len()
    );
}

/// git reads the files whose stat data changed in path order, which is not the order a
/// directory lists them in: once a program strays from the listing's order, the rest of the
/// directory's small files are fetched ahead of it, in name order from where it is, so that its
/// opens find them in memory instead of costing two round trips each.
#[test]
fn a_directory_read_in_name_order_is_fetched_ahead_whole() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let dir = sshd.remote_root().join("src");
    fs::create_dir(&dir).unwrap();
    // Made out of name order, so that no listing order (creation, reversed, hashed) is it.
    let mut names: Vec<String> = (0..48)
        .map(|i| format!("f{:02}.h", (i * 29) % 48))
        .collect();
    for (i, name) in names.iter().enumerate() {
        fs::write(dir.join(name), format!("{name} {i}\n").repeat(20 + i * 7)).unwrap();
    }
    names.sort();
    let m = Mount::new(&sshd, &[]);
    let listed = fs::read_dir(m.join("src"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert_ne!(listed, names, "the listing's order is not the names' order");

    let start = recorder.settled();
    let before = start.clone();
    for name in &names[..3] {
        assert_eq!(
            fs::read(m.join("src").join(name)).unwrap(),
            fs::read(dir.join(name)).unwrap()
        );
    }
    let ahead = recorder.settled().since(&before);
    let fetched: Vec<&String> = names[3..]
        .iter()
        .filter(|n| {
            ahead
                .opened_files
                .keys()
                .any(|p| p.ends_with(&format!("/src/{n}")))
        })
        .collect();
    assert!(
        fetched.len() >= 30,
        "after 3 files in name order, {} of the next 45 were fetched ahead: {:?}",
        fetched.len(),
        ahead.opened_files
    );
    // The program's own opens of them cost nothing more, and read what the server has.
    let before = recorder.settled();
    for name in &names[3..] {
        assert_eq!(
            fs::read(m.join("src").join(name)).unwrap(),
            fs::read(dir.join(name)).unwrap(),
            "{name}"
        );
    }
    let rest = recorder.settled().since(&before);
    let again: Vec<_> = fetched
        .iter()
        .filter(|n| {
            rest.opened_files
                .keys()
                .any(|p| p.ends_with(&format!("/src/{n}")))
        })
        .collect();
    assert!(
        again.is_empty(),
        "fetched ahead, then opened again: {again:?}"
    );
    // Each file opened once in all: nothing fetched twice.
    let all = recorder.settled().since(&start);
    assert!(
        all.opened_files.values().all(|&n| n == 1),
        "{:?}",
        all.opened_files
    );
}

/// git's preload threads stat every file of the tree by path, one directory after another:
/// once a burst of stats in one directory had it listed, the directories beside and below it
/// are listed ahead, so the stats that follow find their names there instead of each
/// directory costing a lookup and a burst of its own.
#[test]
fn stats_across_a_tree_cost_about_a_listing_per_directory() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let root = sshd.remote_root().join("tree");
    let mut files = Vec::new();
    for d in 0..8 {
        for s in 0..8 {
            let leaf = format!("tree/d{d}/s{s}");
            fs::create_dir_all(sshd.remote_root().join(&leaf)).unwrap();
            for f in 0..3 {
                fs::write(root.join(format!("d{d}/s{s}/f{f}")), "x").unwrap();
                files.push(format!("{leaf}/f{f}"));
            }
        }
    }
    let m = Mount::new(&sshd, &["-o", "dcache_timeout=4"]);
    let args: Vec<&str> = ["-c", "%s"]
        .into_iter()
        .chain(files.iter().map(String::as_str))
        .collect();
    // After the timeout, the first stat that misses in a directory listed before has it
    // listed again behind its own LSTAT, and the rest wait for that listing.
    for (round, most) in [("fresh mount", 24), ("after the timeout", 10)] {
        let before = recorder.settled();
        let out = run("stat", &args, m.path());
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 192);
        let cost = recorder.settled().since(&before);
        eprintln!(
            "stat of 192 files in 64 directories, {round}: {:?}",
            cost.by_type
        );
        // 73 directories: listed once each at most, each listing asking its directory's mtime
        // with it; a burst of its own in each (a lookup and three stats before the listing)
        // would be four LSTATs more per directory.
        assert!(
            cost.count("OPENDIR") <= 73,
            "{round}: {:?}",
            cost.opened_dirs
        );
        let lookups = cost.count("LSTAT") - cost.count("OPENDIR");
        assert!(
            lookups <= most,
            "{round}: {lookups} lookups: {:?}",
            cost.lstat_paths
        );
        // Everything the cache and the kernel hold has timed out.
        sleep(Duration::from_millis(5500));
    }
}

/// Every git command asks for a dozen names its `.git` lacks (MERGE_HEAD, rebase-merge,
/// shallow, ...), one after another. Once the listing of `.git` timed out, the first of them
/// has it listed again behind its own LSTAT and the rest are answered by that listing, not an
/// LSTAT each; a name made on the server meanwhile is found.
#[test]
fn names_missing_from_a_git_directory_after_the_timeout_cost_one_listing() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let git = sshd.remote_root().join("repo/.git");
    fs::create_dir_all(git.join("refs/heads")).unwrap();
    fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    let m = Mount::new(&sshd, &["-o", "dcache_timeout=2"]);
    run("ls", &["-l", "repo/.git"], m.path());
    fs::write(git.join("MERGE_HEAD"), "0123\n").unwrap();
    sleep(Duration::from_millis(2500));
    let missing = [
        "rebase-apply",
        "rebase-merge",
        "CHERRY_PICK_HEAD",
        "packed-refs",
        "BISECT_LOG",
        "REVERT_HEAD",
        "sequencer",
        "commondir",
        "shallow",
        "MERGE_HEAD",
    ];
    let script = format!(
        "for n in {}; do test -e repo/.git/$n && echo $n; done; true",
        missing.join(" ")
    );
    let before = recorder.settled();
    let out = run("sh", &["-c", &script], m.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "MERGE_HEAD\n");
    let cost = recorder.settled().since(&before);
    let asked: Vec<&String> = cost
        .lstat_paths
        .keys()
        .filter(|p| p.contains("/.git/"))
        .collect();
    eprintln!("names asked: {asked:?}, listings: {:?}", cost.opened_dirs);
    assert!(cost.count("OPENDIR") >= 1, "{:?}", cost.by_type);
    // The first name, and those asked before the listing is on its way.
    assert!(asked.len() <= 3, "{} names asked: {asked:?}", asked.len());
}

/// A file read whole ahead has its attributes renewed by the FSTAT sent with its READ: a
/// program that reads a tree's files and then stats them again (git's first status, then its
/// second) finds them fresh, counted from the read, not from the listing that found them.
#[test]
fn files_read_ahead_keep_fresh_attributes_after_their_listing_timed_out() {
    let recorder = SftpRecorder::new();
    let sshd = Sshd::start_recorded(&recorder);
    let dir = sshd.remote_root().join("src");
    fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..24).map(|i| format!("f{:02}.h", (i * 7) % 24)).collect();
    for name in &names {
        fs::write(dir.join(name), format!("{name}\n").repeat(40)).unwrap();
    }
    // Listed after the second of the directory's mtime: read once, not again after it.
    sleep(Duration::from_millis(1100));
    let m = Mount::new(&sshd, &["-o", "dcache_timeout=4"]);
    let listed = std::time::Instant::now();
    run("ls", &["-l", "src"], m.path());
    sleep(Duration::from_millis(1500));
    let mut sorted = names.clone();
    sorted.sort();
    for name in &sorted {
        assert_eq!(
            fs::read(m.join("src").join(name)).unwrap(),
            fs::read(dir.join(name)).unwrap()
        );
    }
    // The listing (and what the kernel was told with it) has timed out; the reads have not.
    sleep(Duration::from_millis(4500).saturating_sub(listed.elapsed()));
    let before = recorder.settled();
    let args: Vec<String> = sorted.iter().map(|n| format!("src/{n}")).collect();
    let out = run("stat", &args, m.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 24 * 8);
    let cost = recorder.settled().since(&before);
    eprintln!("stat after the timeout: {:?}", cost.by_type);
    let asked: Vec<&String> = cost
        .lstat_paths
        .keys()
        .filter(|p| p.contains("/src/"))
        .collect();
    assert!(
        asked.is_empty() && !cost.opened_dirs.keys().any(|d| d.ends_with("/src")),
        "files asked again: {asked:?}, listings: {:?}",
        cost.opened_dirs
    );
}

//! Ordinary programs on the mount, unchanged: cp, cmp, dd, tar, diff, git, rsync, mv. Each
//! result is checked on the server side.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn setup() -> (Sshd, Mount) {
    let sshd = Sshd::start();
    let mount = Mount::new(&sshd, &[]);
    (sshd, mount)
}

#[test]
fn cp_and_cmp_256_mib_both_ways() {
    let (sshd, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big");
    random_file(&src, 256 * 1024 * 1024, 42);
    run("cp", &[src.as_os_str(), m.join("big").as_os_str()], "/");
    assert_files_equal(&src, sshd.remote_root().join("big"));
    // And back: a different file on the server, read through the mount.
    let server_src = sshd.remote_root().join("big2");
    random_file(&server_src, 256 * 1024 * 1024, 43);
    let back = local.path().join("back");
    run("cp", &[m.join("big2").as_os_str(), back.as_os_str()], "/");
    assert_files_equal(&server_src, &back);
    run("cmp", &[m.join("big").as_os_str(), src.as_os_str()], "/");
}

#[test]
fn dd_with_odd_block_sizes() {
    let (sshd, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 5 * 1024 * 1024 + 12345, 9);
    for bs in ["1", "511", "4097", "65537", "1000001"] {
        let count = if bs == "1" { "20000" } else { "100000" };
        let name = format!("dd-{bs}");
        let dst = m.join(&name);
        run(
            "dd",
            &[
                format!("if={}", src.display()),
                format!("of={}", dst.display()),
                format!("bs={bs}"),
                format!("count={count}"),
                "status=none".into(),
            ],
            "/",
        );
        let expected_len = (fs::metadata(&src).unwrap().len())
            .min(bs.parse::<u64>().unwrap() * count.parse::<u64>().unwrap());
        let remote = fs::read(sshd.remote_root().join(&name)).unwrap();
        let original = fs::read(&src).unwrap();
        assert_eq!(remote.len() as u64, expected_len, "bs={bs}");
        assert_eq!(&remote[..], &original[..expected_len as usize], "bs={bs}");
        // Read it back with another odd size.
        let back = local.path().join(format!("back-{bs}"));
        run(
            "dd",
            &[
                format!("if={}", dst.display()),
                format!("of={}", back.display()),
                "bs=3333".into(),
                "status=none".into(),
            ],
            "/",
        );
        assert_eq!(fs::read(&back).unwrap(), remote, "read back bs={bs}");
    }
    // Writes at an offset into an existing file (conv=notrunc, seek).
    run(
        "dd",
        &[
            format!("if={}", src.display()),
            format!("of={}", m.join("dd-4097").display()),
            "bs=777".into(),
            "count=3".into(),
            "seek=10".into(),
            "conv=notrunc".into(),
            "status=none".into(),
        ],
        "/",
    );
    let patched = fs::read(sshd.remote_root().join("dd-4097")).unwrap();
    let original = fs::read(&src).unwrap();
    assert_eq!(&patched[7770..7770 + 2331], &original[..2331]);
    assert_eq!(&patched[..7770], &original[..7770]);
}

/// A source-like tree: nested directories, small and large files, symlinks, a hard link, modes.
fn make_tree(root: &Path) {
    for d in 0..6 {
        let dir = root.join(format!("src/mod{d}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..25 {
            let len = (f * 997 + d * 31) % 20_000;
            fs::write(
                dir.join(format!("file{f}.rs")),
                random_bytes(len, (d * 100 + f) as u64),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(
            format!("sub/file{d}.rs"),
            root.join(format!("src/mod{d}/link")),
        )
        .unwrap();
    }
    random_file(root.join("blob.bin"), 3 * 1024 * 1024, 5);
    fs::hard_link(root.join("blob.bin"), root.join("blob-hardlink.bin")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn tar_extract_then_diff() {
    let (sshd, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    make_tree(&tree);
    let archive = local.path().join("tree.tar");
    run(
        "tar",
        &[
            "-cf",
            archive.to_str().unwrap(),
            "-C",
            local.path().to_str().unwrap(),
            "tree",
        ],
        "/",
    );
    run(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            m.path().to_str().unwrap(),
        ],
        "/",
    );
    // Through the mount and on the server, the tree is the original.
    for copy in [m.join("tree"), sshd.remote_root().join("tree")] {
        run(
            "diff",
            &[
                "-r",
                "--no-dereference",
                tree.to_str().unwrap(),
                copy.to_str().unwrap(),
            ],
            "/",
        );
    }
    use std::os::unix::fs::MetadataExt;
    let remote = sshd.remote_root().join("tree");
    assert_eq!(
        fs::metadata(remote.join("run.sh")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::metadata(remote.join("blob.bin")).unwrap().mtime(),
        fs::metadata(tree.join("blob.bin")).unwrap().mtime(),
        "tar sets mtimes"
    );
    // And tar can read it back from the mount.
    run(
        "tar",
        &[
            "-cf",
            local.path().join("again.tar").to_str().unwrap(),
            "-C",
            m.path().to_str().unwrap(),
            "tree",
        ],
        "/",
    );
}

#[test]
fn git_init_add_commit_fsck() {
    let (sshd, m) = setup();
    let repo = m.join("repo");
    fs::create_dir(&repo).unwrap();
    make_tree(&repo);
    let git = |args: &[&str]| {
        let mut all = vec![
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ];
        all.extend_from_slice(args);
        run("git", &all, &repo)
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("src/mod0/sub/file1.rs"), b"changed").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    let log = git(&["log", "--oneline"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout).lines().count(), 2);
    // The server holds a valid repository on its own.
    let remote_repo = sshd.remote_root().join("repo");
    run("git", &["fsck", "--full"], &remote_repo);
    let status = run("git", &["status", "--porcelain"], &remote_repo);
    assert!(
        status.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn rsync_into_the_mount() {
    let (sshd, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    make_tree(&tree);
    let dst = format!("{}/", m.join("copy").display());
    let src = format!("{}/", tree.display());
    // A symlink's own times cannot be set on a server without lsetstat (rsync would exit 23
    // whenever a link's time differs, that is, when the second turned between the copies).
    let link_times: &[&str] = if server_sets_symlink_attributes() {
        &[]
    } else {
        &["--omit-link-times"]
    };
    let rsync = |extra: &[&str]| {
        let mut args = vec!["-a"];
        args.extend(link_times);
        args.extend(extra);
        args.extend([src.as_str(), dst.as_str()]);
        run("rsync", &args, "/");
    };
    rsync(&[]);
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            tree.to_str().unwrap(),
            sshd.remote_root().join("copy").to_str().unwrap(),
        ],
        "/",
    );
    // A second run after a change transfers in place of the old file (temp file + rename).
    fs::write(tree.join("src/mod1/sub/file3.rs"), b"rsync update").unwrap();
    rsync(&["--checksum"]);
    assert_eq!(
        fs::read(sshd.remote_root().join("copy/src/mod1/sub/file3.rs")).unwrap(),
        b"rsync update"
    );
}

#[test]
fn fifos_are_refused_with_eperm_and_rsync_goes_on() {
    let (sshd, m) = setup();
    // mkfifo, as on a filesystem without FIFOs (and as sshfs): EPERM, not ENOSYS.
    let out = try_run("mkfifo", &[m.join("pipe").as_os_str()], "/");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(!sshd.remote_root().join("pipe").exists());
    // mknod(2) of a regular file makes one.
    let made = m.join("by-mknod");
    let script = format!(
        "import os, stat; os.mknod({:?}, 0o640 | stat.S_IFREG)",
        made.display()
    );
    run("python3", &["-c", &script], "/");
    let meta = fs::metadata(sshd.remote_root().join("by-mknod")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(meta.is_file() && meta.len() == 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // rsync -a of a tree with a FIFO: reported, skipped, the rest copied (exit 23: partial).
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("file"), b"rsynced").unwrap();
    run("mkfifo", &[src.join("fifo").as_os_str()], "/");
    let out = try_run(
        "rsync",
        &[
            "-a",
            &format!("{}/", src.display()),
            m.join("dst").to_str().unwrap(),
        ],
        "/",
    );
    assert_eq!(out.status.code(), Some(23), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    assert_eq!(
        fs::read(sshd.remote_root().join("dst/file")).unwrap(),
        b"rsynced"
    );
}

#[test]
fn mv_over_an_existing_file() {
    let (sshd, m) = setup();
    fs::write(m.join("new"), b"new contents").unwrap();
    fs::write(m.join("old"), b"old contents").unwrap();
    run("mv", &["-f", "new", "old"], m.path());
    assert_eq!(
        fs::read(sshd.remote_root().join("old")).unwrap(),
        b"new contents"
    );
    assert!(!sshd.remote_root().join("new").exists());
    // mv of a local file onto the mount (copy + unlink across filesystems) over an existing one.
    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("outside"), b"from outside").unwrap();
    run(
        "mv",
        &[
            local.path().join("outside").to_str().unwrap(),
            m.join("old").to_str().unwrap(),
        ],
        "/",
    );
    assert_eq!(
        fs::read(sshd.remote_root().join("old")).unwrap(),
        b"from outside"
    );
}

/// `cp` within the mount (coreutils 9 asks copy_file_range): onto a new name, and over a
/// longer file. The server's copies are the file, and a stat through the mount shows their
/// size at once. Against OpenSSH the server copies (copy-data); against a server without it
/// (gesftpserver) the kernel copies through reads and writes.
#[test]
fn cp_within_the_mount_is_the_files_copy() {
    let (sshd, m) = setup();
    let remote = sshd.remote_root();
    // Past one copy-data request's step (64 MiB), not a multiple of a page.
    let len = (70 << 20) + 4321;
    random_file(remote.join("big"), len, 7);
    random_file(remote.join("longer"), len + (9 << 20), 8);
    run("cp", &["big", "big2"], m.path());
    run("cp", &["big", "longer"], m.path());
    for copy in ["big2", "longer"] {
        assert_files_equal(remote.join("big"), remote.join(copy));
        assert_eq!(fs::metadata(m.join(copy)).unwrap().len(), len, "{copy}");
    }
    // Through an open file whose target has writes in flight: they land first.
    let mut out = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big2"))
        .unwrap();
    std::io::Write::write_all(&mut out, &[0u8; 4096]).unwrap();
    drop(out);
    run("cmp", &["-n", "4096", "big2", "/dev/zero"], m.path());
}

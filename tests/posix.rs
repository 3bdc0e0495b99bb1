//! Every filesystem operation through a real mount of the built binary, checked on the server
//! side (the sshd's remote directory).

mod common;

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use common::*;

fn setup() -> (Sshd, Mount) {
    let sshd = Sshd::start();
    let mount = Mount::new(&sshd, &[]);
    (sshd, mount)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().expect("an OS error")
}

#[test]
fn create_write_read_and_stat() {
    let (sshd, m) = setup();
    fs::write(m.join("hello.txt"), b"hello world\n").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("hello.txt")).unwrap(),
        b"hello world\n"
    );
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello world\n");
    let meta = fs::metadata(m.join("hello.txt")).unwrap();
    assert_eq!(meta.len(), 12);
    assert!(meta.is_file());
    let remote = fs::metadata(sshd.remote_root().join("hello.txt")).unwrap();
    assert_eq!(meta.mtime(), remote.mtime());
    assert_eq!(meta.mode() & 0o7777, remote.mode() & 0o7777);
    // Inode numbers stay the same while the mount lives and the kernel holds the file.
    let ino = meta.ino();
    assert_eq!(fs::metadata(m.join("hello.txt")).unwrap().ino(), ino);
    assert_eq!(
        fs::metadata(m.join("missing"))
            .map_err(errno_of)
            .unwrap_err(),
        libc::ENOENT
    );
}

#[test]
fn chmod_chown_truncate_and_times() {
    let (sshd, m) = setup();
    let path = m.join("f");
    let remote = sshd.remote_root().join("f");
    fs::write(&path, vec![7u8; 10000]).unwrap();

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&remote).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);

    std::os::unix::fs::chown(&path, Some(1234), Some(4321)).unwrap();
    let rm = fs::metadata(&remote).unwrap();
    assert_eq!((rm.uid(), rm.gid()), (1234, 4321));
    std::os::unix::fs::chown(&path, None, Some(55)).unwrap();
    let rm = fs::metadata(&remote).unwrap();
    assert_eq!((rm.uid(), rm.gid()), (1234, 55));

    // truncate by path, then ftruncate on an open descriptor
    let c = cstr(&path);
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 3000) }, 0);
    assert_eq!(fs::metadata(&remote).unwrap().len(), 3000);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(100_000).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 100_000);
    drop(f);
    assert_eq!(fs::metadata(&remote).unwrap().len(), 100_000);
    let data = fs::read(&remote).unwrap();
    assert!(data[..3000].iter().all(|&b| b == 7) && data[3000..].iter().all(|&b| b == 0));

    // utimens with explicit times, UTIME_OMIT and UTIME_NOW
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    let rm = fs::metadata(&remote).unwrap();
    assert_eq!((rm.atime(), rm.mtime()), (1_000_000, 2_000_000));
    let omit_atime = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 3_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), omit_atime.as_ptr(), 0) },
        0
    );
    let rm = fs::metadata(&remote).unwrap();
    assert_eq!((rm.atime(), rm.mtime()), (1_000_000, 3_000_000));
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), now.as_ptr(), 0) },
        0
    );
    let rm = fs::metadata(&remote).unwrap();
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((rm.atime() - wall).abs() < 5, "atime {}", rm.atime());
    assert_eq!(rm.mtime(), 3_000_000);
}

#[test]
fn open_flags_excl_trunc_append_and_modes() {
    let (sshd, m) = setup();
    let path = m.join("f");
    let remote = sshd.remote_root().join("f");
    // O_CREAT|O_EXCL creates, then refuses an existing file.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(b"0123456789").unwrap();
    drop(f);
    assert_eq!(fs::metadata(&remote).unwrap().mode() & 0o777, 0o600);
    let again = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(again.map_err(errno_of).unwrap_err(), libc::EEXIST);

    // O_APPEND lands at the end.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    assert_eq!(fs::read(&remote).unwrap(), b"0123456789abc");

    // O_RDWR reads and writes in place.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.seek(SeekFrom::Start(2)).unwrap();
    f.write_all(b"XY").unwrap();
    let mut head = [0u8; 4];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"01XY");
    drop(f);
    assert_eq!(fs::read(&remote).unwrap(), b"01XY456789abc");

    // O_RDONLY refuses writes; O_WRONLY refuses reads.
    let mut ro = File::open(&path).unwrap();
    assert_eq!(ro.write(b"z").map_err(errno_of).unwrap_err(), libc::EBADF);
    let mut wo = OpenOptions::new().write(true).open(&path).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        wo.read(&mut buf).map_err(errno_of).unwrap_err(),
        libc::EBADF
    );
    drop((ro, wo));

    // O_TRUNC empties.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read(&remote).unwrap(), b"new");
}

#[test]
fn directories_links_and_renames() {
    let (sshd, m) = setup();
    let r = sshd.remote_root();
    fs::create_dir(m.join("d")).unwrap();
    assert!(r.join("d").is_dir());
    assert_eq!(
        fs::create_dir(m.join("d")).map_err(errno_of).unwrap_err(),
        libc::EEXIST
    );
    fs::write(m.join("d/inner"), b"x").unwrap();
    assert_eq!(
        fs::remove_dir(m.join("d")).map_err(errno_of).unwrap_err(),
        libc::ENOTEMPTY
    );
    fs::remove_file(m.join("d/inner")).unwrap();
    assert!(!r.join("d/inner").exists());
    fs::remove_dir(m.join("d")).unwrap();
    assert!(!r.join("d").exists());

    // symlink + readlink
    std::os::unix::fs::symlink("target/of/link", m.join("sl")).unwrap();
    assert_eq!(
        fs::read_link(r.join("sl")).unwrap(),
        Path::new("target/of/link")
    );
    assert_eq!(
        fs::read_link(m.join("sl")).unwrap(),
        Path::new("target/of/link")
    );
    assert!(fs::symlink_metadata(m.join("sl")).unwrap().is_symlink());

    // hard link
    fs::write(m.join("orig"), b"shared").unwrap();
    fs::hard_link(m.join("orig"), m.join("alias")).unwrap();
    assert_eq!(
        fs::metadata(r.join("orig")).unwrap().ino(),
        fs::metadata(r.join("alias")).unwrap().ino()
    );
    fs::remove_file(m.join("orig")).unwrap();
    assert_eq!(fs::read(m.join("alias")).unwrap(), b"shared");

    // rename over an existing file replaces it
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    fs::rename(m.join("a"), m.join("b")).unwrap();
    assert_eq!(fs::read(r.join("b")).unwrap(), b"A");
    assert!(!r.join("a").exists());
    assert_eq!(fs::read(m.join("b")).unwrap(), b"A");

    // rename of a directory moves what is under it
    fs::create_dir_all(m.join("x/y")).unwrap();
    fs::write(m.join("x/y/z"), b"deep").unwrap();
    fs::rename(m.join("x"), m.join("w")).unwrap();
    assert_eq!(fs::read(m.join("w/y/z")).unwrap(), b"deep");
    assert_eq!(fs::read(r.join("w/y/z")).unwrap(), b"deep");

    // RENAME_NOREPLACE refuses an existing target and leaves both alone
    fs::write(m.join("c"), b"C").unwrap();
    let (from, to) = (cstr(&m.join("c")), cstr(&m.join("b")));
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read(r.join("b")).unwrap(), b"A");
    let to_new = cstr(&m.join("c2"));
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to_new.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(fs::read(r.join("c2")).unwrap(), b"C");
}

#[test]
fn statfs_reports_the_server_filesystem() {
    let (sshd, m) = setup();
    let remote = nix_statvfs(&sshd.remote_root());
    let local = nix_statvfs(m.path());
    assert_eq!(
        local.f_blocks * local.f_frsize,
        remote.f_blocks * remote.f_frsize
    );
    assert!(local.f_bavail > 0);
}

fn nix_statvfs(p: &Path) -> libc::statvfs {
    let c = cstr(p);
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

#[test]
fn non_utf8_file_names() {
    let (sshd, m) = setup();
    let name = OsStr::from_bytes(b"caf\xe9-\xff\xfe.bin");
    fs::write(m.join(name), b"latin1").unwrap();
    assert_eq!(fs::read(sshd.remote_root().join(name)).unwrap(), b"latin1");
    let listed: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == name), "{listed:?}");
    fs::rename(m.join(name), m.join(OsStr::from_bytes(b"\x80"))).unwrap();
    assert!(sshd.remote_root().join(OsStr::from_bytes(b"\x80")).exists());
}

#[test]
fn directory_of_5000_entries() {
    let (sshd, m) = setup();
    let dir = sshd.remote_root().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..5000 {
        fs::write(dir.join(format!("entry-{i:05}")), i.to_string()).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5000);
    assert_eq!(names[0], "entry-00000");
    assert_eq!(names[4999], "entry-04999");
    let out = run("ls", &["-l", "many"], m.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5001);
    assert_eq!(
        fs::read_to_string(m.join("many/entry-04321")).unwrap(),
        "4321"
    );
}

#[test]
fn three_hundred_files_open_at_once() {
    let (sshd, m) = setup();
    let mut files = Vec::new();
    for i in 0..300 {
        let mut f = File::create(m.join(format!("open-{i}"))).unwrap();
        f.write_all(format!("file {i}").as_bytes()).unwrap();
        files.push(f);
    }
    // Every handle, those past 255 included, still works for more writes.
    for (i, f) in files.iter_mut().enumerate() {
        f.write_all(format!(" again {i}").as_bytes()).unwrap();
    }
    drop(files);
    for i in 0..300 {
        assert_eq!(
            fs::read_to_string(sshd.remote_root().join(format!("open-{i}"))).unwrap(),
            format!("file {i} again {i}")
        );
    }
}

#[test]
fn two_processes_append_to_one_file() {
    let (sshd, m) = setup();
    let path = m.join("log");
    File::create(&path).unwrap();
    let script = |tag: &str| {
        format!(
            "for i in $(seq 1 300); do echo \"{tag} line $i\" >> '{}'; done",
            path.display()
        )
    };
    let a = std::process::Command::new("sh")
        .args(["-c", &script("A")])
        .spawn()
        .unwrap();
    let b = std::process::Command::new("sh")
        .args(["-c", &script("B")])
        .spawn()
        .unwrap();
    for mut child in [a, b] {
        assert!(child.wait().unwrap().success());
    }
    let text = fs::read_to_string(sshd.remote_root().join("log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 600, "lost or torn appends");
    for tag in ["A", "B"] {
        let mine: Vec<&&str> = lines.iter().filter(|l| l.starts_with(tag)).collect();
        assert_eq!(mine.len(), 300);
        for (i, line) in mine.iter().enumerate() {
            assert_eq!(**line, format!("{tag} line {}", i + 1));
        }
    }
}

#[test]
fn read_of_a_file_being_written() {
    let (sshd, m) = setup();
    let path = m.join("growing");
    let mut writer = File::create(&path).unwrap();
    let chunk = random_bytes(64 * 1024, 7);
    let mut reader = File::open(&path).unwrap();
    let mut seen = Vec::new();
    for _ in 0..64 {
        writer.write_all(&chunk).unwrap();
        // What was written through the mount is visible to another descriptor at once.
        let mut buf = Vec::new();
        reader.read_to_end(&mut buf).unwrap();
        seen.extend_from_slice(&buf);
        assert_eq!(seen.len() % chunk.len(), 0, "torn read");
    }
    writer.flush().unwrap();
    drop(writer);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    seen.extend_from_slice(&rest);
    assert_eq!(seen.len(), 64 * chunk.len());
    assert!(seen.chunks(chunk.len()).all(|c| c == chunk));
    assert_eq!(
        fs::metadata(sshd.remote_root().join("growing"))
            .unwrap()
            .len(),
        64 * chunk.len() as u64
    );
}

#[test]
fn fsync_and_close_are_barriers() {
    let (sshd, m) = setup();
    let data = random_bytes(20 * 1024 * 1024, 3);
    let mut f = File::create(m.join("synced")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    // After fsync returns, the server has every byte, before close.
    assert_eq!(fs::read(sshd.remote_root().join("synced")).unwrap(), data);
    f.write_all(&data[..1000]).unwrap();
    drop(f);
    assert_eq!(
        fs::metadata(sshd.remote_root().join("synced"))
            .unwrap()
            .len(),
        data.len() as u64 + 1000
    );
}

#[test]
fn unlinked_open_file_stays_usable() {
    let (sshd, m) = setup();
    let path = m.join("tmp");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(b"still here").unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).map_err(errno_of).unwrap_err(),
        libc::ENOENT
    );
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert!(!sshd.remote_root().join("tmp").exists());
}

#[test]
fn remote_errors_keep_their_errno() {
    let (sshd, m) = setup();
    let err = fs::read(m.join("nope")).map_err(errno_of).unwrap_err();
    assert_eq!(err, libc::ENOENT);
    fs::create_dir(sshd.remote_root().join("dir")).unwrap();
    let err = fs::remove_file(m.join("dir"))
        .map_err(errno_of)
        .unwrap_err();
    assert!(err == libc::EISDIR || err == libc::EPERM, "errno {err}");
    let err = fs::write(m.join("missing-dir/file"), b"x")
        .map_err(errno_of)
        .unwrap_err();
    assert_eq!(err, libc::ENOENT);
    // Still usable after errors.
    fs::write(m.join("ok"), b"fine").unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("ok")).unwrap(), b"fine");
}

#[test]
fn ro_uid_gid_umask_and_idmap_options() {
    let sshd = Sshd::start();
    fs::write(sshd.remote_root().join("f"), b"data").unwrap();
    fs::set_permissions(
        sshd.remote_root().join("f"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::os::unix::fs::chown(sshd.remote_root().join("f"), Some(4242), Some(4343)).unwrap();

    let m = Mount::new(&sshd, &["-o", "ro"]);
    assert_eq!(fs::read(m.join("f")).unwrap(), b"data");
    let err = fs::write(m.join("f"), b"x").map_err(errno_of).unwrap_err();
    assert_eq!(err, libc::EROFS);
    assert_eq!(fs::read(sshd.remote_root().join("f")).unwrap(), b"data");
    drop(m);

    let m = Mount::new(&sshd, &["-o", "uid=1001,gid=1002,umask=027"]);
    let meta = fs::metadata(m.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1001, 1002));
    assert_eq!(meta.mode() & 0o777, 0o640);
    drop(m);

    // idmap=user: the login's ids (those of its home, as sshfs takes them) show as ours, not
    // those of the mounted directory's owner; other owners are left alone.
    let sshd = Sshd::start_with_password_auth();
    let (source, mut args) = sshd.password_login("idmap-test");
    args.extend(["-o".to_string(), "idmap=user".to_string()]);
    let home = fs::metadata(format!("/home/{PASSWORD_USER}")).unwrap();
    let (login_uid, login_gid) = (home.uid(), home.gid());
    let root = sshd.remote_root();
    fs::write(root.join("f"), b"data").unwrap();
    std::os::unix::fs::chown(root.join("f"), Some(4242), Some(4343)).unwrap();
    fs::write(root.join("mine"), b"").unwrap();
    std::os::unix::fs::chown(root.join("mine"), Some(login_uid), Some(login_gid)).unwrap();
    // The mounted directory is someone else's (readable by the login).
    std::os::unix::fs::chown(&root, Some(4242), Some(4343)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let m = Mount::try_with(&sshd, &source, &args, Some(b"idmap-test\n")).expect("mount");
    // SAFETY: getuid/getgid cannot fail.
    let local = unsafe { (libc::getuid(), libc::getgid()) };
    let meta = fs::metadata(m.join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), local, "the login's file");
    let meta = fs::metadata(m.join("f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (4242, 4343),
        "the mounted directory's owner is not the login"
    );
}

//! What the mount lets run ahead of the server for small files (attribute changes through a
//! file open for writing, answered before the server has), and the errors of that work: each
//! reaches the program at close at the latest, with its errno, and nothing the program was
//! told succeeded is left half-done. Checked on the server's copy.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// The one the other password tests use: the test user is shared.
const PASSWORD: &str = "pw-Zz9!long enough";

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Runs `change` on an open descriptor, then closes it: the first error of the two.
fn change_then_close(file: File, change: impl FnOnce(&File) -> std::io::Result<()>) -> Option<i32> {
    let changed = change(&file);
    // SAFETY: the descriptor is ours and closed once (into_raw_fd gives it up).
    let closed = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(file)) };
    match changed {
        Err(e) => Some(errno_of(e)),
        Ok(()) if closed != 0 => Some(std::io::Error::last_os_error().raw_os_error().unwrap()),
        Ok(()) => None,
    }
}

#[test]
fn attribute_changes_through_a_written_file_land_after_its_data() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for i in 0..20 {
        let name = format!("f{i}");
        let mut f = File::create(m.join(&name)).unwrap();
        f.write_all(&random_bytes(3000 + i, i as u64)).unwrap();
        // As tar does: times, owner, mode through the descriptor, then close.
        f.set_modified(mtime).unwrap();
        std::os::unix::fs::fchown(&f, Some(0), Some(0)).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o4750))
            .unwrap();
        // What the program is told before close is what the server will have.
        let seen = f.metadata().unwrap();
        assert_eq!(seen.mode() & 0o7777, 0o4750);
        assert_eq!(seen.mtime(), 1_600_000_000);
        drop(f);
        let on_server = fs::metadata(sshd.remote_root().join(&name)).unwrap();
        assert_eq!(on_server.len(), 3000 + i as u64, "{name}");
        assert_eq!(on_server.mode() & 0o7777, 0o4750, "{name}: mode");
        assert_eq!(
            on_server.mtime(),
            1_600_000_000,
            "{name}: mtime after the data"
        );
        assert_eq!(
            fs::read(sshd.remote_root().join(&name)).unwrap(),
            random_bytes(3000 + i, i as u64)
        );
    }
}

/// A file the login may write but not change the mode of (0666, root's), opened for appending
/// through the mount and written: its server path and the descriptor.
fn written_file_of_roots(sshd: &Sshd, m: &Mount) -> (std::path::PathBuf, File) {
    let theirs = sshd.remote_root().join("theirs");
    fs::write(&theirs, b"root's\n").unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(0), Some(0)).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.join("theirs"))
        .unwrap();
    f.write_all(b"and ours\n").unwrap();
    (theirs, f)
}

#[test]
fn a_chmod_the_server_refuses_fails_at_close_and_the_mode_stays() {
    let sshd = Sshd::start_with_password_auth();
    let m = sshd.mount_with_password(PASSWORD);
    let (theirs, f) = written_file_of_roots(&sshd, &m);
    let errno = change_then_close(f, |f| f.set_permissions(fs::Permissions::from_mode(0o600)));
    assert!(
        matches!(errno, Some(libc::EPERM | libc::EACCES)),
        "a refused chmod must fail by close at the latest: {errno:?}"
    );
    let on_server = fs::metadata(&theirs).unwrap();
    assert_eq!(on_server.mode() & 0o7777, 0o666);
    assert_eq!(fs::read(&theirs).unwrap(), b"root's\nand ours\n");
    // After close the mount shows the server's truth.
    assert_eq!(
        fs::metadata(m.join("theirs")).unwrap().mode() & 0o7777,
        0o666
    );
}

#[test]
fn a_refused_chmod_fails_the_openers_close_after_a_duplicate_closed_first() {
    let sshd = Sshd::start_with_password_auth();
    let m = sshd.mount_with_password(PASSWORD);
    let (theirs, f) = written_file_of_roots(&sshd, &m);
    // Answered at once, carried out behind the write: the server refuses it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    // A duplicate (a forked child's) is closed first, and hears of it too...
    let dup = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    assert!(dup >= 0);
    let _ = unsafe { libc::close(dup) };
    // ...but does not use it up: the opener's close still fails.
    let errno = change_then_close(f, |_| Ok(()));
    assert!(
        matches!(errno, Some(libc::EPERM | libc::EACCES)),
        "the opener's close after a duplicate's: {errno:?}"
    );
    assert_eq!(fs::metadata(&theirs).unwrap().mode() & 0o7777, 0o666);
}

#[test]
fn creating_where_the_login_may_not_write_fails_with_eacces() {
    let sshd = Sshd::start_with_password_auth();
    let m = sshd.mount_with_password(PASSWORD);
    let locked = sshd.remote_root().join("locked");
    fs::create_dir(&locked).unwrap();
    std::os::unix::fs::chown(&locked, Some(0), Some(0)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    let result = File::create(m.join("locked/f")).and_then(|mut f| {
        f.write_all(b"x")?;
        f.sync_all()
    });
    assert_eq!(result.map_err(errno_of).err(), Some(libc::EACCES));
    assert!(!locked.join("f").exists());
}

/// A mount that made the directory `d` and so holds its listing: empty.
fn mount_knowing_empty_d(sshd: &Sshd) -> Mount {
    let m = Mount::new(sshd, &[]);
    fs::create_dir(m.join("d")).unwrap();
    assert!(fs::read_dir(m.join("d")).unwrap().next().is_none());
    m
}

#[test]
fn a_create_in_a_directory_removed_on_the_server_fails_with_enoent() {
    let sshd = Sshd::start();
    let m = mount_knowing_empty_d(&sshd);
    fs::remove_dir(sshd.remote_root().join("d")).unwrap();
    let result = File::create(m.join("d/f")).and_then(|mut f| f.write_all(b"x"));
    assert_eq!(result.map_err(errno_of).err(), Some(libc::ENOENT));
    assert!(!sshd.remote_root().join("d").exists());
}

#[test]
fn an_exclusive_create_of_a_name_the_server_gained_fails_with_eexist() {
    let sshd = Sshd::start();
    let m = mount_knowing_empty_d(&sshd);
    // The server gains the name behind the mount's back.
    fs::write(sshd.remote_root().join("d/x"), b"the server's\n").unwrap();
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(m.join("d/x"))
        .and_then(|mut f| f.write_all(b"ours"));
    assert_eq!(result.map_err(errno_of).err(), Some(libc::EEXIST));
    assert_eq!(
        fs::read(sshd.remote_root().join("d/x")).unwrap(),
        b"the server's\n"
    );
}

#[test]
fn a_small_file_on_a_full_disk_fails_at_close_with_enospc() {
    let sshd = Sshd::start();
    let _disk = SmallDisk::new(&sshd.remote_root().join("small"), "1m");
    let m = Mount::new(&sshd, &[]);
    // Fill it from the server's side, then write a small file through the mount.
    let filler = random_bytes(1 << 20, 7);
    let _ = fs::write(sshd.remote_root().join("small/filler"), &filler);
    let mut f = File::create(m.join("small/little")).unwrap();
    let written = f.write_all(&random_bytes(64 * 1024, 8));
    let errno = match written {
        Err(e) => Some(errno_of(e)),
        Ok(()) => change_then_close(f, |f| {
            f.set_modified(SystemTime::now())?;
            Ok(())
        }),
    };
    assert_eq!(errno, Some(libc::ENOSPC));
}

#[test]
fn a_change_by_another_program_is_carried_out_before_it_returns() {
    // Its error could only be reported to that program: it waits for the server.
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    let mut held = File::create(m.join("held")).unwrap();
    held.write_all(b"written, still open\n").unwrap();
    run("chmod", &["0600", m.join("held").to_str().unwrap()], "/");
    let on_server = fs::metadata(sshd.remote_root().join("held")).unwrap();
    assert_eq!(on_server.mode() & 0o7777, 0o600);
    drop(held);
}

/// Found by scripts/namespace-fsx (seed 3621543705): a chmod through a descriptor open for
/// writing is answered at once from what the kernel was shown of the file; after another
/// descriptor truncated and rewrote the file, that was the truncated size, and the kernel took
/// the file for empty: a reader got 0 bytes of a 16,109-byte file.
#[test]
fn a_chmod_answered_at_once_keeps_the_size_other_descriptors_wrote() {
    let sshd = Sshd::start();
    let root = sshd.remote_root();
    fs::write(root.join("f"), vec![1u8; 11_845]).unwrap();
    let m = Mount::new(&sshd, &[]);
    let reader = File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    use std::os::unix::fs::FileExt;
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), 11_845);
    let writer = OpenOptions::new().write(true).open(m.join("f")).unwrap();
    let data = vec![2u8; 16_109];
    fs::write(m.join("f"), &data).unwrap();
    writer
        .set_permissions(fs::Permissions::from_mode(0o644))
        .unwrap();
    let got = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(got, data.len(), "the reader's read after the chmod");
    assert_eq!(&buf[..got], &data[..]);
    assert_eq!(fs::read(root.join("f")).unwrap(), data);
    drop(writer);
}

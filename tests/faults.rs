//! A server that bends or breaks the protocol, through our faulty server
//! (`tests/common/faulty_server.rs`) in front of OpenSSH's sftp-server: short reads, no
//! extensions at all, hostile names, oversized replies, stray replies, unknown status codes,
//! overlong handles, attributes that describe no file, and requests never answered. Each ends
//! in one clear error for the operation concerned (or in the right bytes), never a panic, a
//! hang or a wrong byte, and the mount stays usable.

mod common;

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn short_read_replies_are_read_on_to_the_end_of_the_file() {
    let sshd = Sshd::start_faulty(&["short-read=1000"]);
    let remote = sshd.remote_root();
    random_file(remote.join("f"), 3_000_000, 7);
    random_file(remote.join("g"), 9 * MIB as u64 + 17, 8);
    let m = Mount::new(&sshd, &[]);
    // cat, cmp and cp read sequentially (the read-ahead serves them); dd reads 1 MiB blocks.
    let out = run("cat", &[m.join("f")], "/");
    assert_eq!(out.stdout.len(), 3_000_000, "cat stopped early");
    assert!(out.stdout == fs::read(remote.join("f")).unwrap());
    run("cmp", &[m.join("g"), remote.join("g")], "/");
    let copy = tempfile::tempdir().unwrap();
    run("cp", &[m.join("g"), copy.path().join("g")], "/");
    assert_files_equal(copy.path().join("g"), remote.join("g"));
    let out = run(
        "dd",
        &[
            format!("if={}", m.join("f").display()),
            "bs=1M".into(),
            "iflag=direct".into(),
            "status=none".into(),
        ],
        "/",
    );
    assert!(out.stdout == fs::read(remote.join("f")).unwrap(), "dd");
}

#[test]
fn a_server_without_extensions_still_reads_writes_renames_and_syncs() {
    let sshd = Sshd::start_faulty(&["no-extensions"]);
    let remote = sshd.remote_root();
    let m = Mount::new(&sshd, &[]);
    // 32 KiB READs and WRITEs, pipelined as ever.
    let data = random_bytes(8 * MIB + 5, 9);
    let mut f = File::create(m.join("big")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    assert!(fs::read(remote.join("big")).unwrap() == data, "after fsync");
    drop(f);
    run("cmp", &[m.join("big"), remote.join("big")], "/");

    // rename over an existing file, as editors and rsync save.
    fs::write(m.join("old"), b"old contents").unwrap();
    fs::write(m.join("new"), b"new contents").unwrap();
    fs::rename(m.join("new"), m.join("old")).unwrap();
    assert_eq!(fs::read(remote.join("old")).unwrap(), b"new contents");
    assert!(!remote.join("new").exists());
    let leftovers: Vec<_> = fs::read_dir(&remote)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("sftpmount"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    // Over an empty directory, and not over a non-empty one.
    fs::create_dir(m.join("d1")).unwrap();
    fs::write(m.join("d1/x"), b"x").unwrap();
    fs::create_dir(m.join("d2")).unwrap();
    fs::rename(m.join("d1"), m.join("d2")).unwrap();
    assert_eq!(fs::read(remote.join("d2/x")).unwrap(), b"x");
    fs::create_dir(m.join("d3")).unwrap();
    let err = fs::rename(m.join("d3"), m.join("d2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    assert_eq!(fs::read(remote.join("d2/x")).unwrap(), b"x");

    // df answers (run fails the test on a non-zero exit).
    let out = run("df", &[m.path()], "/");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&*m.path().to_string_lossy()));
}

#[test]
fn hostile_names_in_a_listing_are_left_out_and_the_rest_listed() {
    let sshd = Sshd::start_faulty(&["bad-names"]);
    let remote = sshd.remote_root();
    fs::create_dir(remote.join("d")).unwrap();
    for name in ["a", "b", "c"] {
        fs::write(remote.join("d").join(name), name).unwrap();
    }
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("log");
    let m = Mount::new(&sshd, &["-o", &format!("logfile={}", log.display())]);
    let mut names: Vec<String> = fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let out = run("ls", &["-la", "d"], m.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains(" c\n"));
    assert_eq!(fs::read(m.join("d/b")).unwrap(), b"b");
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("left out"), "no warning in the log: {log}");
}

#[test]
fn replies_that_break_the_protocol_fail_their_request_only() {
    // A DATA reply longer than the READ asked for: which bytes would be which?
    {
        let sshd = Sshd::start_faulty(&["oversized-read"]);
        fs::write(sshd.remote_root().join("f"), b"some contents").unwrap();
        let m = Mount::new(&sshd, &[]);
        let err = fs::read(m.join("f")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO), "{err}");
        assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 13);
        fs::write(m.join("g"), b"still writable").unwrap();
        assert_eq!(
            fs::read(sshd.remote_root().join("g")).unwrap(),
            b"still writable"
        );
    }
    // A reply past the packet limit: dropped as it arrives, the session goes on after it.
    {
        let sshd = Sshd::start_faulty(&["huge-reply"]);
        fs::write(sshd.remote_root().join("f"), b"some contents").unwrap();
        let m = Mount::new(&sshd, &["-o", "sftp_channels=1"]);
        let err = fs::read(m.join("f")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO), "{err}");
        assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 13);
        fs::write(m.join("g"), b"the session is sound").unwrap();
        assert_eq!(
            fs::read(sshd.remote_root().join("g")).unwrap(),
            b"the session is sound"
        );
    }
    // A reply to an id never sent, before each OPEN's own: ignored.
    {
        let sshd = Sshd::start_faulty(&["stray-reply"]);
        fs::write(sshd.remote_root().join("f"), b"contents").unwrap();
        let m = Mount::new(&sshd, &[]);
        assert_eq!(fs::read(m.join("f")).unwrap(), b"contents");
        fs::write(m.join("g"), b"written").unwrap();
        assert_eq!(fs::read(sshd.remote_root().join("g")).unwrap(), b"written");
    }
    // A status code no draft defines: EIO for that remove; the file stays.
    {
        let sshd = Sshd::start_faulty(&["unknown-status=victim"]);
        fs::write(sshd.remote_root().join("victim"), b"v").unwrap();
        fs::write(sshd.remote_root().join("other"), b"o").unwrap();
        let m = Mount::new(&sshd, &["-o", "dir_cache=no"]);
        let err = fs::remove_file(m.join("victim")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(sshd.remote_root().join("victim").exists());
        fs::remove_file(m.join("other")).unwrap();
        assert!(!sshd.remote_root().join("other").exists());
    }
    // Handles longer than the draft's 256 bytes: opens fail, the rest works.
    {
        let sshd = Sshd::start_faulty(&["long-handle"]);
        fs::write(sshd.remote_root().join("f"), b"contents").unwrap();
        let m = Mount::new(&sshd, &[]);
        let err = fs::read(m.join("f")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO), "{err}");
        assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 8);
        fs::create_dir(m.join("made")).unwrap();
        assert!(sshd.remote_root().join("made").is_dir());
    }
}

#[test]
fn attributes_that_describe_no_file_are_an_error_not_a_guess() {
    for fault in ["no-type-bits=f", "huge-size=f"] {
        let sshd = Sshd::start_faulty(&[fault]);
        fs::write(sshd.remote_root().join("f"), b"contents").unwrap();
        let m = Mount::new(&sshd, &["-o", "dir_cache=no"]);
        let err = fs::metadata(m.join("f")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO), "{fault}: {err}");
        // Other requests go on: a listing carries its own attributes.
        fs::create_dir(m.join("d")).unwrap();
        assert!(sshd.remote_root().join("d").is_dir(), "{fault}");
    }
}

#[test]
fn a_request_the_server_never_answers_times_out_and_the_mount_goes_on() {
    let sshd = Sshd::start_faulty(&["stall-path=stuck"]);
    fs::write(sshd.remote_root().join("stuck"), b"s").unwrap();
    fs::write(sshd.remote_root().join("fine"), b"fine").unwrap();
    let m = Mount::new(&sshd, &["-o", "request_timeout=3,dir_cache=no"]);
    let stuck = m.join("stuck");
    let started = Instant::now();
    let err = within(Duration::from_secs(30), move || {
        fs::metadata(stuck).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(fs::read(m.join("fine")).unwrap(), b"fine");
    let mut f = File::open(m.join("fine")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "fine");
    let e = fs::metadata(m.join("nothing-here")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn writes_queued_behind_a_stalled_channel_time_out_and_the_writer_hears_of_it() {
    // The server stops reading at the first WRITE: the channel's window fills, the rest of the
    // WRITEs (and whatever follows) wait in the client's queue, never sent.
    let sshd = Sshd::start_faulty(&["freeze-on-write=60"]);
    let m = Mount::new(
        &sshd,
        &["-o", "request_timeout=3,sftp_channels=1,write_buffer=32M"],
    );
    let path = m.join("f");
    let started = Instant::now();
    let outcome = within(Duration::from_secs(45), move || {
        let mut f = File::create(&path).unwrap();
        let data = random_bytes(16 * MIB, 10);
        f.write_all(&data)?;
        f.sync_all()
    });
    let err = outcome.expect_err("16 MiB written to a server that reads nothing");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(started.elapsed() < Duration::from_secs(40));
}

#[test]
fn a_reply_that_cannot_be_framed_or_a_listing_without_end_fails_alone() {
    // A length of 2^31 and 200 bytes: the stream is lost; that request fails, a new connection
    // carries on.
    {
        let sshd = Sshd::start_faulty(&["garbage-length=poison"]);
        fs::write(sshd.remote_root().join("poison"), b"p").unwrap();
        fs::write(sshd.remote_root().join("f"), b"contents").unwrap();
        let m = Mount::new(&sshd, &["-o", "dir_cache=no"]);
        let poison = m.join("poison");
        let stat = within(Duration::from_secs(60), move || fs::metadata(poison));
        assert!(stat.is_err(), "a lookup answered with garbage");
        assert_eq!(fs::read(m.join("f")).unwrap(), b"contents");
        fs::write(m.join("g"), b"the mount goes on").unwrap();
        assert_eq!(
            fs::read(sshd.remote_root().join("g")).unwrap(),
            b"the mount goes on"
        );
    }
    // READDIRs answered with new names for ever: the listing stops at its bound.
    {
        let sshd = Sshd::start_faulty(&["endless-listing=endless"]);
        fs::create_dir(sshd.remote_root().join("endless")).unwrap();
        let m = Mount::new(&sshd, &[]);
        let dir = m.join("endless");
        let listed = within(Duration::from_secs(300), move || {
            fs::read_dir(dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        });
        let err = listed.expect_err("an endless listing");
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO), "{err}");
        fs::write(m.join("g"), b"the mount goes on").unwrap();
        assert_eq!(
            fs::read(sshd.remote_root().join("g")).unwrap(),
            b"the mount goes on"
        );
    }
}

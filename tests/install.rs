//! scripts/install as a user runs it, and the fstab path with what it installed: the binary
//! (no debug sections) where mount.fuse3 finds it on PATH, the man page from the option table,
//! and an fstab file read by `mount -T` (one line, then `mount -a` of all its lines, `noauto`
//! ones left alone), unmounted with umount.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use std::ffi::OsStr;

/// The docs example scripts/test builds (`cargo build --release --examples`) beside the binary.
fn docs_example() -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("examples/docs");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --release --examples, as scripts/test does)",
        path.display()
    );
    path
}

fn section_names(binary: &Path) -> String {
    assert!(
        Path::new("/usr/bin/readelf").exists(),
        "readelf not found: install binutils (scripts/test does)"
    );
    let out = run(
        "readelf",
        &[OsStr::new("-S"), OsStr::new("-W"), binary.as_os_str()],
        "/",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(prefix: &Path) {
    let out = output_with_timeout(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install"))
            .args([OsStr::new("--prefix"), prefix.as_os_str()])
            .env("SFTPMOUNT_BIN", BIN)
            .env("SFTPMOUNT_DOCS", docs_example()),
        None,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "scripts/install: {out:?}");
}

#[test]
fn the_installed_binary_mounts_fstab_lines_through_mount_8() {
    let prefix = tempfile::tempdir().unwrap();
    install(prefix.path());
    let installed = prefix.path().join("bin/sftpmount");
    // .debug_gdb_scripts is loaded with the program (a few bytes): the debug data is not.
    let sections = section_names(&installed);
    assert!(
        !sections.contains(".debug_line") && !sections.contains(".debug_info"),
        "{sections}"
    );
    assert!(
        section_names(Path::new(BIN)).contains(".debug_line"),
        "the build has line tables"
    );
    assert!(fs::metadata(&installed).unwrap().len() < fs::metadata(BIN).unwrap().len() / 2);
    let man = fs::read_to_string(prefix.path().join("share/man/man1/sftpmount.1")).unwrap();
    assert!(
        man.starts_with(".ie") || man.starts_with(".TH"),
        "{}",
        &man[..80.min(man.len())]
    );
    for needed in [
        "follow_symlinks",
        "ProxyJump",
        "max_conns",
        "workaround",
        r"\fIPORT\fR",
        "sftpmount status",
        ".SH RECONNECTING",
        ".SH LOGS",
        ".SH STATUS",
    ] {
        assert!(man.contains(needed), "the man page lacks {needed}");
    }
    // README.md is not installed: the page stands alone.
    assert!(!man.contains("README"), "the man page points to README");

    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (first, second, skipped) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for mp in [&first, &second, &skipped] {
        fs::create_dir(mp).unwrap();
    }
    let _unmount = [&first, &second, &skipped].map(|mp| UnmountOnDrop(mp.to_path_buf()));
    let opts = format!(
        "port={},IdentityFile={},UserKnownHostsFile={}",
        sshd.port(),
        sshd.user_key_path().display(),
        sshd.known_hosts_path().display()
    );
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# as a user writes it\n\
             {src} {a} fuse.sftpmount _netdev,nofail,{opts} 0 0\n\
             {src} {b} fuse.sftpmount _netdev,x-systemd.automount,{opts},ro 0 0\n\
             {src} {c} fuse.sftpmount noauto,{opts} 0 0\n",
            src = sshd.source(),
            a = first.display(),
            b = second.display(),
            c = skipped.display(),
        ),
    )
    .unwrap();
    // mount(8) -> /sbin/mount.fuse -> `/bin/sh -c sftpmount ...`, with the shell's default
    // PATH (libmount passes the helper no PATH): /usr/local/bin, the default prefix, is on it.
    // The installed binary stands there for the test.
    let _on_path = OnDefaultPath::link(&installed);
    let mount = |args: &[&OsStr]| {
        output_with_timeout(
            Command::new("mount")
                .env("HOME", sshd.client_home())
                .arg("-T")
                .arg(&fstab)
                .args(args),
            None,
            BIN_TIMEOUT,
        )
    };
    let out = mount(&[first.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let info = mount_info(&first).expect("mounted when mount(8) returned");
    assert_eq!(info.fs_type, "fuse.sftpmount");
    assert!(
        daemon_of(&first, &installed),
        "no process of the installed binary serves the mount"
    );
    fs::write(first.join("via-fstab"), b"ok").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("via-fstab")).unwrap(),
        b"ok"
    );
    let out = output_with_timeout(Command::new("umount").arg(&first), None, BIN_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(Duration::from_secs(10), || mount_info(&first).is_none()));

    // mount -a: every line but the noauto one.
    let out = mount(&[OsStr::new("-a")]);
    assert!(out.status.success(), "{out:?}");
    assert!(mount_info(&first).is_some() && mount_info(&second).is_some());
    assert!(mount_info(&skipped).is_none(), "noauto was mounted");
    assert!(
        fs::write(second.join("ro"), b"x").is_err(),
        "ro was not honoured"
    );
    for mp in [&first, &second] {
        let out = output_with_timeout(Command::new("umount").arg(mp), None, BIN_TIMEOUT);
        assert!(out.status.success(), "{out:?}");
    }
}

/// Whether a process of `binary` runs with `mountpoint` among its arguments.
fn daemon_of(mountpoint: &Path, binary: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let dir = entry.path();
        let runs = fs::read_link(dir.join("exe")).is_ok_and(|exe| exe == binary);
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        runs && cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == mountpoint.as_os_str().as_bytes())
    })
}

/// /usr/local/bin/sftpmount pointing at a test's installed binary, removed when dropped.
struct OnDefaultPath(PathBuf);

impl OnDefaultPath {
    fn link(binary: &Path) -> OnDefaultPath {
        let link = PathBuf::from("/usr/local/bin/sftpmount");
        if let Ok(existing) = fs::read_link(&link) {
            // One a failed earlier run left behind (its prefix is gone by now).
            assert!(
                !existing.exists(),
                "{} -> {} is in the way",
                link.display(),
                existing.display()
            );
            fs::remove_file(&link).unwrap();
        }
        assert!(
            !link.exists(),
            "an sftpmount is installed at {}: this test needs the name for a moment; remove it \
             or run the test elsewhere",
            link.display()
        );
        fs::create_dir_all("/usr/local/bin").unwrap();
        std::os::unix::fs::symlink(binary, &link).unwrap();
        OnDefaultPath(link)
    }
}

impl Drop for OnDefaultPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

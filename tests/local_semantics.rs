//! What a local filesystem would show, where SFTP v3 does not force otherwise (issue #12): an
//! open file whose name was removed, create modes, ctime, errnos. Each check is a shell script
//! run on a real mount twice: as root, and as an ordinary user through a mount with
//! `default_permissions,allow_other`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const USER: &str = "sftpmount-user";

/// Runs `script` with `sh -e` in `dir` (a directory on the mount), as root or as `user`;
/// returns its stdout, panicking with its output when it fails.
fn sh(dir: &Path, user: Option<(u32, u32)>, script: &str) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-e", "-c", script]).current_dir(dir);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    let out = output_with_timeout(&mut cmd, None, RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two ways each check runs: root on a plain mount, and an ordinary user on a mount with
/// default_permissions,allow_other (in a directory of the server's the user owns).
fn each_way(sshd: &Sshd, check: impl Fn(&Path, Option<(u32, u32)>, &Path)) {
    let m = Mount::new(sshd, &[]);
    fs::create_dir(m.join("root")).unwrap();
    check(&m.join("root"), None, &sshd.remote_root().join("root"));
    drop(m);

    let ids = ensure_user(USER);
    let server_dir = sshd.remote_root().join("user");
    fs::create_dir(&server_dir).unwrap();
    std::os::unix::fs::chown(&server_dir, Some(ids.0), Some(ids.1)).unwrap();
    fs::set_permissions(sshd.remote_root(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::new(sshd, &["-o", "default_permissions,allow_other"]);
    check(&m.join("user"), Some(ids), &server_dir);
}

#[test]
fn an_open_file_whose_name_was_removed_still_stats() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        let out = sh(
            dir,
            user,
            "echo hi > g; exec 3<g; rm g; sleep 2; stat -L -c '%s %h' /dev/fd/3; cat <&3",
        );
        assert_eq!(out, "3 0\nhi\n");
        assert!(!server.join("g").exists());
    });
}

#[test]
fn an_open_file_whose_name_was_replaced_is_reached_by_nothing_else() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        // Outside the user's directory, the login's (root's) and private: what a symlink put
        // in place of an open file must not let a change through the old name reach.
        let secret = sshd.remote_root().join("secret");
        fs::write(&secret, "secret\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let script = format!(
            "echo old > f; echo new > g; echo x > h; echo y > k
             exec 3<f 4<>h 5<k
             mv g f
             ln -s {secret} s; mv -f s h
             rm k
             cat /proc/self/fd/3 /proc/self/fd/4 - <&5
             perl -e 'open(my $f, \"+<&=4\") or die; chmod(0666, $f) or die \"fchmod: $!\"'
             stat -L -c %a /dev/fd/4
             ls -a {server} | grep -c sftpmount-hidden",
            secret = secret.display(),
            server = server.display()
        );
        assert_eq!(sh(dir, user, &script), "old\nx\ny\n666\n3\n");
        let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the symlink's target was changed");
        assert_eq!(fs::read_to_string(server.join("f")).unwrap(), "new\n");
        assert_eq!(
            fs::read_link(server.join("h")).unwrap(),
            secret,
            "the symlink took h's name"
        );
        assert!(!server.join("k").exists());
        // Closed: the hidden names went with the last descriptors.
        let hidden_gone = wait_until(Duration::from_secs(10), || {
            fs::read_dir(server)
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().contains("hidden"))
        });
        assert!(hidden_gone, "hidden files left behind");
        fs::remove_file(&secret).unwrap();
    });
}

#[test]
fn ctime_moves_with_each_change_through_the_mount_and_only_then() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, _| {
        let who = match user {
            Some((uid, gid)) => format!("{uid}:{gid}"),
            None => "0:0".to_string(),
        };
        // Each change: ctime at or after the moment it was made, later than before, and never
        // below mtime; a change that fails leaves it.
        let script = format!(
            "echo data > f; echo other > g
             before=$(stat -c %Z f)
             check() {{
                 file=$1; shift
                 sleep 1.1; t=$(date +%s); \"$@\"
                 c=$(stat -c %Z $file); m=$(stat -c %Y $file)
                 [ $c -ge $t ] && [ $c -gt $before ] && [ $c -ge $m ] || {{
                     echo \"$*: ctime $c, made at $t, before $before, mtime $m\"; exit 1; }}
                 before=$c
             }}
             check f chmod 600 f
             check f chown {who} f
             check f ln f f2
             check f3 mv f f3
             mv f3 f
             check f truncate -s 2 f
             check f sh -c 'echo more >> f'
             check f touch -d @1000000000 f
             sleep 1.1
             if ln g f 2>/dev/null; then echo 'ln over f worked'; exit 1; fi
             [ $(stat -c %Z f) -eq $before ] || {{ echo 'a failed ln moved ctime'; exit 1; }}
             echo ok"
        );
        assert_eq!(sh(dir, user, &script), "ok\n");
    });
}

/// `stat -c FORMAT` of a server path, as the server's own filesystem has it.
fn server_stat(path: &Path, format: &str) -> String {
    let out = run("stat", &["-c", format, path.to_str().unwrap()], "/");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn new_files_get_the_mode_asked_and_their_creators_owner() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        let (uid, gid) = user.unwrap_or((0, 0));
        sh(
            dir,
            user,
            "umask 0; mkdir -m 777 d; : > f; mkdir -m 2775 sg
             perl -MFcntl -e 'sysopen(my $f, \"s\", O_CREAT|O_WRONLY, 04777) or die $!'
             ln -s f l; umask 022; : > sg/inherits",
        );
        // What the server has: the modes asked, whatever its umask, and the creator's ids.
        assert_eq!(
            server_stat(&server.join("d"), "%a %u:%g"),
            format!("777 {uid}:{gid}")
        );
        assert_eq!(
            server_stat(&server.join("f"), "%a %u:%g"),
            format!("666 {uid}:{gid}")
        );
        assert_eq!(
            server_stat(&server.join("s"), "%a %u:%g"),
            format!("4777 {uid}:{gid}")
        );
        assert_eq!(
            server_stat(&server.join("l"), "%u:%g"),
            format!("{uid}:{gid}")
        );
        assert_eq!(server_stat(&server.join("sg"), "%a"), "2775");
        // In a setgid directory, a new file takes the directory's group.
        let sg_gid = server_stat(&server.join("sg"), "%g");
        assert_eq!(
            server_stat(&server.join("sg/inherits"), "%a %u:%g"),
            format!("644 {uid}:{sg_gid}")
        );
        // ... and the mount shows the same.
        assert_eq!(
            sh(dir, user, "stat -c '%a %u:%g' d f s"),
            format!("777 {uid}:{gid}\n666 {uid}:{gid}\n4777 {uid}:{gid}\n")
        );
        // A file made on the server behind a listing the mount holds: the kernel creates it
        // (the name looked missing), but it is opened as it is and keeps its mode.
        sh(dir, user, "ls > /dev/null");
        let existing = server.join("e");
        fs::write(&existing, b"old").unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&existing, Some(uid), Some(gid)).unwrap();
        sh(dir, user, "umask 0; echo new > e");
        assert_eq!(server_stat(&existing, "%a %s"), "600 4");
    });
}

#[test]
fn hard_links_made_through_the_mount_share_one_inode() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        let out = sh(
            dir,
            user,
            "echo a > a; ln a b; stat -c '%i %h' a b
             ln b c; stat -c '%h' a
             chmod 640 b; stat -c '%a' a
             rm b; stat -c '%h' a c
             mv c d; echo more >> d; stat -c '%h %s' a",
        );
        let lines: Vec<&str> = out.lines().collect();
        let (first, second) = (lines[0], lines[1]);
        assert_eq!(first.split(' ').next(), second.split(' ').next(), "{out}");
        assert!(first.ends_with(" 2") && second.ends_with(" 2"), "{out}");
        assert_eq!(&lines[2..], ["3", "640", "2", "2", "2 7"], "{out}");

        // Links made on the server: counted as the listing's long name says; after a name of
        // such a file goes through the mount, its other names (which the mount cannot tell)
        // count again once the kernel asks (attr_timeout, 1 s).
        fs::write(server.join("x"), b"x").unwrap();
        fs::hard_link(server.join("x"), server.join("y")).unwrap();
        let out = sh(
            dir,
            user,
            "ls -l > /dev/null; stat -c %h x y
             ls -l > /dev/null; rm y; sleep 1.2; stat -c %h x",
        );
        assert_eq!(out, "2\n2\n1\n");
    });
}

#[test]
fn errnos_are_those_of_a_local_filesystem() {
    let sshd = Sshd::start();
    // What the server's own filesystem says to a truncate past its largest file.
    let native = {
        let probe = sshd.remote_root().join("native");
        let out = try_run("truncate", &["-s", "16T", probe.to_str().unwrap()], "/");
        let _ = fs::remove_file(&probe);
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    each_way(&sshd, |dir, user, _| {
        let long = "n".repeat(256);
        let script = format!(
            "for op in 'touch' 'mkdir' 'stat' 'ls -d'; do
                 if $op {long} 2>err; then echo \"$op worked\"; fi
                 grep -q 'File name too long' err || {{ echo \"$op: $(cat err)\"; }}
             done
             mkdir -p full/x empty
             perl -e 'rename(\"empty\", \"full\") or print \"$!\\n\"'
             : > f; truncate -s 16T f 2>&1 | sed 's/.*: //' || true"
        );
        let out = sh(dir, user, &script);
        let expected_truncate = native.rsplit(": ").next().unwrap_or("").to_string();
        assert_eq!(
            out,
            format!(
                "Directory not empty\n{}",
                if native.is_empty() {
                    String::new()
                } else {
                    format!("{expected_truncate}\n")
                }
            ),
            "native truncate said: {native}"
        );
    });
}

#[test]
fn times_sftp_v3_cannot_hold_are_stored_as_near_as_it_can() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        // Whole seconds from 1970 to 2106 (32 bits): sub-second parts dropped, later times
        // held at the last second, and utimensat never fails for it.
        let out = sh(
            dir,
            user,
            "touch f; touch -d @1.5 f; stat -c %Y f
             touch -d @5000000000 f; stat -c %Y f
             touch -m -d @1234567890.999 f; stat -c %Y f",
        );
        assert_eq!(out, "1\n4294967295\n1234567890\n");
        assert_eq!(server_stat(&server.join("f"), "%Y"), "1234567890");
    });
}

/// Python reading a directory through libc's opendir/readdir/rewinddir (the calls programs
/// use, one handle throughout), then the rest of the script (`body`): `names(d)` gives the
/// names read from the handle `d` with their d_ino.
fn dir_reader(body: &str) -> String {
    format!(
        "python3 - <<'EOF'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Dirent(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64),
                ('d_reclen', ctypes.c_ushort), ('d_type', ctypes.c_ubyte),
                ('d_name', ctypes.c_char * 256)]
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.rewinddir.argtypes = [ctypes.c_void_p]
def names(d):
    out = {{}}
    while True:
        e = libc.readdir(d)
        if not e:
            return out
        n = e.contents.d_name.decode()
        if n not in ('.', '..'):
            out[n] = e.contents.d_ino
{body}
EOF"
    )
}

#[test]
fn rewinddir_sees_the_directory_as_it_is_then() {
    let sshd = Sshd::start();
    // Names made through the mount after opendir, by this process and by another.
    each_way(&sshd, |dir, user, _| {
        let out = sh(
            dir,
            user,
            &dir_reader(
                "open('a', 'w').close()
d = libc.opendir(b'.')
print(sorted(names(d)))
open('made', 'w').close()
os.rename('a', 'b')
os.system('touch other')
libc.rewinddir(d)
print(sorted(names(d)))",
            ),
        );
        assert_eq!(out, "['a']\n['b', 'made', 'other']\n");
    });
    // With cache=no, names made on the server too.
    let m = Mount::new(&sshd, &["-o", "cache=no"]);
    let server = sshd.remote_root().join("nocache");
    fs::create_dir(&server).unwrap();
    let script = format!(
        "d = libc.opendir(b'.')
print(sorted(names(d)))
open('{}/on-server', 'w').close()
libc.rewinddir(d)
print(sorted(names(d)))",
        server.display()
    );
    let out = sh(&m.join("nocache"), None, &dir_reader(&script));
    assert_eq!(out, "[]\n['on-server']\n");
}

#[test]
fn a_directory_made_in_a_setgid_directory_inherits_the_bit() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, server| {
        let shown = sh(
            dir,
            user,
            "umask 022; mkdir -m 2775 d; mkdir d/sub; mkdir -p d/sub/deep/er; mkdir -m 700 d/own
             mkdir plain; mkdir plain/sub
             stat -c %A d/sub d/sub/deep/er d/own plain/sub",
        );
        assert_eq!(
            shown, "drwxr-sr-x\ndrwxr-sr-x\ndrwx--S---\ndrwxr-xr-x\n",
            "through the mount"
        );
        for (path, mode) in [
            ("d/sub", "drwxr-sr-x"),
            ("d/sub/deep/er", "drwxr-sr-x"),
            ("d/own", "drwx--S---"),
            ("plain/sub", "drwxr-xr-x"),
        ] {
            assert_eq!(
                server_stat(&server.join(path), "%A"),
                mode,
                "{path} on the server"
            );
        }
    });
}

#[test]
fn a_name_removed_after_opendir_is_listed_with_the_inode_number_its_file_had() {
    let sshd = Sshd::start();
    each_way(&sshd, |dir, user, _| {
        let out = sh(
            dir,
            user,
            &dir_reader(
                "for n in ('f', 'g', 'h'):
    open(n, 'w').close()
before = {n: os.lstat(n).st_ino for n in ('f', 'g', 'h')}
d = libc.opendir(b'.')
os.unlink('f')
os.rename('h', 'g')
listed = names(d)
# Whether names removed since opendir are read is unspecified (POSIX); when they are, with the
# number their file had. g is h's file now, as a local filesystem reads it.
print(listed.get('f', before['f']) == before['f'], listed.get('h', before['h']) == before['h'],
      listed['g'] == before['h'])
# The removed names do not come back through what the listing gave, and g stays h's file.
print(os.path.exists('f'), os.path.exists('h'), os.lstat('g').st_ino == before['h'])",
            ),
        );
        assert_eq!(out, "True True True\nFalse False True\n");
    });
}

#[test]
fn file_handles_are_refused_at_once_not_stale_later() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    fs::write(m.join("f"), b"x").unwrap();
    let out = sh(
        m.path(),
        None,
        "python3 - <<'EOF'
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [('handle_bytes', ctypes.c_uint), ('handle_type', ctypes.c_int),
                ('f_handle', ctypes.c_ubyte * 128)]
h = Handle(handle_bytes=128)
mount_id = ctypes.c_int()
r = libc.name_to_handle_at(-100, b'f', ctypes.byref(h), ctypes.byref(mount_id), 0)
print(r, ctypes.get_errno())
EOF",
    );
    assert_eq!(out, format!("-1 {}\n", libc::EOPNOTSUPP));
}

#[test]
fn a_file_moved_away_and_back_by_another_mount_is_found() {
    let sshd = Sshd::start();
    let (first, second) = (Mount::new(&sshd, &[]), Mount::new(&sshd, &[]));
    fs::create_dir(first.join("A")).unwrap();
    fs::create_dir(first.join("B")).unwrap();
    fs::write(first.join("A/f"), b"moved").unwrap();
    assert_eq!(fs::read_dir(first.join("A")).unwrap().count(), 1);
    fs::rename(first.join("A/f"), first.join("B/f")).unwrap();
    assert_eq!(fs::read_dir(first.join("A")).unwrap().count(), 0);
    fs::rename(second.join("B/f"), second.join("A/f")).unwrap();
    // The first mount's own change to A and the second's may share a second of A's mtime (SFTP
    // v3 times are whole seconds): the first mount looks again once that second is over.
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || fs::read(first.join("A/f"))
            .is_ok_and(|d| d == b"moved")),
        "A/f not found through the first mount"
    );
    let names: Vec<_> = fs::read_dir(first.join("A"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"], "after {:?}", started.elapsed());
}

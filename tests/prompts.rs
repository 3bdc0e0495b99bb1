//! What a person at a terminal is asked, as ssh asks it: an unknown host key's fingerprint with
//! a yes/no/fingerprint question (recorded when trusted), a password asked again after a wrong
//! one, a key's passphrase asked again after a wrong one. Each runs the binary as a user types
//! it, on a pseudo-terminal that answers the prompts, and checks the server and known_hosts.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs the binary with `args` on a pseudo-terminal of its own (its controlling terminal),
/// answering each prompt in `answers` (text to wait for, then the line to type) in turn; what
/// the terminal showed comes out on the child's stdout when the binary has exited, and its exit
/// code is the child's.
fn spawn_on_terminal(
    sshd: &Sshd,
    args: &[String],
    answers: &[(&str, &str)],
) -> std::process::Child {
    const SCRIPT: &str = r#"
import json, os, pty, select, sys, time
answers = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
seen, pending, deadline = b"", b"", time.time() + 60
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 1)
    if not ready:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    pending += chunk
    if answers and answers[0][0].encode() in pending:
        # As a person would: after the prompt has turned echo off.
        time.sleep(0.3)
        os.write(fd, answers.pop(0)[1].encode() + b"\n")
        pending = b""
# A binary still running at the deadline (stuck on a question nobody answers) is killed,
# so that the test fails instead of hanging.
done, status = os.waitpid(pid, os.WNOHANG)
if done == 0:
    os.kill(pid, 9)
    seen += b"\n[killed: still running after 60 s]\n"
    _, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    Command::new("python3")
        .args(["-c", SCRIPT, &serde_json_list(answers)])
        .arg(sftpmount_command().get_program())
        .args(args)
        .env("HOME", sshd.client_home())
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_ASKPASS")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`spawn_on_terminal`] to its end: the exit code and what the terminal showed.
fn on_terminal(sshd: &Sshd, args: &[String], answers: &[(&str, &str)]) -> (i32, String) {
    let child = spawn_on_terminal(sshd, args, answers);
    let out = within(Duration::from_secs(90), move || {
        child.wait_with_output().unwrap()
    });
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), shown)
}

/// `[["wait for", "answer"], ...]` as JSON (the strings here need no escaping but quotes).
fn serde_json_list(answers: &[(&str, &str)]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let items: Vec<String> = answers
        .iter()
        .map(|(wait, answer)| format!("[{}, {}]", quote(wait), quote(answer)))
        .collect();
    format!("[{}]", items.join(", "))
}

fn mount_args(source: &str, mountpoint: &Path, opts: &[String]) -> Vec<String> {
    let mut args = vec![source.to_string(), mountpoint.display().to_string()];
    args.extend(opts.iter().cloned());
    args
}

/// A mount point in a directory of its own, unmounted when the test ends.
fn mount_point() -> (tempfile::TempDir, std::path::PathBuf, UnmountOnDrop) {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let cleanup = UnmountOnDrop(mp.clone());
    (dir, mp, cleanup)
}

/// The test key and `known` as the only known_hosts, StrictHostKeyChecking left at its default.
fn key_login(sshd: &Sshd, known: &Path) -> Vec<String> {
    vec![
        "-p".to_string(),
        sshd.port().to_string(),
        "-o".into(),
        format!("IdentityFile={}", sshd.user_key_path().display()),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
    ]
}

const QUESTION: &str = "Are you sure you want to continue connecting (yes/no/[fingerprint])?";

#[test]
fn an_unknown_host_key_is_asked_about_with_its_fingerprint_and_recorded_when_trusted() {
    let sshd = Sshd::start();
    let (dir, mp, _cleanup) = mount_point();
    let known = dir.path().join("known_hosts");
    let args = mount_args(&sshd.source(), &mp, &key_login(&sshd, &known));
    let fingerprint = {
        let out = run(
            "ssh-keygen",
            &[
                "-l",
                "-f",
                sshd.host_key_path().with_extension("pub").to_str().unwrap(),
            ],
            "/",
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    // No: refused, nothing recorded.
    let (code, shown) = on_terminal(&sshd, &args, &[(QUESTION, "no")]);
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains(&format!("ED25519 key fingerprint is {fingerprint}")),
        "{shown}"
    );
    assert!(mount_info(&mp).is_none());
    assert!(!known.exists() || fs::read_to_string(&known).unwrap().is_empty());
    // Something else, then the fingerprint itself: trusted and recorded, as ssh does.
    let (code, shown) = on_terminal(
        &sshd,
        &args,
        &[
            (QUESTION, "maybe"),
            ("Please type 'yes', 'no' or the fingerprint", &fingerprint),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    fs::write(mp.join("trusted"), b"x").unwrap();
    assert_eq!(fs::read(sshd.remote_root().join("trusted")).unwrap(), b"x");
    let recorded = fs::read_to_string(&known).unwrap();
    assert!(
        recorded.contains(sshd.host_key_pub().split_whitespace().nth(1).unwrap()),
        "{recorded}"
    );
    assert!(run("umount", &[mp.as_os_str()], "/").status.success());
    // Known now: no question.
    let (code, shown) = on_terminal(&sshd, &args, &[]);
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("authenticity"), "{shown}");
}

#[test]
fn a_wrong_password_or_passphrase_is_asked_again_as_ssh_does() {
    let sshd = Sshd::start_with_password_auth();
    let (dir, mp, _cleanup) = mount_point();
    let password = "pw-Qq7!typed at a terminal";
    let (source, mut opts) = sshd.password_login(password);
    opts.retain(|o| o != "password_stdin");
    opts.truncate(opts.len() - 1); // the "-o" before password_stdin
    let args = mount_args(&source, &mp, &opts);
    let asked = "'s password:";
    let (code, shown) = on_terminal(
        &sshd,
        &args,
        &[
            (asked, "wrong one"),
            (asked, "wrong two"),
            (asked, password),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    assert_eq!(
        shown
            .matches("Permission denied, please try again.")
            .count(),
        2,
        "{shown}"
    );
    assert!(
        !shown.contains("wrong one") && !shown.contains(password),
        "echoed: {shown}"
    );
    fs::write(mp.join("after-retries"), b"x").unwrap();
    assert!(sshd.remote_root().join("after-retries").exists());
    assert!(run("umount", &[mp.as_os_str()], "/").status.success());

    // An encrypted key: a wrong passphrase is asked again; the right one logs in with the key.
    let key = dir.path().join("enc_key");
    fs::copy(sshd.user_key_path(), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    run(
        "ssh-keygen",
        &["-p", "-q", "-N", "phrase two", "-f", key.to_str().unwrap()],
        "/",
    );
    let mut opts = sshd.ssh_opts_without_key();
    opts.extend(["-o".into(), format!("IdentityFile={}", key.display())]);
    let args = mount_args(&sshd.source(), &mp, &opts);
    let (code, shown) = on_terminal(
        &sshd,
        &args,
        &[
            ("Enter passphrase for key", "not it"),
            ("Bad passphrase, try again for", "phrase two"),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(mount_info(&mp).is_some());
    assert!(run("umount", &[mp.as_os_str()], "/").status.success());
    // Three wrong ones: the key is passed over and the next method asked (a password for
    // root, which this sshd refuses: its one line says why the key was not used).
    let (code, shown) = on_terminal(
        &sshd,
        &args,
        &[
            ("Enter passphrase for key", "a"),
            ("Bad passphrase", "b"),
            ("Bad passphrase", "c"),
            ("password:", "nope"),
            ("password:", "nope"),
            ("password:", "nope"),
        ],
    );
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("enc_key: wrong passphrase"), "{shown}");
}

#[test]
fn a_reconnection_asks_nobody_even_with_a_terminal_there() {
    let sshd = Sshd::start();
    let (dir, mp, _cleanup) = mount_point();
    let known = dir.path().join("known_hosts");
    fs::copy(sshd.known_hosts_path(), &known).unwrap();
    let mut args = mount_args(&sshd.source(), &mp, &["-f".to_string()]);
    args.extend(key_login(&sshd, &known));
    // In the foreground, on a terminal nobody answers.
    let child = spawn_on_terminal(&sshd, &args, &[]);
    assert!(wait_until(Duration::from_secs(20), || mount_info(&mp).is_some()));
    fs::write(mp.join("f"), b"x").unwrap();
    // The host key is forgotten, then the connection lost: the reconnection meets a key it
    // does not know, and must refuse it, not wait on a question.
    fs::write(&known, "").unwrap();
    assert!(sshd.kill_connections() > 0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(run("umount", &[mp.as_os_str()], "/").status.success());
    let out = within(Duration::from_secs(90), move || {
        child.wait_with_output().unwrap()
    });
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("authenticity"), "asked: {shown}");
    assert!(shown.contains("is not known"), "{shown}");
}

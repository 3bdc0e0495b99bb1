//! A first mount against servers as users meet them: one whose sshd runs no SFTP server, and a
//! login whose shell startup file prints text before the SFTP server starts. Each either mounts
//! or exits 1 at once with one line that says what to fix on the server.

mod common;

use std::fs;
use std::os::unix::fs::chown;
use std::process::Command;

use common::*;

#[test]
fn a_server_without_the_sftp_subsystem_is_named_in_one_line_and_exit_1() {
    let sshd = Sshd::start_with(SshdOptions {
        without_sftp: true,
        ..SshdOptions::default()
    });
    let out = Mount::try_new(&sshd, &[]).expect_err("mounted without an SFTP server");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = refusal(out);
    assert!(
        line.contains("127.0.0.1 runs no SFTP server") && line.contains("Subsystem sftp"),
        "{line}"
    );
}

const CHATTY: &str = "sftpmount-chatty";

/// A login whose shell is bash (which reads ~/.bashrc when sshd starts it, as Debian builds
/// it) with `bashrc` as its ~/.bashrc, and the test's key in its ~/.ssh/authorized_keys (sshd
/// reads that as the user: the harness's own file is root's alone); the remote root is given
/// to it. Returns the files made, for removal.
fn chatty_login(sshd: &Sshd, bashrc: &str) -> Vec<RemoveOnDrop> {
    let (uid, gid) = ensure_user(CHATTY);
    // `*`: no password, and not locked (`!`), which sshd without PAM refuses for keys too.
    run(
        "usermod",
        &["--shell", "/bin/bash", "--password", "*", CHATTY],
        "/",
    );
    let home = String::from_utf8(run("sh", &["-c", &format!("echo ~{CHATTY}")], "/").stdout)
        .unwrap()
        .trim()
        .to_string();
    let home = std::path::Path::new(&home);
    fs::create_dir_all(home.join(".ssh")).unwrap();
    let keys = home.join(".ssh/authorized_keys");
    fs::copy(sshd.user_key_path().with_extension("pub"), &keys).unwrap();
    let rc = home.join(".bashrc");
    fs::write(&rc, bashrc).unwrap();
    for path in [&rc, &keys] {
        chown(path, Some(uid), Some(gid)).unwrap();
    }
    sshd.chown_remote_root(CHATTY);
    vec![RemoveOnDrop(rc), RemoveOnDrop(keys)]
}

fn sshd_reading_the_users_authorized_keys() -> Sshd {
    Sshd::start_with(SshdOptions {
        extra_config: vec!["AuthorizedKeysFile .ssh/authorized_keys".into()],
        ..SshdOptions::default()
    })
}

fn mount_as_chatty(sshd: &Sshd) -> Result<Mount, std::process::Output> {
    let source = sshd.source_as(CHATTY, &sshd.remote_root());
    Mount::try_with(sshd, &source, &sshd.ssh_opts(), None)
}

#[test]
fn text_a_login_shell_prints_before_the_sftp_server_is_skipped_or_explained() {
    let sshd = sshd_reading_the_users_authorized_keys();
    // As sshfs: the greeting is skipped, with a warning naming what prints it.
    let made = chatty_login(
        &sshd,
        "echo \"Welcome to box\"\nprintf 'second line\\r\\n'\n",
    );
    let rc = made[0].0.clone();
    let shell_says = |cmd: &str| {
        let out = Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-i"])
            .arg(sshd.user_key_path())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                sshd.known_hosts_path().display()
            ))
            .args([
                "-p",
                &sshd.port().to_string(),
                &format!("{CHATTY}@127.0.0.1"),
                cmd,
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The premise: this shell does print it, where sftp-server's first bytes would be.
    let said = shell_says("true");
    assert!(
        said.starts_with("Welcome to box"),
        "bash did not read ~/.bashrc: {said}"
    );
    let m = mount_as_chatty(&sshd).expect("mount past the greeting");
    let err = String::from_utf8_lossy(&m.mount_output().stderr).into_owned();
    assert!(
        err.contains("Welcome to box") && err.contains(".bashrc"),
        "a warning names it: {err}"
    );
    fs::write(m.join("after-greeting"), b"data").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("after-greeting")).unwrap(),
        b"data"
    );
    drop(m);
    // A shell that prints and never starts the server: one line saying so, exit 1.
    fs::write(&rc, "echo 'No SFTP for you'\nexit 0\n").unwrap();
    let out = mount_as_chatty(&sshd).expect_err("mounted without a server");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = refusal(out);
    assert!(
        line.contains("No SFTP for you") && line.contains(".bashrc"),
        "{line}"
    );
}

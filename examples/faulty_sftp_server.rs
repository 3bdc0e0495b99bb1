//! `faulty_sftp_server [--fault NAME[=VALUE]]... [--server PATH]`: the tests' misbehaving SFTP
//! server as a program, for sshd's `Subsystem sftp` line. Relays between the client and OpenSSH's
//! sftp-server, altering packets per the faults listed in tests/common/faulty_server.rs.

#[path = "../tests/common/faulty_server.rs"]
mod faulty_server;

fn main() {
    faulty_server::main()
}

//! A misbehaving SFTP server of our own, for the integration tests: sshd runs it as its
//! `Subsystem sftp` command. It relays SFTP v3 packets (draft-ietf-secsh-filexfer-02) between
//! the client (its stdin and stdout) and OpenSSH's real `sftp-server` (its child), and alters
//! them per the faults named on its command line, so the tests can show what the mount does
//! when a server bends or breaks the protocol. Built as `examples/faulty_sftp_server.rs`.
//!
//! `faulty_sftp_server [--fault NAME[=VALUE]]... [--server PATH]`, a command line because that
//! is all sshd's `Subsystem` line can carry. Faults combine; a repeated one keeps its last value.
//!
//! - `short-read=N` (N > 0): DATA replies cut to at most N bytes, which the draft allows.
//! - `no-extensions`: VERSION carries no extension pairs; EXTENDED requests are answered here
//!   with OP_UNSUPPORTED and never reach the server.
//! - `bad-names`: the first NAME reply to READDIR on each directory handle gains six hostile
//!   entries first: `a/b`, `nul\0name`, the empty name, `.`, `..` and 300 `x`s.
//! - `oversized-read`: DATA replies to READ end with 0xEE bytes until they hold 100 bytes more
//!   than the READ asked for (100 bytes are appended even when the server sent less).
//! - `huge-reply`: DATA replies grow to 2 MiB, past any client's packet limit (OpenSSH's is
//!   256 KiB, ours 1 MiB).
//! - `stray-reply`: each reply to OPEN is preceded by a STATUS OK for id 0xFFFFFFF0, which the
//!   client never sent.
//! - `unknown-status=NAME`: REMOVE of a path whose last component is NAME is answered here with
//!   status code 77, "strange"; the file stays.
//! - `long-handle`: handles grow to 300 bytes (the draft caps them at 256) and are shrunk back
//!   in the requests that carry them.
//! - `no-type-bits=NAME`: ATTRS replies about a path whose last component is NAME lose the file
//!   type bits of their permissions.
//! - `huge-size=NAME`: ATTRS replies about such a path, with a size, say 0xFFFF_FFFF_FFFF_FF00.
//! - `stall-after=N`: nothing more reaches the client after its first N packets (VERSION and
//!   this program's own replies count); requests still reach the server.
//! - `stall-change=NAME`: like `stall-path`, for the requests that change names alone (OPEN,
//!   MKDIR, REMOVE, RMDIR, RENAME, SYMLINK, posix-rename, hardlink): the server carries them
//!   out, their replies never come; lookups of NAME are answered.
//! - `stall-change-once=NAME`: as `stall-change`, for the first such request only, on any
//!   connection (a file `.stalled-NAME` next to NAME marks it done): one sent again after a cut
//!   is answered.
//! - `freeze-on-write=SECONDS`: at the first WRITE, stops reading requests for SECONDS, so the
//!   channel's window fills and the client's later requests queue behind it; then reads and
//!   drops everything until the client goes.
//! - `stall-path=NAME`: requests about a path whose last component is NAME (the first string of
//!   the request, or the path after the name of a path-carrying extension) are never answered.
//! - `garbage-length=NAME`: a request about a path whose last component is NAME is answered
//!   here with a length field of 2^31 followed by 200 bytes of garbage: a stream that can no
//!   longer be framed.
//! - `endless-listing=NAME`: READDIRs of a directory whose last component is NAME are answered
//!   here, each with 1000 new names, and the listing never ends.
//!
//! Plain threads and blocking pipes: one relays requests, one relays replies. Both may answer
//! the client, so whole packets go out under one lock. What cannot be parsed passes unchanged.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

const USAGE: &str = "usage: faulty_sftp_server [--fault NAME[=VALUE]]... [--server PATH]";
const FAULTS: &str = "short-read=N, no-extensions, bad-names, oversized-read, stray-reply, huge-reply, \
     unknown-status=NAME, long-handle, no-type-bits=NAME, huge-size=NAME, stall-after=N, stall-path=NAME, stall-change=NAME, stall-change-once=NAME, \
     freeze-on-write=SECONDS, garbage-length=NAME, endless-listing=NAME";
const DEFAULT_SERVER: &str = "/usr/lib/openssh/sftp-server";

// The packet types are the codec's: one table of them.
use sftpmount::sftp::proto::packet_type as fxp;

/// Requests whose first field after the id is a handle.
const HANDLE_FIRST: [u8; 6] = [
    fxp::CLOSE,
    fxp::READ,
    fxp::WRITE,
    fxp::FSTAT,
    fxp::FSETSTAT,
    fxp::READDIR,
];
/// Requests whose first field after the id is a path.
const PATH_FIRST: [u8; 12] = [
    fxp::OPEN,
    fxp::LSTAT,
    fxp::SETSTAT,
    fxp::OPENDIR,
    fxp::REMOVE,
    fxp::MKDIR,
    fxp::RMDIR,
    fxp::REALPATH,
    fxp::STAT,
    fxp::RENAME,
    fxp::READLINK,
    fxp::SYMLINK,
];
/// Extensions whose first field after their name is a handle.
const HANDLE_EXTENSIONS: [&[u8]; 2] = [b"fsync@openssh.com", b"fstatvfs@openssh.com"];
/// Extensions whose first field after their name is a path: the mount renames, links and
/// asks for free space through these, so a stalled path must stall them too.
/// Requests that change names (with EXTENDED: the path-carrying extensions, all of which do but
/// statvfs, never asked about such a name here).
const CHANGES: [u8; 7] = [
    fxp::OPEN,
    fxp::MKDIR,
    fxp::REMOVE,
    fxp::RMDIR,
    fxp::RENAME,
    fxp::SYMLINK,
    fxp::EXTENDED,
];
const PATH_EXTENSIONS: [&[u8]; 5] = [
    b"posix-rename@openssh.com",
    b"hardlink@openssh.com",
    b"statvfs@openssh.com",
    b"lsetstat@openssh.com",
    b"expand-path@openssh.com",
];

const FX_OK: u32 = 0;
const FX_OP_UNSUPPORTED: u32 = 8;
const FX_STRANGE: u32 = 77;
const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const S_IFMT: u32 = 0o170000;
const HUGE_SIZE: u64 = 0xFFFF_FFFF_FFFF_FF00;
const STRAY_ID: u32 = 0xFFFF_FFF0;
const LONG_HANDLE_LEN: usize = 300;
const OVERSIZE: usize = 100;
const HUGE_REPLY: usize = 2 << 20;
/// Most a packet's claimed length reserves up front: the length is the peer's word.
const MAX_PREALLOC: u32 = 1 << 18;

#[derive(Default)]
struct Faults {
    short_read: Option<usize>,
    no_extensions: bool,
    bad_names: bool,
    oversized_read: bool,
    huge_reply: bool,
    stray_reply: bool,
    unknown_status: Option<Vec<u8>>,
    long_handle: bool,
    no_type_bits: Option<Vec<u8>>,
    huge_size: Option<Vec<u8>>,
    stall_after: Option<u64>,
    stall_path: Option<Vec<u8>>,
    stall_change: Option<Vec<u8>>,
    stall_change_once: Option<Vec<u8>>,
    freeze_on_write: Option<u64>,
    garbage_length: Option<Vec<u8>>,
    endless_listing: Option<Vec<u8>>,
}

impl Faults {
    fn add(&mut self, spec: &[u8]) -> Result<(), String> {
        let bad = || {
            format!(
                "bad fault {:?}; the faults are {FAULTS}",
                String::from_utf8_lossy(spec)
            )
        };
        let (name, value) = match spec.iter().position(|&b| b == b'=') {
            Some(i) => (&spec[..i], Some(&spec[i + 1..])),
            None => (spec, None),
        };
        match (name, value) {
            // Zero bytes a time would never finish a read.
            (b"short-read", Some(v)) => {
                self.short_read = Some(number(v).filter(|&n| n > 0).ok_or_else(bad)?);
            }
            (b"no-extensions", None) => self.no_extensions = true,
            (b"bad-names", None) => self.bad_names = true,
            (b"oversized-read", None) => self.oversized_read = true,
            (b"huge-reply", None) => self.huge_reply = true,
            (b"stray-reply", None) => self.stray_reply = true,
            (b"unknown-status", Some(v)) => self.unknown_status = Some(v.to_vec()),
            (b"long-handle", None) => self.long_handle = true,
            (b"no-type-bits", Some(v)) => self.no_type_bits = Some(v.to_vec()),
            (b"huge-size", Some(v)) => self.huge_size = Some(v.to_vec()),
            (b"stall-after", Some(v)) => self.stall_after = Some(number(v).ok_or_else(bad)?),
            (b"stall-path", Some(v)) => self.stall_path = Some(v.to_vec()),
            (b"stall-change", Some(v)) => self.stall_change = Some(v.to_vec()),
            (b"stall-change-once", Some(v)) => self.stall_change_once = Some(v.to_vec()),
            (b"freeze-on-write", Some(v)) => {
                self.freeze_on_write = Some(number(v).ok_or_else(bad)?);
            }
            (b"garbage-length", Some(v)) => self.garbage_length = Some(v.to_vec()),
            (b"endless-listing", Some(v)) => self.endless_listing = Some(v.to_vec()),
            _ => return Err(bad()),
        }
        Ok(())
    }
}

fn number<T: FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_args() -> Result<(Faults, OsString), String> {
    let mut faults = Faults::default();
    let mut server = OsString::from(DEFAULT_SERVER);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let option = arg.as_bytes();
        if option != b"--fault" && option != b"--server" {
            return Err(format!("unknown argument {}", arg.display()));
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{} needs a value", arg.display()))?;
        if option == b"--fault" {
            faults.add(value.as_bytes())?;
        } else {
            server = value;
        }
    }
    Ok((faults, server))
}

/// What the request side tells the reply side about a request in flight.
struct Pending {
    kind: u8,
    /// READDIR under `bad-names`: the handle as the client sent it.
    dir_handle: Option<Vec<u8>>,
    /// READ: the length asked for.
    read_len: Option<u32>,
    /// `stall-path`: the reply is dropped.
    swallow: bool,
    /// `no-type-bits` and `huge-size`: the request is about the path named.
    no_type_bits: bool,
    huge_size: bool,
    /// OPENDIR under `endless-listing`: the directory named.
    endless: bool,
}

/// The way to the client.
struct ClientOut {
    out: io::Stdout,
    sent: u64,
    /// The client went away; the server's replies are still read, so that it never blocks.
    gone: bool,
}

struct Shared {
    faults: Faults,
    pending: Mutex<HashMap<u32, Pending>>,
    /// `long-handle`: padded handle -> the server's.
    long_handles: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    client: Mutex<ClientOut>,
    /// None once closed, so that the server sees end of input.
    server_in: Mutex<Option<BufWriter<ChildStdin>>>,
    child: Mutex<Child>,
    /// `endless-listing`: the handles of the directories named, and names made so far.
    endless_handles: Mutex<HashSet<Vec<u8>>>,
    endless_made: Mutex<u64>,
}

impl Shared {
    /// Bytes that are not a packet, as they are.
    fn send_raw(&self, bytes: &[u8]) {
        let mut client = lock(&self.client);
        if client.gone {
            return;
        }
        if client
            .out
            .write_all(bytes)
            .and_then(|()| client.out.flush())
            .is_err()
        {
            client.gone = true;
        }
    }

    fn send(&self, packet: &[u8]) {
        let mut client = lock(&self.client);
        if client.gone || self.faults.stall_after.is_some_and(|n| client.sent >= n) {
            return;
        }
        client.sent += 1;
        if write_packet(&mut client.out, packet).is_err() {
            client.gone = true;
        }
    }
}

/// A lock that a panicked holder does not spoil: the data is plain bookkeeping.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn main() {
    let (faults, server) = parse_args().unwrap_or_else(|e| {
        eprintln!("faulty_sftp_server: {e}\n{USAGE}");
        std::process::exit(2)
    });
    let mut child = Command::new(&server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("faulty_sftp_server: cannot start {}: {e}", server.display());
            std::process::exit(1)
        });
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        eprintln!("faulty_sftp_server: no pipes to {}", server.display());
        std::process::exit(1)
    };
    let shared = Arc::new(Shared {
        faults,
        pending: Mutex::default(),
        long_handles: Mutex::default(),
        client: Mutex::new(ClientOut {
            out: io::stdout(),
            sent: 0,
            gone: false,
        }),
        server_in: Mutex::new(Some(BufWriter::new(server_in))),
        child: Mutex::new(child),
        endless_handles: Mutex::default(),
        endless_made: Mutex::new(0),
    });
    let replies = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            relay_replies(&shared, server_out);
            shut_down(&shared)
        })
    };
    relay_requests(&shared);
    // The server answers what it has, then ends its output, and the reply side shuts down.
    drop(lock(&shared.server_in).take());
    let _ = replies.join();
    shut_down(&shared)
}

fn shut_down(shared: &Shared) -> ! {
    drop(lock(&shared.server_in).take());
    let _ = lock(&shared.child).wait();
    std::process::exit(0)
}

/// A packet's type and payload, without its length; None at end of input.
fn read_packet(from: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0; 4];
    from.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len);
    let mut packet = Vec::with_capacity(len.min(MAX_PREALLOC) as usize);
    from.by_ref()
        .take(u64::from(len))
        .read_to_end(&mut packet)
        .ok()?;
    (packet.len() as u64 == u64::from(len)).then_some(packet)
}

fn write_packet(to: &mut impl Write, packet: &[u8]) -> io::Result<()> {
    let len = u32::try_from(packet.len()).map_err(io::Error::other)?;
    to.write_all(&len.to_be_bytes())?;
    to.write_all(packet)?;
    to.flush()
}

fn relay_requests(shared: &Shared) {
    let mut client_in = io::stdin().lock();
    while let Some(packet) = read_packet(&mut client_in) {
        if let Some(seconds) = shared.faults.freeze_on_write
            && packet.first() == Some(&fxp::WRITE)
        {
            thread::sleep(std::time::Duration::from_secs(seconds));
            while read_packet(&mut client_in).is_some() {}
            return;
        }
        let Some(packet) = on_request(shared, packet) else {
            continue;
        };
        let mut server_in = lock(&shared.server_in);
        let Some(server_in) = server_in.as_mut() else {
            return;
        };
        if write_packet(server_in, &packet).is_err() {
            return;
        }
    }
}

/// Answers a request here or records it; returns what to forward to the server.
fn on_request(shared: &Shared, mut packet: Vec<u8>) -> Option<Vec<u8>> {
    let faults = &shared.faults;
    let (Some(&kind), Some(id)) = (packet.first(), Fields::new(&packet, 1).u32()) else {
        return Some(packet);
    };
    if kind == fxp::INIT {
        return Some(packet);
    }
    let mut fields = Fields::new(&packet, 5);
    let mut path = None;
    let mut handle_at = None;
    let mut read_len = None;
    if HANDLE_FIRST.contains(&kind) {
        handle_at = Some(5);
        if kind == fxp::READ {
            read_len = read_length(&packet);
        }
    } else if PATH_FIRST.contains(&kind) {
        path = fields.string();
    } else if kind == fxp::EXTENDED {
        match fields.string() {
            Some(name) if HANDLE_EXTENSIONS.contains(&name) => handle_at = Some(fields.pos),
            Some(name) if PATH_EXTENSIONS.contains(&name) => path = fields.string(),
            _ => {}
        }
    }
    let named = |name: Option<&[u8]>| path.is_some_and(|path| name == Some(last_component(path)));
    let stalled = named(faults.stall_path.as_deref())
        || (CHANGES.contains(&kind) && named(faults.stall_change.as_deref()))
        || (CHANGES.contains(&kind)
            && named(faults.stall_change_once.as_deref())
            && path.is_some_and(first_stall));
    let no_type_bits = named(faults.no_type_bits.as_deref());
    let huge_size = named(faults.huge_size.as_deref());
    let endless = kind == fxp::OPENDIR && named(faults.endless_listing.as_deref());
    let answer = if kind == fxp::EXTENDED && faults.no_extensions {
        Some(status(id, FX_OP_UNSUPPORTED, "no extensions here"))
    } else if kind == fxp::REMOVE && named(faults.unknown_status.as_deref()) {
        Some(status(id, FX_STRANGE, "strange"))
    } else {
        None
    };
    if named(faults.garbage_length.as_deref()) {
        let mut garbage = 0x8000_0000u32.to_be_bytes().to_vec();
        garbage.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        shared.send_raw(&garbage);
        return None;
    }
    if kind == fxp::READDIR
        && let Some(handle) = Fields::new(&packet, 5).string()
        && lock(&shared.endless_handles).contains(handle)
    {
        let mut made = lock(&shared.endless_made);
        shared.send(&endless_names(id, &mut made));
        return None;
    }
    if let Some(answer) = answer {
        if !stalled {
            shared.send(&answer);
        }
        return None;
    }
    let dir_handle = if kind == fxp::READDIR && faults.bad_names {
        Fields::new(&packet, 5).string().map(<[u8]>::to_vec)
    } else {
        None
    };
    if faults.long_handle
        && let Some(at) = handle_at
    {
        let original = Fields::new(&packet, at)
            .string()
            .and_then(|handle| lock(&shared.long_handles).get(handle).cloned());
        if let Some(replaced) = original.and_then(|original| replace_string(&packet, at, &original))
        {
            packet = replaced;
        }
    }
    // Recorded before forwarding: the reply may come back before this thread runs again.
    lock(&shared.pending).insert(
        id,
        Pending {
            kind,
            dir_handle,
            read_len,
            swallow: stalled,
            no_type_bits,
            huge_size,
            endless,
        },
    );
    Some(packet)
}

fn read_length(read: &[u8]) -> Option<u32> {
    let mut fields = Fields::new(read, 5);
    fields.string()?;
    fields.u64()?;
    fields.u32()
}

/// Whether this is the first stalled change of `path`'s name: marked by a file next to it.
fn first_stall(path: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let mut marker = std::ffi::OsString::from(".stalled-");
    marker.push(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(marker))
        .is_ok()
}

fn last_component(path: &[u8]) -> &[u8] {
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let path = &path[..end];
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

fn relay_replies(shared: &Shared, server_out: ChildStdout) {
    let mut server_out = BufReader::with_capacity(1 << 16, server_out);
    // `bad-names`: directory handles whose listing has had its injection.
    let mut injected = HashSet::new();
    while let Some(packet) = read_packet(&mut server_out) {
        if let Some(packet) = on_reply(shared, &mut injected, packet) {
            shared.send(&packet);
        }
    }
}

/// Rewrites a reply per the faults; returns what to send to the client.
fn on_reply(
    shared: &Shared,
    injected: &mut HashSet<Vec<u8>>,
    mut packet: Vec<u8>,
) -> Option<Vec<u8>> {
    let faults = &shared.faults;
    let (Some(&kind), Some(id)) = (packet.first(), Fields::new(&packet, 1).u32()) else {
        return Some(packet);
    };
    if kind == fxp::VERSION {
        if faults.no_extensions {
            packet.truncate(5);
        }
        return Some(packet);
    }
    let pending = lock(&shared.pending).remove(&id);
    let asked = pending.as_ref().map(|pending| pending.kind);
    if pending.as_ref().is_some_and(|pending| pending.swallow) {
        return None;
    }
    if faults.stray_reply && asked == Some(fxp::OPEN) {
        shared.send(&status(STRAY_ID, FX_OK, ""));
    }
    match kind {
        fxp::HANDLE => {
            if faults.long_handle
                && let Some(handle) = Fields::new(&packet, 5).string()
                && let Some(padded) = pad_handle(handle)
                && let Some(replaced) = replace_string(&packet, 5, &padded)
            {
                // Known before the client can see the handle, so before it can send it back.
                lock(&shared.long_handles).insert(padded, handle.to_vec());
                packet = replaced;
            }
            // The server reuses handles: a new listing may have an old listing's handle.
            if asked == Some(fxp::OPENDIR)
                && let Some(handle) = Fields::new(&packet, 5).string()
            {
                injected.remove(handle);
                let mut endless = lock(&shared.endless_handles);
                match pending.as_ref().is_some_and(|p| p.endless) {
                    true => endless.insert(handle.to_vec()),
                    false => endless.remove(handle),
                };
            }
        }
        fxp::DATA => {
            if let Some(data) = Fields::new(&packet, 5).string() {
                let old_len = data.len();
                let mut len = faults.short_read.map_or(old_len, |n| old_len.min(n));
                if faults.oversized_read && asked == Some(fxp::READ) {
                    let asked_len = pending.and_then(|p| p.read_len).unwrap_or(0) as usize;
                    len = len.max(asked_len) + OVERSIZE;
                }
                if faults.huge_reply {
                    len = HUGE_REPLY;
                }
                // The data is the last field, so it is cut or grown in place; anything after
                // it is not SFTP and goes.
                if len != old_len {
                    packet.truncate(9 + old_len.min(len));
                    packet.resize(9 + len, 0xEE);
                    packet[5..9].copy_from_slice(&(len as u32).to_be_bytes());
                }
            }
        }
        fxp::NAME => {
            if faults.bad_names
                && let Some(Pending {
                    kind: fxp::READDIR,
                    dir_handle: Some(handle),
                    ..
                }) = pending
                && injected.insert(handle)
                && let Some(more) = inject_names(&packet)
            {
                packet = more;
            }
        }
        fxp::ATTRS => {
            if let Some(pending) = pending {
                let attrs = packet.get_mut(5..).unwrap_or_default();
                alter_attrs(attrs, pending.no_type_bits, pending.huge_size);
            }
        }
        _ => {}
    }
    Some(packet)
}

/// `endless-listing`: a NAME reply of 1000 regular files never listed before.
fn endless_names(id: u32, made: &mut u64) -> Vec<u8> {
    let mut packet = vec![fxp::NAME];
    put_u32(&mut packet, id);
    put_u32(&mut packet, 1000);
    for _ in 0..1000 {
        *made += 1;
        let name = format!("endless-{made:012}");
        put_string(&mut packet, name.as_bytes());
        put_string(&mut packet, name.as_bytes());
        put_u32(&mut packet, ATTR_PERMISSIONS);
        put_u32(&mut packet, 0o100644);
    }
    packet
}

/// The handle, grown to `LONG_HANDLE_LEN`; None if it does not fit. Its length comes first, so
/// that distinct handles stay distinct.
fn pad_handle(handle: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(handle.len()).ok()?;
    if handle.len() + 2 > LONG_HANDLE_LEN {
        return None;
    }
    let mut padded = len.to_be_bytes().to_vec();
    padded.extend_from_slice(handle);
    padded.resize(LONG_HANDLE_LEN, b'#');
    Some(padded)
}

const LONGNAME_PREFIX: &[u8] = b"-rw-r--r--    1 0        0               0 Jan  1  1970 ";

/// A NAME reply with the hostile entries before the server's.
fn inject_names(packet: &[u8]) -> Option<Vec<u8>> {
    let count = Fields::new(packet, 5).u32()?;
    let long_x = [b'x'; 300];
    let names: [&[u8]; 6] = [b"a/b", b"nul\0name", b"", b".", b"..", &long_x];
    let mut out = packet[..5].to_vec();
    put_u32(&mut out, count.checked_add(names.len() as u32)?);
    for name in names {
        put_string(&mut out, name);
        put_string(&mut out, &[LONGNAME_PREFIX, name].concat());
        put_u32(&mut out, ATTR_PERMISSIONS);
        put_u32(&mut out, 0o100644);
    }
    out.extend_from_slice(&packet[9..]);
    Some(out)
}

/// Alters an ATTRS reply's attributes in place; nothing past the permissions matters here.
fn alter_attrs(attrs: &mut [u8], no_type_bits: bool, huge_size: bool) {
    let Some(flags) = Fields::new(attrs, 0).u32() else {
        return;
    };
    let mut at = 4;
    if flags & ATTR_SIZE != 0 {
        if huge_size && let Some(size) = field::<8>(attrs, at) {
            *size = HUGE_SIZE.to_be_bytes();
        }
        at += 8;
    }
    if flags & ATTR_UIDGID != 0 {
        at += 8;
    }
    if flags & ATTR_PERMISSIONS != 0
        && no_type_bits
        && let Some(mode) = field::<4>(attrs, at)
    {
        *mode = (u32::from_be_bytes(*mode) & !S_IFMT).to_be_bytes();
    }
}

fn field<const N: usize>(bytes: &mut [u8], at: usize) -> Option<&mut [u8; N]> {
    bytes.get_mut(at..at.checked_add(N)?)?.try_into().ok()
}

fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut packet = vec![fxp::STATUS];
    put_u32(&mut packet, id);
    put_u32(&mut packet, code);
    put_string(&mut packet, message.as_bytes());
    put_string(&mut packet, b"");
    packet
}

/// The packet with the string whose length is at `at` replaced by `new`.
fn replace_string(packet: &[u8], at: usize, new: &[u8]) -> Option<Vec<u8>> {
    let old = Fields::new(packet, at).string()?;
    let mut out = packet[..at].to_vec();
    put_string(&mut out, new);
    out.extend_from_slice(&packet[at + 4 + old.len()..]);
    Some(out)
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// Reads a packet's fields in order; None once one runs past the end.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        Fields { bytes, pos }
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

//! Sans-IO codec for SFTP version 3 (draft-ietf-secsh-filexfer-02) plus the OpenSSH extensions
//! we use: typed requests become length-prefixed packets, packets become typed responses.
//!
//! Handles and file names stay raw bytes end to end: OpenSSH's handles are binary and Unix file
//! names need not be UTF-8. Decoding never panics: every malformed input is a [`DecodeError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u32 = 3;

/// Largest packet we accept from the server; OpenSSH's own limit is 256 KiB of payload.
pub const MAX_PACKET_LEN: usize = 1024 * 1024 + 1024;

/// SSH_FXP_* packet types.
pub mod packet_type {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// SSH_FXF_* open flags.
pub mod open_flags {
    pub const READ: u32 = 0x01;
    pub const WRITE: u32 = 0x02;
    pub const APPEND: u32 = 0x04;
    pub const CREAT: u32 = 0x08;
    pub const TRUNC: u32 = 0x10;
    pub const EXCL: u32 = 0x20;
}

mod attr_flags {
    pub const SIZE: u32 = 0x01;
    pub const UIDGID: u32 = 0x02;
    pub const PERMISSIONS: u32 = 0x04;
    pub const ACMODTIME: u32 = 0x08;
    pub const EXTENDED: u32 = 0x8000_0000;
}

/// Names of the OpenSSH extensions we speak (OpenSSH's PROTOCOL file).
pub mod ext {
    pub const POSIX_RENAME: &str = "posix-rename@openssh.com";
    pub const STATVFS: &str = "statvfs@openssh.com";
    pub const FSYNC: &str = "fsync@openssh.com";
    pub const HARDLINK: &str = "hardlink@openssh.com";
    pub const LIMITS: &str = "limits@openssh.com";
    pub const LSETSTAT: &str = "lsetstat@openssh.com";
    /// Server-side copy between two handles of one channel (OpenSSH 9.0, its PROTOCOL 4.10).
    pub const COPY_DATA: &str = "copy-data";
    /// A path with `~` or `~user` expanded (OpenSSH 8.7), and a user's home (OpenSSH 9.1).
    pub const EXPAND_PATH: &str = "expand-path@openssh.com";
    pub const HOME_DIRECTORY: &str = "home-directory";
    /// The server's user and group names for ids (OpenSSH 9.1).
    pub const USERS_GROUPS_BY_ID: &str = "users-groups-by-id@openssh.com";
    /// Green End's server: which order its SYMLINK takes the paths in.
    pub const SYMLINK_ORDER: &str = "symlink-order@rjk.greenend.org.uk";
    /// Servers that name themselves (draft-ietf-secsh-filexfer-13 section 4.4).
    pub const VENDOR_ID: &str = "vendor-id";
}

/// File attributes; every field is optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    /// Full st_mode, file type bits included.
    pub permissions: Option<u32>,
    pub atime_mtime: Option<(u32, u32)>,
    pub extended: Vec<(Bytes, Bytes)>,
    /// Not on the wire (v3 has no link count): the count a listing's long name gave, where it
    /// parses as `ls -l` writes it (OpenSSH's does).
    pub nlink: Option<u32>,
}

/// The link count in a listing's long name, `-rw-r--r--    2 user group ...` as `ls -l`
/// (and OpenSSH's sftp-server) writes it; `None` when it does not read so.
pub fn longname_nlink(longname: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(longname).ok()?;
    let mut fields = text.split_whitespace();
    let mode = fields.next()?;
    let kinds = "-dlcbps";
    if mode.len() < 10 || !kinds.contains(&mode[..1]) {
        return None;
    }
    fields.next()?.parse().ok().filter(|n| *n > 0)
}

impl Attrs {
    /// What tells one content of a file from another, as far as SFTP v3 can: its size and
    /// its mtime (whole seconds).
    pub fn size_and_mtime(&self) -> (Option<u64>, Option<u32>) {
        (self.size, self.atime_mtime.map(|t| t.1))
    }

    /// Whether these attributes describe a file that can exist: a mode with its file type bits
    /// (S_IFMT), a size that fits a signed 64-bit offset. A server's attributes are untrusted.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.permissions.is_some_and(|mode| mode & 0o170000 == 0) {
            return Err("attributes without a file type");
        }
        if self.size.is_some_and(|size| size > i64::MAX as u64) {
            return Err("a file size past 2^63");
        }
        Ok(())
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= attr_flags::SIZE;
        }
        if self.uid_gid.is_some() {
            flags |= attr_flags::UIDGID;
        }
        if self.permissions.is_some() {
            flags |= attr_flags::PERMISSIONS;
        }
        if self.atime_mtime.is_some() {
            flags |= attr_flags::ACMODTIME;
        }
        if !self.extended.is_empty() {
            flags |= attr_flags::EXTENDED;
        }
        flags
    }

    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.flags());
        if let Some(size) = self.size {
            buf.put_u64(size);
        }
        if let Some((uid, gid)) = self.uid_gid {
            buf.put_u32(uid);
            buf.put_u32(gid);
        }
        if let Some(perm) = self.permissions {
            buf.put_u32(perm);
        }
        if let Some((atime, mtime)) = self.atime_mtime {
            buf.put_u32(atime);
            buf.put_u32(mtime);
        }
        if !self.extended.is_empty() {
            buf.put_u32(self.extended.len() as u32);
            for (name, value) in &self.extended {
                put_string(buf, name);
                put_string(buf, value);
            }
        }
    }

    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let flags = get_u32(buf)?;
        let mut attrs = Attrs::default();
        if flags & attr_flags::SIZE != 0 {
            attrs.size = Some(get_u64(buf)?);
        }
        if flags & attr_flags::UIDGID != 0 {
            attrs.uid_gid = Some((get_u32(buf)?, get_u32(buf)?));
        }
        if flags & attr_flags::PERMISSIONS != 0 {
            attrs.permissions = Some(get_u32(buf)?);
        }
        if flags & attr_flags::ACMODTIME != 0 {
            attrs.atime_mtime = Some((get_u32(buf)?, get_u32(buf)?));
        }
        if flags & attr_flags::EXTENDED != 0 {
            let count = get_u32(buf)?;
            for _ in 0..count {
                let name = get_string(buf)?;
                let value = get_string(buf)?;
                attrs.extended.push((name, value));
            }
        }
        Ok(attrs)
    }
}

/// A client request. Paths and handles are raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Open {
        path: Bytes,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        handle: Bytes,
    },
    Read {
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    Write {
        handle: Bytes,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        path: Bytes,
    },
    Fstat {
        handle: Bytes,
    },
    Setstat {
        path: Bytes,
        attrs: Attrs,
    },
    Fsetstat {
        handle: Bytes,
        attrs: Attrs,
    },
    Opendir {
        path: Bytes,
    },
    Readdir {
        handle: Bytes,
    },
    Remove {
        path: Bytes,
    },
    Mkdir {
        path: Bytes,
        attrs: Attrs,
    },
    Rmdir {
        path: Bytes,
    },
    Realpath {
        path: Bytes,
    },
    Stat {
        path: Bytes,
    },
    Rename {
        from: Bytes,
        to: Bytes,
    },
    Readlink {
        path: Bytes,
    },
    /// `link` is the new symlink, `target` what it points to.
    Symlink {
        link: Bytes,
        target: Bytes,
        /// The draft's order (link path first), for servers that say they take it.
        draft_order: bool,
    },
    /// An extension request; `data` is its already-encoded body.
    Extended {
        name: &'static str,
        data: Bytes,
    },
}

impl Request {
    /// One line for the request log: its type and its path or handle and range; a handle is
    /// shown as the path `handle_path` gives for it (handles are reused, and mean nothing to a
    /// reader), else in hex.
    pub fn describe(&self, handle_path: impl Fn(&Bytes) -> Option<String>) -> String {
        let path = |p: &Bytes| String::from_utf8_lossy(p).into_owned();
        let handle = |h: &Bytes| {
            handle_path(h).unwrap_or_else(|| {
                let hex = h.iter().map(|b| format!("{b:02x}")).collect::<String>();
                format!("handle {hex}")
            })
        };
        match self {
            Request::Open {
                path: p, pflags, ..
            } => format!("OPEN {} flags {pflags:#x}", path(p)),
            Request::Close { handle: h } => format!("CLOSE {}", handle(h)),
            Request::Read {
                handle: h,
                offset,
                len,
            } => format!("READ {} {offset}+{len}", handle(h)),
            Request::Write {
                handle: h,
                offset,
                data,
            } => format!("WRITE {} {offset}+{}", handle(h), data.len()),
            Request::Lstat { path: p } => format!("LSTAT {}", path(p)),
            Request::Fstat { handle: h } => format!("FSTAT {}", handle(h)),
            Request::Setstat { path: p, .. } => format!("SETSTAT {}", path(p)),
            Request::Fsetstat { handle: h, .. } => format!("FSETSTAT {}", handle(h)),
            Request::Opendir { path: p } => format!("OPENDIR {}", path(p)),
            Request::Readdir { handle: h } => format!("READDIR {}", handle(h)),
            Request::Remove { path: p } => format!("REMOVE {}", path(p)),
            Request::Mkdir { path: p, .. } => format!("MKDIR {}", path(p)),
            Request::Rmdir { path: p } => format!("RMDIR {}", path(p)),
            Request::Realpath { path: p } => format!("REALPATH {}", path(p)),
            Request::Stat { path: p } => format!("STAT {}", path(p)),
            Request::Rename { from, to } => format!("RENAME {} {}", path(from), path(to)),
            Request::Readlink { path: p } => format!("READLINK {}", path(p)),
            Request::Symlink { link, target, .. } => {
                format!("SYMLINK {} -> {}", path(link), path(target))
            }
            Request::Extended { name, .. } => format!("EXTENDED {name}"),
        }
    }

    /// The path an OPEN or OPENDIR opens: its handle's name in the request log.
    pub fn opens(&self) -> Option<&Bytes> {
        match self {
            Request::Open { path, .. } | Request::Opendir { path } => Some(path),
            _ => None,
        }
    }

    pub fn posix_rename(from: &[u8], to: &[u8]) -> Self {
        Self::extended_with(ext::POSIX_RENAME, |buf| {
            put_string(buf, from);
            put_string(buf, to);
        })
    }

    pub fn hardlink(existing: &[u8], new: &[u8]) -> Self {
        Self::extended_with(ext::HARDLINK, |buf| {
            put_string(buf, existing);
            put_string(buf, new);
        })
    }

    pub fn statvfs(path: &[u8]) -> Self {
        Self::extended_with(ext::STATVFS, |buf| put_string(buf, path))
    }

    pub fn fsync(handle: &[u8]) -> Self {
        Self::extended_with(ext::FSYNC, |buf| put_string(buf, handle))
    }

    pub fn limits() -> Self {
        Self::extended_with(ext::LIMITS, |_| {})
    }

    pub fn expand_path(path: &[u8]) -> Self {
        Self::extended_with(ext::EXPAND_PATH, |buf| put_string(buf, path))
    }

    pub fn users_groups_by_id(uids: &[u32], gids: &[u32]) -> Self {
        Self::extended_with(ext::USERS_GROUPS_BY_ID, |buf| {
            for ids in [uids, gids] {
                buf.put_u32(4 * ids.len() as u32);
                for &id in ids {
                    buf.put_u32(id);
                }
            }
        })
    }

    pub fn home_directory(user: &[u8]) -> Self {
        Self::extended_with(ext::HOME_DIRECTORY, |buf| put_string(buf, user))
    }

    /// `len` bytes (0: to the end) of `from` at `from_offset`, written to `to` at `to_offset`.
    pub fn copy_data(from: &[u8], from_offset: u64, len: u64, to: &[u8], to_offset: u64) -> Self {
        Self::extended_with(ext::COPY_DATA, |buf| {
            put_string(buf, from);
            buf.put_u64(from_offset);
            buf.put_u64(len);
            put_string(buf, to);
            buf.put_u64(to_offset);
        })
    }

    pub fn lsetstat(path: &[u8], attrs: &Attrs) -> Self {
        Self::extended_with(ext::LSETSTAT, |buf| {
            put_string(buf, path);
            attrs.encode(buf);
        })
    }

    fn extended_with(name: &'static str, body: impl FnOnce(&mut BytesMut)) -> Self {
        let mut buf = BytesMut::new();
        body(&mut buf);
        Request::Extended {
            name,
            data: buf.freeze(),
        }
    }

    /// Appends the whole packet (length prefix included) for request `id` to `buf`.
    pub fn encode(&self, id: u32, buf: &mut BytesMut) {
        let tail = self.encode_head(id, buf);
        buf.extend_from_slice(&tail);
    }

    /// Appends the packet for request `id` to `buf`, except a WRITE's data, which is returned to
    /// be sent right after it: the data is not copied (the length prefix counts it).
    pub fn encode_head(&self, id: u32, buf: &mut BytesMut) -> Bytes {
        let start = buf.len();
        let mut tail = Bytes::new();
        buf.put_u32(0);
        match self {
            Request::Open {
                path,
                pflags,
                attrs,
            } => {
                put_header(buf, packet_type::OPEN, id);
                put_string(buf, path);
                buf.put_u32(*pflags);
                attrs.encode(buf);
            }
            Request::Close { handle } => put_one(buf, packet_type::CLOSE, id, handle),
            Request::Read {
                handle,
                offset,
                len,
            } => {
                put_header(buf, packet_type::READ, id);
                put_string(buf, handle);
                buf.put_u64(*offset);
                buf.put_u32(*len);
            }
            Request::Write {
                handle,
                offset,
                data,
            } => {
                put_header(buf, packet_type::WRITE, id);
                put_string(buf, handle);
                buf.put_u64(*offset);
                buf.put_u32(data.len() as u32);
                tail = data.clone();
            }
            Request::Lstat { path } => put_one(buf, packet_type::LSTAT, id, path),
            Request::Fstat { handle } => put_one(buf, packet_type::FSTAT, id, handle),
            Request::Setstat { path, attrs } => {
                put_one(buf, packet_type::SETSTAT, id, path);
                attrs.encode(buf);
            }
            Request::Fsetstat { handle, attrs } => {
                put_one(buf, packet_type::FSETSTAT, id, handle);
                attrs.encode(buf);
            }
            Request::Opendir { path } => put_one(buf, packet_type::OPENDIR, id, path),
            Request::Readdir { handle } => put_one(buf, packet_type::READDIR, id, handle),
            Request::Remove { path } => put_one(buf, packet_type::REMOVE, id, path),
            Request::Mkdir { path, attrs } => {
                put_one(buf, packet_type::MKDIR, id, path);
                attrs.encode(buf);
            }
            Request::Rmdir { path } => put_one(buf, packet_type::RMDIR, id, path),
            Request::Realpath { path } => put_one(buf, packet_type::REALPATH, id, path),
            Request::Stat { path } => put_one(buf, packet_type::STAT, id, path),
            Request::Rename { from, to } => {
                put_one(buf, packet_type::RENAME, id, from);
                put_string(buf, to);
            }
            Request::Readlink { path } => put_one(buf, packet_type::READLINK, id, path),
            Request::Symlink {
                link,
                target,
                draft_order,
            } => {
                // OpenSSH's sftp-server takes the two paths in the reverse of the draft's order
                // (PROTOCOL, section 4.1) and most clients follow it; a server that follows the
                // draft says so with symlink-order@rjk.greenend.org.uk.
                let (first, second) = if *draft_order {
                    (link, target)
                } else {
                    (target, link)
                };
                put_one(buf, packet_type::SYMLINK, id, first);
                put_string(buf, second);
            }
            Request::Extended { name, data } => {
                put_one(buf, packet_type::EXTENDED, id, name.as_bytes());
                buf.put_slice(data);
            }
        }
        let len = (buf.len() - start - 4 + tail.len()) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        tail
    }

    /// Bytes this request occupies on the wire, for flow-control accounting.
    pub fn wire_len(&self) -> usize {
        match self {
            Request::Write { handle, data, .. } => {
                4 + 1 + 4 + 4 + handle.len() + 8 + 4 + data.len()
            }
            _ => 256,
        }
    }
}

/// The INIT packet that opens a session.
pub fn encode_init(buf: &mut BytesMut) {
    buf.put_u32(5);
    buf.put_u8(packet_type::INIT);
    buf.put_u32(VERSION);
}

/// SSH_FX_* status codes, v3 and the later drafts' (some servers send those too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u32);

impl StatusCode {
    pub const OK: Self = Self(0);
    pub const EOF: Self = Self(1);
    pub const NO_SUCH_FILE: Self = Self(2);
    pub const PERMISSION_DENIED: Self = Self(3);
    pub const FAILURE: Self = Self(4);
    pub const BAD_MESSAGE: Self = Self(5);
    pub const NO_CONNECTION: Self = Self(6);
    pub const CONNECTION_LOST: Self = Self(7);
    pub const OP_UNSUPPORTED: Self = Self(8);

    /// The errno a status means when nothing more specific is known. FAILURE is OpenSSH's
    /// catch-all (ENOSPC, EEXIST, ENOTEMPTY... all become it), so callers refine it by context.
    pub fn errno(self) -> i32 {
        match self.0 {
            0 => 0,
            1 => libc::EIO,
            2 | 10 => libc::ENOENT,
            3 | 22 => libc::EACCES,
            4 => libc::EIO,
            5 | 20 | 23 => libc::EINVAL,
            6 => libc::ENOTCONN,
            7 => libc::ECONNABORTED,
            8 => libc::EOPNOTSUPP,
            9 => libc::EBADF,
            11 => libc::EEXIST,
            12 => libc::EROFS,
            13 => libc::ENODEV,
            14 => libc::ENOSPC,
            15 => libc::EDQUOT,
            17 | 25 | 26 | 31 => libc::EAGAIN,
            18 => libc::ENOTEMPTY,
            19 => libc::ENOTDIR,
            21 => libc::ELOOP,
            24 => libc::EISDIR,
            _ => libc::EIO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    pub filename: Bytes,
    pub longname: Bytes,
    pub attrs: Attrs,
}

/// A server response to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Status { code: StatusCode, message: Bytes },
    Handle(Bytes),
    Data(Bytes),
    Name(Vec<NameEntry>),
    Attrs(Attrs),
    ExtendedReply(Bytes),
}

impl Response {
    /// The reply's gist for the request log.
    pub fn describe(&self) -> String {
        match self {
            Response::Status { code, .. } => {
                const NAMES: [&str; 9] = [
                    "OK",
                    "EOF",
                    "NO_SUCH_FILE",
                    "PERMISSION_DENIED",
                    "FAILURE",
                    "BAD_MESSAGE",
                    "NO_CONNECTION",
                    "CONNECTION_LOST",
                    "OP_UNSUPPORTED",
                ];
                match NAMES.get(code.0 as usize) {
                    Some(name) => name.to_string(),
                    None => format!("STATUS {}", code.0),
                }
            }
            Response::Handle(_) => "HANDLE".into(),
            Response::Data(d) => format!("DATA {} bytes", d.len()),
            Response::Name(n) => format!("NAME {} entries", n.len()),
            Response::Attrs(a) => match a.size {
                Some(size) => format!("ATTRS size {size}"),
                None => "ATTRS".into(),
            },
            Response::ExtendedReply(d) => format!("EXTENDED_REPLY {} bytes", d.len()),
        }
    }
}

/// The server's answer to INIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub version: u32,
    pub extensions: Vec<(Bytes, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("SFTP packet truncated")]
    Truncated,
    #[error("SFTP packet of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("unexpected SFTP packet type {0}")]
    UnexpectedType(u8),
    #[error("trailing bytes after SFTP packet body")]
    Trailing,
    #[error("no SFTP version reply in the first {0} bytes")]
    NoVersion(usize),
}

/// Splits one whole packet off the front of `buf`, if one has fully arrived.
pub fn split_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_PACKET_LEN {
        return Err(DecodeError::TooLong(len));
    }
    if len == 0 {
        return Err(DecodeError::Truncated);
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Text a login shell may print before the SFTP server starts that is skipped: more is not a
/// greeting but something else entirely.
pub const MAX_PREAMBLE: usize = 64 * 1024;

/// How the stream that should open with the server's VERSION reply begins.
#[derive(Debug)]
pub enum StreamStart {
    /// More bytes are needed to tell.
    NeedMore,
    /// The VERSION reply, after `preamble`: bytes a login shell printed before it started the
    /// server (a `~/.bashrc` that echoes), empty when the stream is clean.
    Version {
        version: ServerVersion,
        preamble: Bytes,
    },
}

/// Finds the server's VERSION reply at the front of `buf`, skipping up to [`MAX_PREAMBLE`]
/// bytes before it, as sshfs does. Past the stream's first byte only a whole, well-formed
/// version 3 reply is taken: text cannot look like one (it needs bytes 2, 0, 0, 0, 3).
pub fn find_version(buf: &mut BytesMut) -> Result<StreamStart, DecodeError> {
    let mut at = 0;
    while buf.len() >= at + 9 {
        if at > MAX_PREAMBLE {
            return Err(DecodeError::NoVersion(at));
        }
        let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let len = word(at) as usize;
        let plausible = buf[at + 4] == packet_type::VERSION
            && (5..=MAX_PACKET_LEN).contains(&len)
            && (at == 0 || word(at + 5) == VERSION);
        if plausible {
            if buf.len() < at + 4 + len {
                return Ok(StreamStart::NeedMore);
            }
            let packet = Bytes::copy_from_slice(&buf[at + 4..at + 4 + len]);
            if let Ok(version) = decode_version(packet) {
                let preamble = buf.split_to(at).freeze();
                buf.advance(4 + len);
                return Ok(StreamStart::Version { version, preamble });
            }
        }
        at += 1;
    }
    Ok(StreamStart::NeedMore)
}

/// Decodes the VERSION packet (without its length prefix).
pub fn decode_version(mut packet: Bytes) -> Result<ServerVersion, DecodeError> {
    let kind = get_u8(&mut packet)?;
    if kind != packet_type::VERSION {
        return Err(DecodeError::UnexpectedType(kind));
    }
    let version = get_u32(&mut packet)?;
    let mut extensions = Vec::new();
    while packet.has_remaining() {
        let name = get_string(&mut packet)?;
        let data = get_string(&mut packet)?;
        extensions.push((name, data));
    }
    Ok(ServerVersion {
        version,
        extensions,
    })
}

/// Decodes a response packet (without its length prefix) into its request id and body.
pub fn decode_response(mut packet: Bytes) -> Result<(u32, Response), DecodeError> {
    let kind = get_u8(&mut packet)?;
    let id = get_u32(&mut packet)?;
    let response = match kind {
        packet_type::STATUS => {
            let code = StatusCode(get_u32(&mut packet)?);
            // The message and language tag are optional in practice (v3 servers may omit them).
            let message = if packet.has_remaining() {
                get_string(&mut packet)?
            } else {
                Bytes::new()
            };
            if packet.has_remaining() {
                let _language = get_string(&mut packet)?;
            }
            Response::Status { code, message }
        }
        packet_type::HANDLE => Response::Handle(get_string(&mut packet)?),
        packet_type::DATA => Response::Data(get_string(&mut packet)?),
        packet_type::NAME => {
            let count = get_u32(&mut packet)? as usize;
            // Each entry takes at least 12 bytes, which bounds the allocation by the packet.
            let mut entries = Vec::with_capacity(count.min(packet.remaining() / 12));
            for _ in 0..count {
                let filename = get_string(&mut packet)?;
                let longname = get_string(&mut packet)?;
                let attrs = Attrs::decode(&mut packet)?;
                entries.push(NameEntry {
                    filename,
                    longname,
                    attrs,
                });
            }
            Response::Name(entries)
        }
        packet_type::ATTRS => Response::Attrs(Attrs::decode(&mut packet)?),
        packet_type::EXTENDED_REPLY => Response::ExtendedReply(packet.split_off(0)),
        other => return Err(DecodeError::UnexpectedType(other)),
    };
    if packet.has_remaining() {
        return Err(DecodeError::Trailing);
    }
    Ok((id, response))
}

/// The reply to statvfs@openssh.com.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub fsid: u64,
    pub flag: u64,
    pub namemax: u64,
}

impl StatVfs {
    pub fn decode(mut data: Bytes) -> Result<Self, DecodeError> {
        let mut next = || get_u64(&mut data);
        Ok(Self {
            bsize: next()?,
            frsize: next()?,
            blocks: next()?,
            bfree: next()?,
            bavail: next()?,
            files: next()?,
            ffree: next()?,
            favail: next()?,
            fsid: next()?,
            flag: next()?,
            namemax: next()?,
        })
    }
}

/// The reply to users-groups-by-id@openssh.com: a name per id asked, in the same order, empty
/// where the server has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdNames {
    pub users: Vec<Bytes>,
    pub groups: Vec<Bytes>,
}

impl IdNames {
    pub fn decode(mut data: Bytes) -> Result<Self, DecodeError> {
        let mut names = || -> Result<Vec<Bytes>, DecodeError> {
            let mut list = get_string(&mut data)?;
            let mut out = Vec::new();
            while !list.is_empty() {
                out.push(get_string(&mut list)?);
            }
            Ok(out)
        };
        let users = names()?;
        let groups = names()?;
        Ok(IdNames { users, groups })
    }
}

/// The reply to limits@openssh.com; zero means "no limit stated".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_packet_len: u64,
    pub max_read_len: u64,
    pub max_write_len: u64,
    pub max_open_handles: u64,
}

impl Limits {
    pub fn decode(mut data: Bytes) -> Result<Self, DecodeError> {
        Ok(Self {
            max_packet_len: get_u64(&mut data)?,
            max_read_len: get_u64(&mut data)?,
            max_write_len: get_u64(&mut data)?,
            max_open_handles: get_u64(&mut data)?,
        })
    }
}

fn put_header(buf: &mut BytesMut, kind: u8, id: u32) {
    buf.put_u8(kind);
    buf.put_u32(id);
}

fn put_one(buf: &mut BytesMut, kind: u8, id: u32, first: &[u8]) {
    put_header(buf, kind, id);
    put_string(buf, first);
}

fn put_string(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    buf.try_get_u8().map_err(|_| DecodeError::Truncated)
}

fn get_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    buf.try_get_u32().map_err(|_| DecodeError::Truncated)
}

fn get_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    buf.try_get_u64().map_err(|_| DecodeError::Truncated)
}

fn get_string(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = get_u32(buf)? as usize;
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(req: &Request, id: u32) -> Bytes {
        let mut buf = BytesMut::new();
        req.encode(id, &mut buf);
        let mut whole = buf.clone();
        let packet = split_packet(&mut whole).unwrap().unwrap();
        assert!(whole.is_empty());
        packet
    }

    fn response_packet(kind: u8, id: u32, body: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut buf = BytesMut::new();
        put_header(&mut buf, kind, id);
        body(&mut buf);
        buf.freeze()
    }

    /// A VERSION reply of `version` with one extension, length prefix included.
    fn version_reply(version: u32) -> Vec<u8> {
        let mut body = vec![packet_type::VERSION];
        body.extend(version.to_be_bytes());
        for s in [&b"posix-rename@openssh.com"[..], b"1"] {
            body.extend((s.len() as u32).to_be_bytes());
            body.extend(s);
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn start_of(bytes: &[u8]) -> Result<StreamStart, DecodeError> {
        find_version(&mut BytesMut::from(bytes))
    }

    #[test]
    fn the_version_reply_is_found_after_what_a_login_shell_printed() {
        let reply = version_reply(3);
        let clean = start_of(&reply).unwrap();
        assert!(matches!(clean, StreamStart::Version { ref preamble, .. } if preamble.is_empty()));
        let mut stream = b"Welcome to box\r\n\x1b[1mtoday\x1b[0m\n".to_vec();
        let text_len = stream.len();
        stream.extend(&reply);
        stream.extend(b"next");
        // Whatever the pieces it arrives in, the reply is found once whole, and what follows
        // it stays for the session.
        for cut in 0..text_len + reply.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            assert!(
                matches!(find_version(&mut buf), Ok(StreamStart::NeedMore)),
                "{cut}"
            );
            buf.extend_from_slice(&stream[cut..]);
            match find_version(&mut buf).unwrap() {
                StreamStart::Version { version, preamble } => {
                    assert_eq!(version.version, 3);
                    assert_eq!(version.extensions.len(), 1);
                    assert_eq!(preamble.len(), text_len);
                    assert_eq!(&buf[..], b"next");
                }
                other => panic!("{cut}: {other:?}"),
            }
        }
        // Another version at the very start is the server's own reply (refused later, saying
        // which); after text only a version 3 reply is taken.
        let v6 = start_of(&version_reply(6)).unwrap();
        assert!(matches!(v6, StreamStart::Version { version, .. } if version.version == 6));
        let mut after_text = b"hello\n".to_vec();
        after_text.extend(version_reply(6));
        assert!(matches!(start_of(&after_text), Ok(StreamStart::NeedMore)));
        // Endless text is not a greeting.
        let flood = vec![b'x'; MAX_PREAMBLE + 100];
        assert!(matches!(start_of(&flood), Err(DecodeError::NoVersion(_))));
    }

    #[test]
    fn open_encodes_byte_exact_path_and_flags() {
        let path = Bytes::from_static(b"/d/\xff\xfename");
        let req = Request::Open {
            path: path.clone(),
            pflags: open_flags::WRITE | open_flags::CREAT,
            attrs: Attrs {
                permissions: Some(0o644),
                ..Default::default()
            },
        };
        let mut p = body_of(&req, 7);
        assert_eq!(p.get_u8(), packet_type::OPEN);
        assert_eq!(p.get_u32(), 7);
        assert_eq!(get_string(&mut p).unwrap(), path);
        assert_eq!(p.get_u32(), 0x0a);
        assert_eq!(Attrs::decode(&mut p).unwrap().permissions, Some(0o644));
        assert!(p.is_empty());
    }

    #[test]
    fn write_carries_offset_and_data() {
        let req = Request::Write {
            handle: Bytes::from_static(&[0, 0, 0, 200]),
            offset: 1 << 40,
            data: Bytes::from(vec![9u8; 1000]),
        };
        let mut buf = BytesMut::new();
        req.encode(1, &mut buf);
        assert_eq!(buf.len(), req.wire_len());
        let mut p = body_of(&req, 1);
        assert_eq!(p.get_u8(), packet_type::WRITE);
        assert_eq!(p.get_u32(), 1);
        assert_eq!(&get_string(&mut p).unwrap()[..], &[0, 0, 0, 200]);
        assert_eq!(p.get_u64(), 1 << 40);
        assert_eq!(get_string(&mut p).unwrap().len(), 1000);
    }

    #[test]
    fn symlink_uses_openssh_argument_order() {
        let req = Request::Symlink {
            link: Bytes::from_static(b"/l"),
            target: Bytes::from_static(b"t"),
            draft_order: false,
        };
        let mut p = body_of(&req, 3);
        p.advance(5);
        assert_eq!(&get_string(&mut p).unwrap()[..], b"t");
        assert_eq!(&get_string(&mut p).unwrap()[..], b"/l");
        let req = Request::Symlink {
            link: Bytes::from_static(b"/l"),
            target: Bytes::from_static(b"t"),
            draft_order: true,
        };
        let mut p = body_of(&req, 3);
        p.advance(5);
        assert_eq!(&get_string(&mut p).unwrap()[..], b"/l");
        assert_eq!(&get_string(&mut p).unwrap()[..], b"t");
    }

    #[test]
    fn extended_requests_carry_their_name() {
        let mut p = body_of(&Request::posix_rename(b"a", b"b"), 9);
        assert_eq!(p.get_u8(), packet_type::EXTENDED);
        assert_eq!(p.get_u32(), 9);
        assert_eq!(
            &get_string(&mut p).unwrap()[..],
            ext::POSIX_RENAME.as_bytes()
        );
        assert_eq!(&get_string(&mut p).unwrap()[..], b"a");
        assert_eq!(&get_string(&mut p).unwrap()[..], b"b");
    }

    #[test]
    fn attrs_round_trip_all_fields() {
        let attrs = Attrs {
            size: Some(12345678901),
            uid_gid: Some((1000, 100)),
            permissions: Some(0o100755),
            atime_mtime: Some((1, 2)),
            extended: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
            nlink: None,
        };
        let mut buf = BytesMut::new();
        attrs.encode(&mut buf);
        let mut bytes = buf.freeze();
        assert_eq!(Attrs::decode(&mut bytes).unwrap(), attrs);
        assert!(bytes.is_empty());
    }

    #[test]
    fn split_packet_waits_for_whole_packet() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 101][..]);
        assert_eq!(split_packet(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 0, 0, 1, 0xaa]);
        assert_eq!(
            split_packet(&mut buf).unwrap().unwrap(),
            Bytes::from_static(&[101, 0, 0, 0, 1])
        );
        assert_eq!(&buf[..], &[0xaa]);
        let mut huge = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        assert!(matches!(
            split_packet(&mut huge),
            Err(DecodeError::TooLong(_))
        ));
    }

    #[test]
    fn status_with_and_without_message() {
        let full = response_packet(packet_type::STATUS, 4, |b| {
            b.put_u32(2);
            put_string(b, b"No such file");
            put_string(b, b"en");
        });
        assert_eq!(
            decode_response(full).unwrap(),
            (
                4,
                Response::Status {
                    code: StatusCode::NO_SUCH_FILE,
                    message: Bytes::from_static(b"No such file")
                }
            )
        );
        let bare = response_packet(packet_type::STATUS, 5, |b| b.put_u32(99));
        let (_, resp) = decode_response(bare).unwrap();
        assert_eq!(
            resp,
            Response::Status {
                code: StatusCode(99),
                message: Bytes::new()
            }
        );
    }

    #[test]
    fn unknown_status_codes_are_eio_not_fatal() {
        assert_eq!(StatusCode(77).errno(), libc::EIO);
        assert_eq!(StatusCode(14).errno(), libc::ENOSPC);
        assert_eq!(StatusCode(15).errno(), libc::EDQUOT);
        assert_eq!(StatusCode::NO_SUCH_FILE.errno(), libc::ENOENT);
        assert_eq!(StatusCode::PERMISSION_DENIED.errno(), libc::EACCES);
    }

    #[test]
    fn name_with_non_utf8_entries() {
        let pkt = response_packet(packet_type::NAME, 8, |b| {
            b.put_u32(2);
            for name in [&b"a\xff"[..], b"b"] {
                put_string(b, name);
                put_string(b, b"-rw-r--r-- long");
                Attrs {
                    size: Some(3),
                    ..Default::default()
                }
                .encode(b);
            }
        });
        let (id, resp) = decode_response(pkt).unwrap();
        assert_eq!(id, 8);
        let Response::Name(entries) = resp else {
            panic!("not a name")
        };
        assert_eq!(&entries[0].filename[..], b"a\xff");
        assert_eq!(entries[1].attrs.size, Some(3));
    }

    #[test]
    fn handle_is_binary_exact() {
        let pkt = response_packet(packet_type::HANDLE, 1, |b| put_string(b, &[0, 0, 1, 0x80]));
        assert_eq!(
            decode_response(pkt).unwrap().1,
            Response::Handle(Bytes::from_static(&[0, 0, 1, 0x80]))
        );
    }

    #[test]
    fn version_with_extensions() {
        let mut b = BytesMut::new();
        b.put_u8(packet_type::VERSION);
        b.put_u32(3);
        put_string(&mut b, ext::POSIX_RENAME.as_bytes());
        put_string(&mut b, b"1");
        let v = decode_version(b.freeze()).unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(&v.extensions[0].0[..], ext::POSIX_RENAME.as_bytes());
    }

    #[test]
    fn truncated_and_trailing_inputs_are_errors() {
        let pkt = response_packet(packet_type::HANDLE, 1, |b| b.put_u32(10));
        assert_eq!(decode_response(pkt), Err(DecodeError::Truncated));
        let pkt = response_packet(packet_type::ATTRS, 1, |b| {
            b.put_u32(0);
            b.put_u8(1);
        });
        assert_eq!(decode_response(pkt), Err(DecodeError::Trailing));
        let pkt = response_packet(packet_type::NAME, 1, |b| b.put_u32(u32::MAX));
        assert_eq!(decode_response(pkt), Err(DecodeError::Truncated));
        assert!(decode_response(Bytes::new()).is_err());
        assert_eq!(
            decode_response(response_packet(42, 1, |_| {})),
            Err(DecodeError::UnexpectedType(42))
        );
    }

    /// The fuzz target's property, run briefly in every test run: random and mutated packets
    /// never panic a decoder.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = [
            response_packet(packet_type::NAME, 1, |b| {
                b.put_u32(1);
                put_string(b, b"n");
                put_string(b, b"l");
                Attrs {
                    size: Some(1),
                    uid_gid: Some((1, 2)),
                    permissions: Some(3),
                    atime_mtime: Some((4, 5)),
                    extended: vec![(Bytes::from_static(b"a"), Bytes::from_static(b"b"))],
                    nlink: None,
                }
                .encode(b);
            }),
            response_packet(packet_type::STATUS, 2, |b| {
                b.put_u32(4);
                put_string(b, b"Failure");
                put_string(b, b"");
            }),
            response_packet(packet_type::DATA, 3, |b| put_string(b, &[7; 40])),
        ];
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                let len = (next() % 64) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                valid[round % valid.len()].to_vec()
            };
            if !input.is_empty() {
                for _ in 0..=(next() % 4) {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
                if next() % 3 == 0 {
                    input.truncate((next() as usize) % input.len());
                }
            }
            let bytes = Bytes::from(input);
            let _ = decode_response(bytes.clone());
            let _ = decode_version(bytes.clone());
            let _ = StatVfs::decode(bytes.clone());
            let _ = Limits::decode(bytes.clone());
            let mut stream = BytesMut::from(&bytes[..]);
            while let Ok(Some(p)) = split_packet(&mut stream) {
                let _ = decode_response(p);
            }
        }
    }

    #[test]
    fn statvfs_and_limits_replies() {
        let mut b = BytesMut::new();
        for v in 1..=11u64 {
            b.put_u64(v);
        }
        let s = StatVfs::decode(b.freeze()).unwrap();
        assert_eq!((s.bsize, s.bavail, s.namemax), (1, 5, 11));
        let mut b = BytesMut::new();
        for v in [262144u64, 261120, 261120, 0] {
            b.put_u64(v);
        }
        let l = Limits::decode(b.freeze()).unwrap();
        assert_eq!(l.max_write_len, 261120);
        assert!(Limits::decode(Bytes::from_static(&[0; 8])).is_err());
    }

    #[test]
    fn names_of_ids_come_in_the_order_asked_empty_where_unknown() {
        let list = |names: &[&[u8]]| {
            let mut b = BytesMut::new();
            for n in names {
                put_string(&mut b, n);
            }
            b.freeze()
        };
        let mut b = BytesMut::new();
        put_string(&mut b, &list(&[b"root", b"", b"bob"]));
        put_string(&mut b, &list(&[b"wheel"]));
        let names = IdNames::decode(b.freeze()).unwrap();
        assert_eq!(names.users, vec![&b"root"[..], b"", b"bob"]);
        assert_eq!(names.groups, vec![&b"wheel"[..]]);
        // A name cut short inside its list is an error, not a guess.
        let mut b = BytesMut::new();
        put_string(&mut b, &[0, 0, 0, 9, b'x']);
        put_string(&mut b, b"");
        assert!(IdNames::decode(b.freeze()).is_err());
    }

    #[test]
    fn link_counts_from_long_names() {
        assert_eq!(
            longname_nlink(b"-rw-r--r--    2 root     root           3 Nov 27 10:00 x"),
            Some(2)
        );
        assert_eq!(
            longname_nlink(b"drwxr-xr-x 15 a b 4096 Jan 1 2020 d"),
            Some(15)
        );
        assert_eq!(longname_nlink(b"x"), None);
        assert_eq!(longname_nlink(b"total 4"), None);
        assert_eq!(longname_nlink(b""), None);
    }
}

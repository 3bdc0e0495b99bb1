//! sftpmount: mount a directory of a remote SFTP server through FUSE.
//!
//! Layers, top to bottom: `options` (command line), `mount` (FUSE session, daemon, signals),
//! `fuse` (kernel adapter), `fs` (the filesystem core and its write pipeline), `remote` (the
//! connection and its channels, replaced when lost), `sftp` (codec and client), `ssh`
//! (transport, host keys, authentication). Beside them, `status` (the `sftpmount status`
//! command and the daemon's side of it), `mount_table` (which mounts the kernel has) and
//! `logging` (where the daemon's log goes).

pub mod fs;
pub mod fuse;
pub mod logging;
pub mod mount;
pub mod mount_table;
pub mod options;
pub mod remote;
pub mod sftp;
pub mod ssh;
pub mod status;

//! Our SFTP v3 client: the sans-IO codec (`proto`) and the session that runs it over an SSH
//! channel (`client`).

pub mod client;
pub mod proto;

pub use client::{ServerFeatures, Session, SftpError};
pub use proto::{StatVfs, StatusCode};

//! Our SFTP v3 client: the sans-IO codec (`proto`), the session that runs it (`client`) and the
//! byte stream under it (`transport`: an SSH channel, or a pipe).

pub mod client;
pub mod proto;
pub mod transport;

pub use client::{ServerFeatures, Session, SftpError};
pub use proto::{StatVfs, StatusCode};
pub use transport::Transport;

//! Our SFTP v3 client: the sans-IO codec (`proto`), the session that runs it (`client`), the
//! byte stream under it (`transport`: an SSH channel, or a pipe) and what one connection's
//! WRITEs may hold on the wire (`gate`), and what all sessions moved (`traffic`).

pub mod client;
pub mod gate;
pub mod proto;
pub mod traffic;
pub mod transport;

pub use client::{ServerFeatures, Session, SftpError};
pub use gate::WireGate;
pub use proto::{StatVfs, StatusCode};
pub use transport::Transport;

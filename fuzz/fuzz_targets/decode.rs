//! Feeds arbitrary bytes to every decoder of the SFTP codec: none may panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sftpmount::sftp::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::find_version(&mut BytesMut::from(data));
    let mut stream = BytesMut::from(data);
    while let Ok(Some(packet)) = proto::split_packet(&mut stream) {
        let _ = proto::decode_response(packet.clone());
        let _ = proto::decode_version(packet);
    }
    let whole = Bytes::copy_from_slice(data);
    let _ = proto::decode_response(whole.clone());
    let _ = proto::decode_version(whole.clone());
    let _ = proto::StatVfs::decode(whole.clone());
    let _ = proto::Limits::decode(whole);
});

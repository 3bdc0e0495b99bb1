//! Feeds arbitrary bytes to the known_hosts parser and matcher: none may panic, whatever a
//! file holds (it may be anyone's, and is read before any host key is trusted).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sftpmount::ssh::known_hosts;

fuzz_target!(|data: &[u8]| {
    let parsed = known_hosts::parse(data, Path::new("fuzz"));
    let names = ["example.com", "[127.0.0.1]:2222", "", "*", "!x"];
    for entry in &parsed.entries {
        for name in names {
            let _ = entry.names(name);
        }
        let _ = known_hosts::verdict([(Path::new("fuzz"), &parsed)], names[1], &entry.key);
    }
});

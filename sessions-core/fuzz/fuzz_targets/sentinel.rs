//! Sentinel: what sentinels and masters answer (`read_answer`) and the
//! `sessions_redis_sentinel` host list (`parse_host_port`) on arbitrary input.
//!
//! Checked: nothing panics; a master address read from a sentinel has a host and a
//! non-zero port; an accepted `host[:port]` has a non-empty host and a non-zero port.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessions_core::sentinel::{means_rediscover, parse_host_port, read_answer, Answer, Expect};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, buf)) = input.split_first() else { return };
    let count = usize::from(selector % 4) + 1;
    let index = usize::from(selector / 4) % count;
    let last = if selector & 0x80 == 0 { Expect::MasterAddr } else { Expect::Master };
    match read_answer(buf, index, count, last) {
        Answer::MasterAt(host, port) => {
            assert!(!host.is_empty());
            assert_ne!(port, 0);
            assert_eq!(last, Expect::MasterAddr);
            assert_eq!(index + 1, count);
        }
        Answer::IsMaster => assert_eq!(last, Expect::Master),
        Answer::Accepted => assert!(index + 1 < count),
        Answer::Incomplete | Answer::Failed(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(buf) {
        let _ = means_rediscover(text);
        if let Ok((host, port)) = parse_host_port(text) {
            assert!(!host.is_empty());
            assert_ne!(port, 0);
        }
    }
});

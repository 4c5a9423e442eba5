//! `sessions_redis` URLs: `redis_url::parse` on arbitrary strings.
//!
//! Checked: nothing panics; an accepted URL has a host of allowed characters and a
//! non-zero port, and writing it back out in canonical form (`rediss://` for TLS) parses to
//! the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessions_core::redis_url::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(url) = parse(s) else { return };
    assert!(!url.host.is_empty());
    assert!(url.port != 0);
    assert!(url.host.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_:".contains(&c)));
    assert!(url.user.is_none() || url.password.is_some(), "a user without a password");

    let mut canonical = String::from(if url.tls { "rediss://" } else { "redis://" });
    if let Some(password) = &url.password {
        canonical += url.user.as_deref().unwrap_or("");
        canonical += ":";
        canonical += password;
        canonical += "@";
    }
    if url.host.contains(':') {
        canonical += &format!("[{}]", url.host);
    } else {
        canonical += &url.host;
    }
    canonical += &format!(":{}/{}", url.port, url.db);
    assert_eq!(parse(&canonical).as_ref(), Ok(&url), "{s:?} written back as {canonical:?}");
});

//! `sessions_redis redis[s]://[[user]:password@]host[:port][/db]`, parsed once at config
//! time; `rediss://` is Redis over TLS.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub db: u32,
    /// `rediss://`: TLS to Redis (and to the sentinels).
    pub tls: bool,
}

pub const DEFAULT_PORT: u16 = 6379;

/// Parses a Redis URL; the error says what is wrong (never echoing the password).
pub fn parse(url: &str) -> Result<RedisUrl, &'static str> {
    let (rest, tls) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("must start with \"redis://\" or \"rediss://\""),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((u, p)) => {
                if p.is_empty() {
                    return Err("has an empty password after \":\"");
                }
                ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string()))
            }
            None => return Err("user info must be \"[user]:password@\""),
        },
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or("has an unterminated \"[\" in the host")?;
        let host = &v6[..end];
        match &v6[end + 1..] {
            "" => (host, DEFAULT_PORT),
            p => (host, parse_port(p.strip_prefix(':').ok_or("has junk after the host")?)?),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (hostport, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if host.bytes().any(|c| !(c.is_ascii_alphanumeric() || b".-_:".contains(&c))) {
        return Err("has an invalid character in the host");
    }
    let db = match path {
        "" => 0,
        p => p.parse::<u32>().map_err(|_| "database must be a number, as in \"/0\"")?,
    };
    if [&user, &password].iter().any(|s| s.as_ref().is_some_and(|s| s.bytes().any(|c| c < b' '))) {
        return Err("has control characters in the credentials");
    }
    Ok(RedisUrl { user, password, host: host.to_string(), port, db, tls })
}

fn parse_port(p: &str) -> Result<u16, &'static str> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be a number from 1 to 65535"),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls() {
        let u = parse("redis://127.0.0.1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.user, u.password),
            ("127.0.0.1", 6379, 0, None, None)
        );
        let u = parse("redis://:pw@localhost:6380/3").unwrap();
        assert_eq!((u.port, u.db, u.user, u.password.as_deref()), (6380, 3, None, Some("pw")));
        let u = parse("redis://bob:pw@[::1]:7000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.user.as_deref()), ("::1", 7000, Some("bob")));
        assert!(!u.tls);
    }

    #[test]
    fn tls_urls() {
        let u = parse("rediss://:pw@redis.example.com:6380/2").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db, u.password.as_deref()),
            (true, "redis.example.com", 6380, 2, Some("pw"))
        );
        assert!(parse("rediss://127.0.0.1").is_ok_and(|u| u.tls && u.port == DEFAULT_PORT));
        for bad in ["redisss://host", "rediss:/host", "REDISS://host", "rediss://"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "http://x",
            "redis://",
            "redis://host:0",
            "redis://host:99999",
            "redis://host:port",
            "redis://host/db",
            "redis://user@host",
            "redis://u:@host",
            "redis://ho st",
            "redis://[::1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

//! Redis Sentinel: finding the master with `SENTINEL get-master-addr-by-name`, confirming
//! it with `ROLE`, the order the sentinels are asked in, and which errors from the master
//! mean "look it up again". No I/O: the glue runs one [`Lookup`] at a time per worker and
//! feeds it what each exchange gave.

use redis::Value;

/// Sentinel's own port, when `sessions_redis_sentinel` names a host without one.
pub const DEFAULT_PORT: u16 = 26379;

/// `host[:port]` (`[v6]:port` for IPv6) of a sentinel.
pub fn parse_host_port(text: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let end = v6.find(']').ok_or("has an unterminated \"[\"")?;
        match &v6[end + 1..] {
            "" => (&v6[..end], DEFAULT_PORT),
            rest => (&v6[..end], port(rest.strip_prefix(':').ok_or("has junk after the host")?)?),
        }
    } else {
        match text.rsplit_once(':') {
            // A bare IPv6 address has several colons: it has no port.
            Some((h, p)) if !h.contains(':') => (h, port(p)?),
            _ => (text, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if host.bytes().any(|c| !(c.is_ascii_alphanumeric() || b".-_:".contains(&c))) {
        return Err("has an invalid character in the host");
    }
    Ok((host.to_string(), port))
}

fn port(p: &str) -> Result<u16, &'static str> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be a number from 1 to 65535"),
        Ok(n) => Ok(n),
    }
}

/// What a sentinel is asked, in order: `AUTH` when credentials are set, then
/// `SENTINEL get-master-addr-by-name <master>`.
pub fn lookup_commands(user: Option<&str>, password: Option<&str>, master: &str) -> Vec<Vec<u8>> {
    // A sentinel has no databases: the data connection's setup without `SELECT`.
    let mut cmds = crate::redis_flow::setup_commands(user, password, 0);
    cmds.push(
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).get_packed_command(),
    );
    cmds
}

/// What the address a sentinel gave is asked: the data connection's setup (`AUTH`,
/// `SELECT`), then `ROLE`.
pub fn confirm_commands(setup: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut cmds = setup.to_vec();
    cmds.push(redis::cmd("ROLE").get_packed_command());
    cmds
}

/// What the reply to the last command of an exchange must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `SENTINEL get-master-addr-by-name`: the master's host and port.
    MasterAddr,
    /// `ROLE`: `master`.
    Master,
}

/// One reply of an exchange, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not all of it is in yet.
    Incomplete,
    /// An earlier command (`AUTH`, `SELECT`) was accepted: send the next one.
    Accepted,
    /// The master's address, from a sentinel.
    MasterAt(String, u16),
    /// `ROLE` said `master`.
    IsMaster,
    /// Anything else: why this exchange failed (for the log).
    Failed(String),
}

/// Reads the reply in `buf` to command `index` of an exchange of `count` commands whose
/// last one expects `last`.
pub fn read_answer(buf: &[u8], index: usize, count: usize, last: Expect) -> Answer {
    if buf.is_empty() {
        return Answer::Incomplete;
    }
    let value = match redis::parse_redis_value(buf) {
        Ok(v) => v,
        Err(e) if e.is_io_error() => return Answer::Incomplete,
        Err(_) => return Answer::Failed("not a Redis reply".into()),
    };
    if let Value::ServerError(e) = &value {
        return Answer::Failed(format!("{} {}", e.code(), e.details().unwrap_or("")).trim().into());
    }
    if index + 1 < count {
        return match value {
            Value::Okay => Answer::Accepted,
            Value::SimpleString(s) if s == "OK" => Answer::Accepted,
            other => Answer::Failed(format!("unexpected reply {other:?}")),
        };
    }
    match last {
        Expect::MasterAddr => master_addr(&value),
        Expect::Master => match role(&value) {
            Some(r) if r == "master" => Answer::IsMaster,
            Some(r) => Answer::Failed(format!("ROLE says \"{r}\", not \"master\"")),
            None => Answer::Failed("unexpected reply to ROLE".into()),
        },
    }
}

/// `["host", "port"]`, or nil when the sentinel does not know the master.
fn master_addr(value: &Value) -> Answer {
    let Value::Array(items) = value else {
        return match value {
            Value::Nil => Answer::Failed("the sentinel does not know this master".into()),
            other => Answer::Failed(format!("unexpected reply {other:?}")),
        };
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => core::str::from_utf8(b).ok().map(str::to_string),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match items.as_slice() {
        [host, port] => match (text(host), text(port).and_then(|p| p.parse::<u16>().ok())) {
            (Some(h), Some(p)) if !h.is_empty() && p != 0 => Answer::MasterAt(h, p),
            _ => Answer::Failed("malformed master address".into()),
        },
        _ => Answer::Failed("malformed master address".into()),
    }
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
fn role(value: &Value) -> Option<String> {
    let Value::Array(items) = value else { return None };
    match items.first()? {
        Value::BulkString(b) => core::str::from_utf8(b).ok().map(str::to_string),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Error replies from the master that mean it is no longer the master (or cannot serve as
/// one): the master is looked up again.
pub fn means_rediscover(error: &str) -> bool {
    let code = error.split(' ').next().unwrap_or("");
    ["READONLY", "LOADING", "MASTERDOWN"].contains(&code)
}

/// The order the sentinels are asked in: the last one that answered goes first, so a dead
/// one costs its timeout once, not on every lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order(Vec<usize>);

impl Order {
    /// The configured order of `count` sentinels.
    pub fn new(count: usize) -> Self {
        Order((0..count).collect())
    }

    /// `sentinel` answered: it is asked first from now on.
    pub fn promote(&mut self, sentinel: usize) {
        if let Some(i) = self.0.iter().position(|&s| s == sentinel) {
            let s = self.0.remove(i);
            self.0.insert(0, s);
        }
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }
}

/// What the glue does next in a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask sentinel `n` (an index in the configured list) for the master's address.
    Ask(usize),
    /// Connect to the address sentinel `from` gave and check that it is the master.
    Confirm { host: String, port: u16, from: usize },
    /// Found: the master is at `host:port`, sentinel `from` said so and goes first.
    Found { host: String, port: u16, from: usize },
    /// No sentinel gave a master that confirmed: try again later.
    Failed,
}

/// One lookup: the sentinels in order, each asked then its answer confirmed; the first
/// confirmed answer wins.
#[derive(Clone, Debug)]
pub struct Lookup {
    order: Vec<usize>,
    /// The position in `order` of the sentinel being asked (or whose answer is checked).
    pos: usize,
    /// The address being confirmed.
    candidate: Option<(String, u16)>,
}

impl Lookup {
    pub fn start(order: &Order) -> (Lookup, Action) {
        let mut lookup = Lookup { order: order.0.clone(), pos: 0, candidate: None };
        let action = lookup.ask_current();
        (lookup, action)
    }

    fn ask_current(&mut self) -> Action {
        self.candidate = None;
        match self.order.get(self.pos) {
            Some(&n) => Action::Ask(n),
            None => Action::Failed,
        }
    }

    fn next_sentinel(&mut self) -> Action {
        self.pos += 1;
        self.ask_current()
    }

    /// The sentinel being asked answered with `addr`, or failed (`None`: down, timed out,
    /// refused `AUTH`, does not know the master).
    pub fn sentinel_answered(&mut self, addr: Option<(String, u16)>) -> Action {
        let Some(&from) = self.order.get(self.pos) else { return Action::Failed };
        match addr {
            Some((host, port)) => {
                self.candidate = Some((host.clone(), port));
                Action::Confirm { host, port, from }
            }
            None => self.next_sentinel(),
        }
    }

    /// The candidate answered `ROLE` with `master` (`true`), or did not.
    pub fn confirmed(&mut self, is_master: bool) -> Action {
        let (Some(&from), Some((host, port))) = (self.order.get(self.pos), self.candidate.take())
        else {
            return Action::Failed;
        };
        if is_master {
            Action::Found { host, port, from }
        } else {
            self.next_sentinel()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(parse_host_port("10.0.0.1").unwrap(), ("10.0.0.1".into(), 26379));
        assert_eq!(parse_host_port("s1.example:26380").unwrap(), ("s1.example".into(), 26380));
        assert_eq!(parse_host_port("[::1]:5000").unwrap(), ("::1".into(), 5000));
        assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".into(), 26379));
        assert_eq!(parse_host_port("::1").unwrap(), ("::1".into(), 26379));
        for bad in ["", ":26379", "h:0", "h:x", "h:70000", "[::1", "[::1]x", "a b", "h/1"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands() {
        let cmds = lookup_commands(None, None, "m");
        assert_eq!(
            cmds,
            vec![b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$1\r\nm\r\n".to_vec()]
        );
        let cmds = lookup_commands(Some("u"), Some("p"), "m");
        assert_eq!(cmds[0], b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n".to_vec());
        assert_eq!(cmds.len(), 2);
        assert_eq!(lookup_commands(None, Some("p"), "m")[0], b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n");
        let setup = vec![b"SETUP".to_vec()];
        assert_eq!(
            confirm_commands(&setup),
            vec![b"SETUP".to_vec(), b"*1\r\n$4\r\nROLE\r\n".to_vec()]
        );
    }

    #[test]
    fn answers() {
        let addr = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n";
        assert_eq!(
            read_answer(addr, 0, 1, Expect::MasterAddr),
            Answer::MasterAt("127.0.0.1".into(), 6380)
        );
        for cut in 1..addr.len() {
            assert_eq!(
                read_answer(&addr[..cut], 0, 1, Expect::MasterAddr),
                Answer::Incomplete,
                "{cut}"
            );
        }
        assert!(matches!(read_answer(b"*-1\r\n", 0, 1, Expect::MasterAddr), Answer::Failed(_)));
        assert!(matches!(read_answer(b"$-1\r\n", 0, 1, Expect::MasterAddr), Answer::Failed(_)));
        assert!(matches!(
            read_answer(b"*2\r\n$1\r\nh\r\n$1\r\nx\r\n", 0, 1, Expect::MasterAddr),
            Answer::Failed(_)
        ));
        assert!(matches!(
            read_answer(b"*1\r\n$1\r\nh\r\n", 0, 1, Expect::MasterAddr),
            Answer::Failed(_)
        ));
        // AUTH first.
        assert_eq!(read_answer(b"+OK\r\n", 0, 2, Expect::MasterAddr), Answer::Accepted);
        assert_eq!(
            read_answer(b"-WRONGPASS invalid username-password pair\r\n", 0, 2, Expect::MasterAddr),
            Answer::Failed("WRONGPASS invalid username-password pair".into())
        );
        assert!(matches!(read_answer(b"$-1\r\n", 0, 2, Expect::MasterAddr), Answer::Failed(_)));
        assert!(matches!(
            read_answer(b"@garbage\r\n", 0, 1, Expect::MasterAddr),
            Answer::Failed(_)
        ));

        let master = b"*3\r\n$6\r\nmaster\r\n:1234\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$4\r\n1234\r\n";
        assert_eq!(read_answer(master, 0, 1, Expect::Master), Answer::IsMaster);
        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:14\r\n";
        assert_eq!(
            read_answer(replica, 0, 1, Expect::Master),
            Answer::Failed("ROLE says \"slave\", not \"master\"".into())
        );
        assert!(matches!(
            read_answer(b"-NOAUTH Authentication required.\r\n", 0, 1, Expect::Master),
            Answer::Failed(_)
        ));
        assert!(matches!(read_answer(b":1\r\n", 0, 1, Expect::Master), Answer::Failed(_)));
    }

    #[test]
    fn rediscover_errors() {
        assert!(means_rediscover("READONLY You can't write against a read only replica."));
        assert!(means_rediscover("LOADING Redis is loading the dataset in memory"));
        assert!(means_rediscover("MASTERDOWN Link with MASTER is down"));
        assert!(!means_rediscover("OOM command not allowed"));
        assert!(!means_rediscover("ERR READONLY"));
    }

    #[test]
    fn order_puts_the_one_that_answered_first() {
        let mut order = Order::new(3);
        assert_eq!(order.as_slice(), &[0, 1, 2]);
        order.promote(2);
        assert_eq!(order.as_slice(), &[2, 0, 1]);
        order.promote(2);
        assert_eq!(order.as_slice(), &[2, 0, 1]);
        order.promote(1);
        assert_eq!(order.as_slice(), &[1, 2, 0]);
        order.promote(7);
        assert_eq!(order.as_slice(), &[1, 2, 0]);
    }

    #[test]
    fn lookup_tries_each_sentinel_then_fails() {
        let mut order = Order::new(3);
        order.promote(1);
        let (mut l, a) = Lookup::start(&order);
        assert_eq!(a, Action::Ask(1));
        // Down.
        assert_eq!(l.sentinel_answered(None), Action::Ask(0));
        // Gives a replica (a stale answer during failover).
        assert_eq!(
            l.sentinel_answered(Some(("10.0.0.1".into(), 6379))),
            Action::Confirm { host: "10.0.0.1".into(), port: 6379, from: 0 }
        );
        assert_eq!(l.confirmed(false), Action::Ask(2));
        assert_eq!(
            l.sentinel_answered(Some(("10.0.0.2".into(), 6380))),
            Action::Confirm { host: "10.0.0.2".into(), port: 6380, from: 2 }
        );
        assert_eq!(
            l.confirmed(true),
            Action::Found { host: "10.0.0.2".into(), port: 6380, from: 2 }
        );

        let (mut l, _) = Lookup::start(&Order::new(2));
        assert_eq!(l.sentinel_answered(None), Action::Ask(1));
        assert_eq!(l.sentinel_answered(None), Action::Failed);
        // Out-of-turn calls are harmless.
        assert_eq!(l.sentinel_answered(None), Action::Failed);
        assert_eq!(l.confirmed(true), Action::Failed);

        let (_, a) = Lookup::start(&Order::new(0));
        assert_eq!(a, Action::Failed);
    }
}

//! The session algorithm against Redis, as a state machine that emits commands and
//! consumes replies; the NGINX glue only moves bytes. Pure: no I/O, time passed in.
//!
//! Round trips per request: a returning client is one `GET`; a new client one
//! `SET NX EX`; a touch (at most once per `max(1s, idle/30)`) or a renewal adds one
//! compare-and-set script; an expired / mismatched / dead session is one `GET` plus one
//! script that deletes it (with its successor, for an old ID within its renewal grace) and
//! creates the new one; an old ID in its renewal grace is one `GET` plus one `EXISTS` (its
//! successor must still be alive to be handed out).
//!
//! Renewal is single-flight across instances: the compare-and-set only succeeds against
//! the exact record that was read, and the successor ID is derived from the old one, so
//! whoever renews, every instance hands out the same successor.

use redis::Value;

use crate::cookie::{Incoming, SessionId, Signer, StoreKey};
use crate::session::{decide, BindingKey, Client, Evaluation, Policy, Record, Status, Verdict};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "ngx_sessions";
/// Key of the shared random secret and cookie name.
pub const IDENTITY_KEY: &str = "ngx_sessions:identity";
/// Bytes of the identity value: 32 bytes of secret, 16 of cookie name.
pub const IDENTITY_LEN: usize = 48;
/// TTL of the identity and binding keys, refreshed by every worker when it (re)reads them.
pub const IDENTITY_TTL: u64 = 400 * 86400;
/// Key of the shared random key of the binding hashes (16 bytes), which every instance
/// adopts before it evaluates a request, whatever its secret.
pub const BINDING_KEY_KEY: &str = "ngx_sessions:binding_key";
/// Conflicting writes tolerated before the request gives up with `error`.
const MAX_ATTEMPTS: u8 = 4;

/// `if GET(k1) == expected then SET k1 new EX ttl; [SET k2 succ NX EX ttl2]; return 1
/// else return GET(k1)` (nil when gone).
const SCRIPT_CAS: &str = "local cur = redis.call('GET', KEYS[1]) \
if cur ~= ARGV[1] then return cur end \
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) \
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'NX', 'EX', ARGV[5]) end \
return 1";

/// Destroy one session (`KEYS[1]`, and `KEYS[3]` when given: the successor of an old ID)
/// and start another (`KEYS[2]`) in one round trip.
const SCRIPT_REPLACE: &str = "for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end \
redis.call('DEL', KEYS[1]) \
return redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2])";

/// For each key `KEYS[i]`, the first instance's proposal `ARGV[i]` wins; everyone reads the
/// winners (concatenated, in the order of the keys) and keeps them alive
/// (`ARGV[#KEYS + 1]` seconds).
const SCRIPT_SHARED: &str = "local out = '' \
for i = 1, #KEYS do \
redis.call('SET', KEYS[i], ARGV[i], 'NX') \
redis.call('EXPIRE', KEYS[i], ARGV[#KEYS + 1]) \
out = out .. redis.call('GET', KEYS[i]) end \
return out";

/// `<prefix>:<hex of the store key>`: never the raw ID.
pub fn key_name(key: &StoreKey) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = Vec::with_capacity(KEY_PREFIX.len() + 1 + 32);
    k.extend_from_slice(KEY_PREFIX.as_bytes());
    k.push(b':');
    for b in key.0 {
        k.push(HEX[(b >> 4) as usize]);
        k.push(HEX[(b & 15) as usize]);
    }
    k
}

/// A command of the algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Get {
        key: StoreKey,
    },
    Exists {
        key: StoreKey,
    },
    Create {
        key: StoreKey,
        record: Record,
        ttl: u64,
    },
    Cas {
        key: StoreKey,
        expected: Record,
        new: Record,
        ttl: u64,
        successor: Option<(StoreKey, Record, u64)>,
    },
    /// Deletes `old` (and `successor`, the successor of an old ID within its grace) and
    /// creates `key`.
    Replace {
        old: StoreKey,
        successor: Option<StoreKey>,
        key: StoreKey,
        record: Record,
        ttl: u64,
    },
    /// Fetches (proposing ours) what all instances must share: the binding key, and the
    /// random identity when `identity` is given. The reply is for [`parse_shared`].
    Shared {
        binding_key: BindingKey,
        identity: Option<[u8; IDENTITY_LEN]>,
    },
}

impl Command {
    /// RESP bytes of the command.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Command::Get { key } => redis::cmd("GET").arg(key_name(key)).get_packed_command(),
            Command::Exists { key } => redis::cmd("EXISTS").arg(key_name(key)).get_packed_command(),
            Command::Create { key, record, ttl } => redis::cmd("SET")
                .arg(key_name(key))
                .arg(&record.encode()[..])
                .arg("NX")
                .arg("EX")
                .arg(*ttl)
                .get_packed_command(),
            Command::Cas { key, expected, new, ttl, successor } => {
                let (skey, sval, sttl) = match successor {
                    Some((k, r, t)) => (key_name(k), r.encode().to_vec(), *t),
                    None => (key_name(key), Vec::new(), 0),
                };
                redis::cmd("EVAL")
                    .arg(SCRIPT_CAS)
                    .arg(2)
                    .arg(key_name(key))
                    .arg(skey)
                    .arg(&expected.encode()[..])
                    .arg(&new.encode()[..])
                    .arg(*ttl)
                    .arg(sval)
                    .arg(sttl)
                    .get_packed_command()
            }
            Command::Replace { old, successor, key, record, ttl } => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SCRIPT_REPLACE).arg(2 + usize::from(successor.is_some()));
                cmd.arg(key_name(old)).arg(key_name(key));
                if let Some(successor) = successor {
                    cmd.arg(key_name(successor));
                }
                cmd.arg(&record.encode()[..]).arg(*ttl).get_packed_command()
            }
            Command::Shared { binding_key, identity } => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SCRIPT_SHARED).arg(1 + usize::from(identity.is_some()));
                cmd.arg(BINDING_KEY_KEY);
                if identity.is_some() {
                    cmd.arg(IDENTITY_KEY);
                }
                cmd.arg(&binding_key.0[..]);
                if let Some(identity) = identity {
                    cmd.arg(&identity[..]);
                }
                cmd.arg(IDENTITY_TTL).get_packed_command()
            }
        }
    }
}

/// `AUTH [user] password` and `SELECT db`, sent on every new connection.
pub fn setup_commands(user: Option<&str>, password: Option<&str>, db: u32) -> Vec<Vec<u8>> {
    let mut cmds = Vec::new();
    if let Some(password) = password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = user {
            auth.arg(user);
        }
        cmds.push(auth.arg(password).get_packed_command());
    }
    if db != 0 {
        cmds.push(redis::cmd("SELECT").arg(db).get_packed_command());
    }
    cmds
}

/// A reply, reduced to what the algorithm distinguishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Ok,
    Int(i64),
    Bulk(Vec<u8>),
    /// An error reply (`-ERR ...`, `-NOAUTH ...`, `-OOM ...`) or an unexpected type.
    Error(String),
}

/// The outcome of feeding the bytes received so far to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Complete(Reply),
    Incomplete,
    /// Not RESP: the connection is unusable.
    Garbage,
}

/// Parses one complete reply (one command is in flight per connection).
pub fn parse_reply(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    match redis::parse_redis_value(buf) {
        Ok(v) => Parsed::Complete(match v {
            Value::Nil => Reply::Nil,
            Value::Okay => Reply::Ok,
            Value::SimpleString(s) if s == "OK" => Reply::Ok,
            Value::Int(i) => Reply::Int(i),
            Value::BulkString(b) => Reply::Bulk(b),
            Value::ServerError(e) => Reply::Error(
                format!("{} {}", e.code(), e.details().unwrap_or("")).trim().to_string(),
            ),
            other => Reply::Error(format!("unexpected reply {other:?}")),
        }),
        Err(e) if e.is_io_error() => Parsed::Incomplete,
        Err(_) => Parsed::Garbage,
    }
}

/// Parses the first reply in `buf`, which may hold several (pipelined commands), and says
/// how many bytes it used (0 unless `Complete`).
pub fn parse_reply_len(buf: &[u8]) -> (Parsed, usize) {
    match resp_len(buf, 0) {
        Ok(None) => (Parsed::Incomplete, 0),
        Err(()) => (Parsed::Garbage, 0),
        Ok(Some(n)) => match parse_reply(&buf[..n]) {
            Parsed::Complete(reply) => (Parsed::Complete(reply), n),
            // A whole value by its framing that the parser still finds short: not RESP.
            _ => (Parsed::Garbage, 0),
        },
    }
}

/// Nesting deeper than this is not a reply to any of our commands.
const MAX_RESP_DEPTH: usize = 8;

/// The length of the first RESP value in `buf` by its framing alone: `Ok(None)` while it
/// is incomplete, `Err` when it is not RESP.
fn resp_len(buf: &[u8], depth: usize) -> Result<Option<usize>, ()> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let Some(cr) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let head = cr + 2;
    let count = || -> Result<i64, ()> {
        core::str::from_utf8(&buf[1..cr]).ok().and_then(|t| t.parse().ok()).ok_or(())
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(head)),
        b'$' | b'=' | b'!' => match usize::try_from(count()?) {
            Err(_) => Ok(Some(head)), // null bulk string
            Ok(n) => {
                let end = head.checked_add(n).and_then(|e| e.checked_add(2)).ok_or(())?;
                Ok((buf.len() >= end).then_some(end))
            }
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Ok(n) = usize::try_from(count()?) else { return Ok(Some(head)) }; // null array
            if depth >= MAX_RESP_DEPTH {
                return Err(());
            }
            let items = if matches!(kind, b'%' | b'|') { n.checked_mul(2).ok_or(())? } else { n };
            let mut at = head;
            for _ in 0..items {
                match resp_len(&buf[at..], depth + 1)? {
                    Some(len) => at += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(()),
    }
}

/// What the glue does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Send(Command),
    Done(Evaluation),
}

#[derive(Clone, Copy, Debug)]
enum State {
    Looking {
        id: SessionId,
    },
    /// `id` was renewed to `next` moments ago: is `next` still alive?
    CheckingSuccessor {
        id: SessionId,
        next: SessionId,
    },
    /// A compare-and-set of `id`'s record is in flight: a touch, or a renewal to `next`.
    Writing {
        id: SessionId,
        next: Option<SessionId>,
    },
    Creating {
        status: Status,
        id: SessionId,
    },
    Done,
}

/// One request's session evaluation against Redis.
#[derive(Clone, Debug)]
pub struct Flow {
    now: u64,
    policy: Policy,
    /// The cookie's verified ID, kept as `$session_id` when Redis fails.
    incoming: Option<SessionId>,
    state: State,
    attempts: u8,
}

fn ttl(rec: &Record, policy: &Policy, now: u64) -> u64 {
    rec.expires_at(policy).saturating_sub(now).max(1)
}

impl Flow {
    /// Starts the flow; `client` is the request's, here and at every [`Flow::on_reply`].
    pub fn start(incoming: Incoming, now: u64, policy: &Policy, client: &Client) -> (Flow, Step) {
        let mut flow =
            Flow { now, policy: *policy, incoming: None, state: State::Done, attempts: 0 };
        let step = match incoming {
            Incoming::Absent => flow.create(Status::New, None, client),
            Incoming::Invalid => flow.create(Status::Invalid, None, client),
            Incoming::Verified(id) => {
                flow.incoming = Some(id);
                flow.state = State::Looking { id };
                Step::Send(Command::Get { key: id.store_key() })
            }
        };
        (flow, step)
    }

    /// The request's result when Redis cannot be used: nothing changes, the cookie stays.
    pub fn failed(&mut self) -> Evaluation {
        self.state = State::Done;
        Evaluation::store_error(self.incoming)
    }

    fn done(&mut self, eval: Evaluation) -> Step {
        self.state = State::Done;
        Step::Done(eval)
    }

    /// Starts a new session; `old` is destroyed first (with its successor, if given).
    fn create(
        &mut self,
        status: Status,
        old: Option<(StoreKey, Option<StoreKey>)>,
        client: &Client,
    ) -> Step {
        self.attempts += 1;
        if self.attempts > MAX_ATTEMPTS {
            return Step::Done(self.failed());
        }
        let record = Record::new(self.now, client);
        let id = SessionId::random();
        self.state = State::Creating { status, id };
        let ttl = ttl(&record, &self.policy, self.now);
        Step::Send(match old {
            Some((old, successor)) => {
                Command::Replace { old, successor, key: id.store_key(), record, ttl }
            }
            None => Command::Create { key: id.store_key(), record, ttl },
        })
    }

    /// Decides on a record read from Redis.
    fn apply(&mut self, id: SessionId, rec: Record, signer: &Signer, client: &Client) -> Step {
        let (now, policy) = (self.now, self.policy);
        match decide(&rec, now, &policy, client) {
            Verdict::Valid { touch: false } => self.done(Evaluation {
                status: Status::Valid,
                id: Some(id),
                set_cookie: false,
                renewal: false,
            }),
            Verdict::Valid { touch: true } => {
                self.attempts += 1;
                if self.attempts > MAX_ATTEMPTS {
                    // Others keep writing this record; it is alive, so let it be.
                    return self.done(Evaluation {
                        status: Status::Valid,
                        id: Some(id),
                        set_cookie: false,
                        renewal: false,
                    });
                }
                let new = Record { last_seen: now, ..client.rebind(&rec) };
                self.state = State::Writing { id, next: None };
                Step::Send(Command::Cas {
                    key: id.store_key(),
                    expected: rec,
                    new,
                    ttl: ttl(&new, &policy, now),
                    successor: None,
                })
            }
            Verdict::Renew => {
                self.attempts += 1;
                if self.attempts > MAX_ATTEMPTS {
                    return Step::Done(self.failed());
                }
                let next = signer.successor(&id);
                let rebound = client.rebind(&rec);
                let succ = rebound.successor(now);
                let old = Record { renewed_at: now, last_seen: now, ..rebound };
                self.state = State::Writing { id, next: Some(next) };
                Step::Send(Command::Cas {
                    key: id.store_key(),
                    expected: rec,
                    new: old,
                    ttl: ttl(&old, &policy, now),
                    successor: Some((next.store_key(), succ, ttl(&succ, &policy, now))),
                })
            }
            // Hand out the successor only while it lives: a destroyed one never comes back.
            Verdict::Successor => {
                let next = signer.successor(&id);
                self.state = State::CheckingSuccessor { id, next };
                Step::Send(Command::Exists { key: next.store_key() })
            }
            Verdict::Expired => self.create(Status::Expired, Some((id.store_key(), None)), client),
            // An old ID within its grace speaks for the whole session: its successor goes too.
            Verdict::Mismatch => {
                let successor = (rec.renewed_at != 0).then(|| signer.successor(&id).store_key());
                self.create(Status::Mismatch, Some((id.store_key(), successor)), client)
            }
            Verdict::Dead => self.create(Status::Invalid, Some((id.store_key(), None)), client),
        }
    }

    /// Feeds the reply to the last command sent.
    pub fn on_reply(&mut self, reply: Reply, signer: &Signer, client: &Client) -> Step {
        if let Reply::Error(_) = reply {
            return Step::Done(self.failed());
        }
        match self.state {
            State::Looking { id } => match reply {
                Reply::Nil => self.create(Status::Invalid, None, client),
                Reply::Bulk(b) => match Record::decode(&b) {
                    Some(rec) => self.apply(id, rec, signer, client),
                    // Not ours (foreign or corrupted value): never trusted, replaced.
                    None => self.create(Status::Invalid, Some((id.store_key(), None)), client),
                },
                _ => Step::Done(self.failed()),
            },
            State::Writing { id, next } => match reply {
                Reply::Int(1) => match next {
                    Some(next) => self.done(Evaluation {
                        status: Status::Renewed,
                        id: Some(next),
                        set_cookie: true,
                        renewal: true,
                    }),
                    None => self.done(Evaluation {
                        status: Status::Valid,
                        id: Some(id),
                        set_cookie: false,
                        renewal: false,
                    }),
                },
                // Someone else changed the record since we read it: decide again on theirs.
                Reply::Bulk(b) => match Record::decode(&b) {
                    Some(rec) => self.apply(id, rec, signer, client),
                    None => self.create(Status::Invalid, Some((id.store_key(), None)), client),
                },
                Reply::Nil => self.create(Status::Invalid, None, client),
                _ => Step::Done(self.failed()),
            },
            State::CheckingSuccessor { id, next } => match reply {
                Reply::Int(1) => self.done(Evaluation {
                    status: Status::Renewed,
                    id: Some(next),
                    set_cookie: true,
                    renewal: false,
                }),
                Reply::Int(_) => self.create(Status::Invalid, Some((id.store_key(), None)), client),
                _ => Step::Done(self.failed()),
            },
            State::Creating { status, id } => match reply {
                Reply::Ok => {
                    self.done(Evaluation { status, id: Some(id), set_cookie: true, renewal: false })
                }
                // The random ID is taken (never, in practice): draw another.
                Reply::Nil => self.create(status, None, client),
                _ => Step::Done(self.failed()),
            },
            State::Done => Step::Done(self.failed()),
        }
    }
}

/// The secret and cookie name kept in Redis.
pub type SharedIdentity = ([u8; 32], [u8; 16]);

/// Splits the reply of [`Command::Shared`]: the binding key, then the identity if it was
/// asked for. `None` when a value is malformed (someone else wrote the key).
pub fn parse_shared(value: &[u8]) -> Option<(BindingKey, Option<SharedIdentity>)> {
    let (key, identity) = value.split_at_checked(16)?;
    let key = BindingKey(key.try_into().ok()?);
    match identity.len() {
        0 => Some((key, None)),
        _ => Some((key, Some(parse_identity(identity)?))),
    }
}

/// Splits an identity value into the secret and the cookie name, checking the name.
pub fn parse_identity(value: &[u8]) -> Option<SharedIdentity> {
    if value.len() != IDENTITY_LEN {
        return None;
    }
    let mut secret = [0u8; 32];
    let mut name = [0u8; 16];
    secret.copy_from_slice(&value[..32]);
    name.copy_from_slice(&value[32..]);
    crate::cookie::is_token(&name).then_some((secret, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A Redis that understands exactly the commands above (TTLs recorded, not run).
    #[derive(Default)]
    struct FakeRedis {
        data: HashMap<Vec<u8>, (Vec<u8>, u64)>,
        commands: usize,
    }

    impl FakeRedis {
        fn exec(&mut self, cmd: &Command) -> Reply {
            self.commands += 1;
            match cmd {
                Command::Get { key } => match self.data.get(&key_name(key)) {
                    Some((v, _)) => Reply::Bulk(v.clone()),
                    None => Reply::Nil,
                },
                Command::Exists { key } => {
                    Reply::Int(self.data.contains_key(&key_name(key)) as i64)
                }
                Command::Create { key, record, ttl } => self.set_nx(key, record, *ttl),
                Command::Cas { key, expected, new, ttl, successor } => {
                    let k = key_name(key);
                    let cur = self.data.get(&k).map(|(v, _)| v.clone());
                    if cur.as_deref() != Some(&expected.encode()[..]) {
                        return cur.map(Reply::Bulk).unwrap_or(Reply::Nil);
                    }
                    self.data.insert(k, (new.encode().to_vec(), *ttl));
                    if let Some((sk, sr, st)) = successor {
                        self.set_nx(sk, sr, *st);
                    }
                    Reply::Int(1)
                }
                Command::Replace { old, successor, key, record, ttl } => {
                    self.data.remove(&key_name(old));
                    if let Some(successor) = successor {
                        self.data.remove(&key_name(successor));
                    }
                    self.set_nx(key, record, *ttl)
                }
                Command::Shared { binding_key, identity } => {
                    let mut out = self
                        .data
                        .entry(BINDING_KEY_KEY.as_bytes().to_vec())
                        .or_insert((binding_key.0.to_vec(), IDENTITY_TTL))
                        .0
                        .clone();
                    if let Some(identity) = identity {
                        let v = self
                            .data
                            .entry(IDENTITY_KEY.as_bytes().to_vec())
                            .or_insert((identity.to_vec(), IDENTITY_TTL));
                        out.extend_from_slice(&v.0);
                    }
                    Reply::Bulk(out)
                }
            }
        }

        fn set_nx(&mut self, key: &StoreKey, record: &Record, ttl: u64) -> Reply {
            let k = key_name(key);
            if self.data.contains_key(&k) {
                return Reply::Nil;
            }
            self.data.insert(k, (record.encode().to_vec(), ttl));
            Reply::Ok
        }

        fn run(&mut self, incoming: Incoming, now: u64, client: &Client) -> Evaluation {
            let s = signer();
            let (mut flow, mut step) = Flow::start(incoming, now, &POLICY, client);
            for _ in 0..10 {
                match step {
                    Step::Done(e) => return e,
                    Step::Send(cmd) => {
                        let reply = self.exec(&cmd);
                        step = flow.on_reply(reply, &s, client);
                    }
                }
            }
            panic!("flow did not finish");
        }
    }

    const POLICY: Policy =
        Policy { idle: 30, rolling: 60, absolute: 300, check_ip: true, check_user_agent: true };
    const ALICE: Client = Client::hashed(1, 2);

    fn signer() -> Signer {
        Signer::new(b"a secret that is long enough......")
    }

    #[test]
    fn one_round_trip_for_new_and_returning() {
        let mut r = FakeRedis::default();
        let e = r.run(Incoming::Absent, 1000, &ALICE);
        assert_eq!((e.status, e.set_cookie, r.commands), (Status::New, true, 1));
        let id = e.id.unwrap();
        let e = r.run(Incoming::Verified(id), 1000, &ALICE);
        assert_eq!((e.status, e.set_cookie, r.commands), (Status::Valid, false, 2));
        // Keys are hashes, every one with a TTL.
        for (k, (_, ttl)) in &r.data {
            assert!(k.starts_with(b"ngx_sessions:"));
            assert!(!k.windows(22).any(|w| w == id.encode()));
            assert!(*ttl > 0 && *ttl <= 30);
        }
    }

    #[test]
    fn touch_renew_and_grace() {
        let mut r = FakeRedis::default();
        let id = r.run(Incoming::Absent, 1000, &ALICE).id.unwrap();
        assert_eq!(r.run(Incoming::Verified(id), 1029, &ALICE).status, Status::Valid);
        assert_eq!(r.run(Incoming::Verified(id), 1058, &ALICE).status, Status::Valid);
        let e = r.run(Incoming::Verified(id), 1060, &ALICE);
        assert_eq!((e.status, e.renewal), (Status::Renewed, true));
        let next = e.id.unwrap();
        assert_eq!(next, signer().successor(&id));
        let e = r.run(Incoming::Verified(id), 1061, &ALICE);
        assert_eq!((e.status, e.id, e.renewal), (Status::Renewed, Some(next), false));
        assert_eq!(r.run(Incoming::Verified(next), 1062, &ALICE).status, Status::Valid);
        assert_eq!(r.run(Incoming::Verified(id), 1075, &ALICE).status, Status::Invalid);
    }

    #[test]
    fn racing_renewals_make_one_successor() {
        // Two instances read the same record, then both try to renew it.
        let mut r = FakeRedis::default();
        let id = r.run(Incoming::Absent, 1000, &ALICE).id.unwrap();
        r.run(Incoming::Verified(id), 1029, &ALICE);
        r.run(Incoming::Verified(id), 1058, &ALICE);
        let s = signer();
        let (mut a, sa) = Flow::start(Incoming::Verified(id), 1060, &POLICY, &ALICE);
        let (mut b, sb) = Flow::start(Incoming::Verified(id), 1060, &POLICY, &ALICE);
        let (Step::Send(ga), Step::Send(gb)) = (sa, sb) else { panic!() };
        let (ra, rb) = (r.exec(&ga), r.exec(&gb));
        let (Step::Send(ca), Step::Send(cb)) =
            (a.on_reply(ra, &s, &ALICE), b.on_reply(rb, &s, &ALICE))
        else {
            panic!()
        };
        let mut finish = |flow: &mut Flow, cmd: Command| {
            let mut step = flow.on_reply(r.exec(&cmd), &s, &ALICE);
            for _ in 0..5 {
                match step {
                    Step::Done(e) => return e,
                    Step::Send(c) => step = flow.on_reply(r.exec(&c), &s, &ALICE),
                }
            }
            panic!("flow did not finish");
        };
        let ea = finish(&mut a, ca);
        let eb = finish(&mut b, cb);
        assert_eq!(ea.status, Status::Renewed);
        assert_eq!(eb.status, Status::Renewed);
        assert_eq!(ea.id, eb.id);
        assert!(ea.renewal != eb.renewal, "exactly one of them renewed");
    }

    #[test]
    fn mismatch_destroys_everywhere_and_errors_keep_cookie() {
        let mut r = FakeRedis::default();
        let id = r.run(Incoming::Absent, 1000, &ALICE).id.unwrap();
        let eve = Client::hashed(9, 2);
        let e = r.run(Incoming::Verified(id), 1001, &eve);
        assert_eq!(e.status, Status::Mismatch);
        assert_ne!(e.id, Some(id));
        assert_eq!(r.run(Incoming::Verified(id), 1002, &ALICE).status, Status::Invalid);

        let (mut flow, _) = Flow::start(Incoming::Verified(id), 1003, &POLICY, &ALICE);
        let e = match flow.on_reply(Reply::Error("OOM".into()), &signer(), &ALICE) {
            Step::Done(e) => e,
            s => panic!("{s:?}"),
        };
        assert_eq!(e, Evaluation::store_error(Some(id)));
    }

    #[test]
    fn destroyed_successor_never_comes_back_through_the_old_id() {
        let mut r = FakeRedis::default();
        let id = r.run(Incoming::Absent, 1000, &ALICE).id.unwrap();
        r.run(Incoming::Verified(id), 1029, &ALICE);
        r.run(Incoming::Verified(id), 1058, &ALICE);
        let next = r.run(Incoming::Verified(id), 1060, &ALICE).id.unwrap();
        let eve = Client::hashed(9, 2);
        assert_eq!(r.run(Incoming::Verified(next), 1061, &eve).status, Status::Mismatch);
        let e = r.run(Incoming::Verified(id), 1062, &ALICE);
        assert_eq!(e.status, Status::Invalid);
        assert_ne!(e.id, Some(next));
    }

    #[test]
    fn mismatch_of_an_old_id_within_its_grace_destroys_the_successor_too() {
        let mut r = FakeRedis::default();
        let id = r.run(Incoming::Absent, 1000, &ALICE).id.unwrap();
        r.run(Incoming::Verified(id), 1029, &ALICE);
        r.run(Incoming::Verified(id), 1058, &ALICE);
        let next = r.run(Incoming::Verified(id), 1060, &ALICE).id.unwrap();
        let eve = Client::hashed(9, 2);
        let commands = r.commands;
        let e = r.run(Incoming::Verified(id), 1062, &eve);
        assert_eq!(e.status, Status::Mismatch);
        assert_eq!(r.commands, commands + 2, "GET, then one script");
        assert_eq!(r.data.len(), 1, "only the session handed to eve is left");
        assert_eq!(r.run(Incoming::Verified(next), 1063, &ALICE).status, Status::Invalid);
        assert_eq!(r.run(Incoming::Verified(id), 1064, &ALICE).status, Status::Invalid);
    }

    #[test]
    fn replace_names_the_successor_as_a_key() {
        let (old, succ, new) = (StoreKey([1; 16]), StoreKey([2; 16]), StoreKey([3; 16]));
        let record = Record::default();
        let with =
            Command::Replace { old, successor: Some(succ), key: new, record, ttl: 5 }.encode();
        let without = Command::Replace { old, successor: None, key: new, record, ttl: 5 }.encode();
        let text = |c: &[u8]| String::from_utf8_lossy(c).into_owned();
        assert!(text(&with).starts_with("*8\r\n"), "{}", text(&with));
        assert!(text(&with).contains("$1\r\n3\r\n"), "3 keys: {}", text(&with));
        assert!(text(&with).contains(&text(&key_name(&succ))));
        assert!(text(&without).starts_with("*7\r\n") && text(&without).contains("$1\r\n2\r\n"));
    }

    #[test]
    fn foreign_values_are_replaced() {
        let mut r = FakeRedis::default();
        let id = SessionId::random();
        r.data.insert(key_name(&id.store_key()), (b"garbage".to_vec(), 10));
        let e = r.run(Incoming::Verified(id), 1000, &ALICE);
        assert_eq!(e.status, Status::Invalid);
        assert!(!r.data.contains_key(&key_name(&id.store_key())));
    }

    #[test]
    fn resp_parsing() {
        assert_eq!(parse_reply(b""), Parsed::Incomplete);
        assert_eq!(parse_reply(b"$5\r\nhel"), Parsed::Incomplete);
        assert_eq!(
            parse_reply(b"$5\r\nhello\r\n"),
            Parsed::Complete(Reply::Bulk(b"hello".to_vec()))
        );
        assert_eq!(parse_reply(b"$-1\r\n"), Parsed::Complete(Reply::Nil));
        assert_eq!(parse_reply(b"+OK\r\n"), Parsed::Complete(Reply::Ok));
        assert_eq!(parse_reply(b":1\r\n"), Parsed::Complete(Reply::Int(1)));
        assert!(
            matches!(parse_reply(b"-NOAUTH Authentication required.\r\n"), Parsed::Complete(Reply::Error(e)) if e.contains("NOAUTH"))
        );
        assert_eq!(parse_reply(b"!!garbage\r\n"), Parsed::Garbage);
    }

    #[test]
    fn pipelined_replies_are_split() {
        let buf = b"+OK\r\n$5\r\nhello\r\n:7\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR x\r\n$3\r\nab";
        let mut at = 0;
        let mut got = Vec::new();
        loop {
            match parse_reply_len(&buf[at..]) {
                (Parsed::Complete(r), n) => {
                    assert!(n > 0);
                    got.push(r);
                    at += n;
                }
                (Parsed::Incomplete, 0) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.len(), 6);
        assert_eq!(got[1], Reply::Bulk(b"hello".to_vec()));
        assert_eq!(got[3], Reply::Nil);
        assert!(matches!(&got[5], Reply::Error(e) if e.contains("ERR")));
        assert_eq!(&buf[at..], b"$3\r\nab");
        // a bulk string whose payload holds CRLF and looks like a reply
        assert_eq!(parse_reply_len(b"$5\r\n+OK\r\n\r\n:1\r\n").1, 11);
        assert_eq!(parse_reply_len(b"").0, Parsed::Incomplete);
        assert_eq!(parse_reply_len(b"$5\r\nhel").0, Parsed::Incomplete);
        assert_eq!(parse_reply_len(b"*3\r\n:1\r\n").0, Parsed::Incomplete);
        assert_eq!(parse_reply_len(b"!!garbage\r\n").0, Parsed::Garbage);
        assert_eq!(parse_reply_len(b"?\r\n").0, Parsed::Garbage);
        assert_eq!(parse_reply_len(b"$x\r\n").0, Parsed::Garbage);
        assert_eq!(parse_reply_len(&b"*1\r\n".repeat(20)).0, Parsed::Garbage);
    }

    #[test]
    fn encodes_resp() {
        let c = Command::Get { key: StoreKey([0xab; 16]) }.encode();
        assert!(c.starts_with(b"*2\r\n$3\r\nGET\r\n$45\r\nngx_sessions:abab"));
        let setup = setup_commands(Some("bob"), Some("pw"), 2);
        assert_eq!(setup.len(), 2);
        assert!(setup[0].starts_with(b"*3\r\n$4\r\nAUTH"));
        assert!(setup_commands(None, None, 0).is_empty());
    }

    #[test]
    fn shared_values_first_proposal_wins() {
        let mut r = FakeRedis::default();
        let (k1, k2) = (BindingKey([1; 16]), BindingKey([2; 16]));
        let Reply::Bulk(v) = r.exec(&Command::Shared { binding_key: k1, identity: None }) else {
            panic!()
        };
        assert_eq!(parse_shared(&v), Some((k1, None)));
        let ident = [b'n'; IDENTITY_LEN];
        let cmd = Command::Shared { binding_key: k2, identity: Some(ident) };
        let Reply::Bulk(v) = r.exec(&cmd) else { panic!() };
        assert_eq!(parse_shared(&v), Some((k1, Some(([b'n'; 32], [b'n'; 16])))));
        let text = String::from_utf8_lossy(&cmd.encode()).into_owned();
        assert!(text.contains("$1\r\n2\r\n$24\r\nngx_sessions:binding_key\r\n"), "{text}");
        assert!(text.contains(IDENTITY_KEY));
        assert_eq!(parse_shared(&[0; 15]), None);
        assert_eq!(parse_shared(&[0; 17]), None);
        assert_eq!(parse_shared(&[b';'; 64]), None, "a cookie name that is no token");
    }

    #[test]
    fn legacy_records_are_read_and_rewritten_keyed() {
        let key = BindingKey([7; 16]);
        let alice = Client::new(&key, b"192.0.2.1", b"agent");
        let mut r = FakeRedis::default();
        let id = SessionId::random();
        let legacy = Record {
            hashes: crate::session::BindingHashes::Legacy,
            ..Record::new(1000, &Client::new(&BindingKey([0; 16]), b"", b""))
        };
        let (ip, ua) = crate::session::legacy_hashes(b"192.0.2.1", b"agent");
        let legacy = Record { ip, user_agent: ua, ..legacy };
        r.data.insert(key_name(&id.store_key()), (legacy.encode().to_vec(), 30));
        let run = |r: &mut FakeRedis, now: u64, client: &Client| {
            let s = signer();
            let (mut flow, mut step) = Flow::start(Incoming::Verified(id), now, &POLICY, client);
            for _ in 0..10 {
                match step {
                    Step::Done(e) => return e,
                    Step::Send(cmd) => step = flow.on_reply(r.exec(&cmd), &s, client),
                }
            }
            panic!("flow did not finish");
        };
        assert_eq!(run(&mut r, 1000, &alice).status, Status::Valid);
        assert_eq!(r.data[&key_name(&id.store_key())].0[0], 1, "no write, still legacy");
        assert_eq!(run(&mut r, 1029, &alice).status, Status::Valid);
        let stored = Record::decode(&r.data[&key_name(&id.store_key())].0).unwrap();
        assert_eq!(stored.hashes, crate::session::BindingHashes::Keyed, "touched: rewritten");
        assert_eq!((stored.ip, stored.user_agent), (alice.ip, alice.user_agent));
        assert_eq!(run(&mut r, 1030, &alice).status, Status::Valid);
        let eve = Client::new(&key, b"192.0.2.2", b"agent");
        assert_eq!(run(&mut r, 1031, &eve).status, Status::Mismatch);
    }

    #[test]
    fn identity_values() {
        let mut v = [b'a'; IDENTITY_LEN];
        assert!(parse_identity(&v).is_some());
        v[40] = b';';
        assert!(parse_identity(&v).is_none());
        assert!(parse_identity(b"short").is_none());
    }
}

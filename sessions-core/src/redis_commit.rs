//! What a response does to its session with Redis, as a state machine that emits one
//! command and consumes its reply: the data changes (`sessions_set`), an explicit renewal
//! (`sessions_renew`) and destruction (`sessions_destroy`), applied when the response
//! header goes out. Pure: no I/O, time passed in.
//!
//! It starts from the session the request's [`crate::redis_flow::Flow`] decided on (its key,
//! record, data and the exact value Redis holds). One script does everything in one round
//! trip, atomically: a compare-and-set against that value (a concurrent writer makes it
//! answer with the current value, on which the changes are merged again, a few times at
//! most), the subject sets following the session, and the destruction of the subject's
//! other sessions through its set (no `KEYS`/`SCAN`). A session that is gone meanwhile is
//! never brought back ([`Refused::Gone`]).

use crate::cookie::{SessionId, StoreKey};
use crate::data::{self, Actions, Applied, CookieChange, Data, Destroy, Refused};
use crate::redis_flow::{subject_set_ttl, Reply, Stored};
use crate::redis_record::{self, session_key, subject_set_key};
use crate::session::{Policy, Record};

/// Merges tried against concurrent writers before the change is given up (`Store`).
const MAX_ATTEMPTS: u8 = 4;

/// `KEYS[1]`: the session's key; `KEYS[2]`: its key after the response (a new one when
/// renewed). `ARGV`: mode (`w`: write, `d`: destroy this), expected value, new value, TTL
/// (`0`: keep), subject set to leave, subject set to join, that set's TTL, subject set
/// whose sessions are destroyed (but this one, when writing). Replies: the number of other
/// sessions destroyed; the current value when it is not the expected one; nil when the
/// session is gone.
const SCRIPT_COMMIT: &str = "local k1, k2 = KEYS[1], KEYS[2] \
if ARGV[1] == 'w' then \
local cur = redis.call('GET', k1) \
if cur ~= ARGV[2] then return cur end \
if k2 ~= k1 then redis.call('DEL', k1) end \
if ARGV[4] == '0' then redis.call('SET', k2, ARGV[3], 'KEEPTTL') \
else redis.call('SET', k2, ARGV[3], 'EX', ARGV[4]) end \
else redis.call('DEL', k1) k2 = k1 end \
if ARGV[5] ~= '' then redis.call('SREM', ARGV[5], k1) end \
if ARGV[6] ~= '' then redis.call('SADD', ARGV[6], k2) \
if redis.call('TTL', ARGV[6]) < tonumber(ARGV[7]) then redis.call('EXPIRE', ARGV[6], ARGV[7]) end end \
local n = 0 \
if ARGV[8] ~= '' then \
for _, m in ipairs(redis.call('SMEMBERS', ARGV[8])) do \
if m ~= k1 and m ~= k2 then n = n + redis.call('DEL', m) redis.call('SREM', ARGV[8], m) end \
end end \
return n";

/// The one command of a commit attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Compare-and-set of `key` (renamed to `new_key` when renewed), with the subject sets.
    Write {
        key: StoreKey,
        new_key: StoreKey,
        expected: Vec<u8>,
        value: Vec<u8>,
        /// `None`: the key keeps its TTL.
        ttl: Option<u64>,
        sets: Sets,
    },
    /// Deletes `key` (whatever its value), with the subject sets.
    Destroy { key: StoreKey, sets: Sets },
}

/// What a commit does to subject sets (each a [`data::subject_key`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sets {
    /// The set the session's old key leaves.
    pub leave: Option<[u8; 16]>,
    /// The set the session's new key joins (and its TTL, never shortened).
    pub join: Option<([u8; 16], u64)>,
    /// The set whose other sessions are destroyed.
    pub destroy: Option<[u8; 16]>,
}

impl Command {
    /// RESP bytes of the command.
    pub fn encode(&self) -> Vec<u8> {
        let set = |s: Option<[u8; 16]>| s.map(|s| subject_set_key(&s)).unwrap_or_default();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT_COMMIT).arg(2);
        let sets = match self {
            Command::Write { key, new_key, expected, value, ttl, sets } => {
                cmd.arg(session_key(key)).arg(session_key(new_key));
                cmd.arg("w").arg(&expected[..]).arg(&value[..]).arg(ttl.unwrap_or(0));
                sets
            }
            Command::Destroy { key, sets } => {
                cmd.arg(session_key(key)).arg(session_key(key));
                cmd.arg("d").arg("").arg("").arg(0);
                sets
            }
        };
        cmd.arg(set(sets.leave))
            .arg(set(sets.join.map(|(s, _)| s)))
            .arg(sets.join.map(|(_, t)| t).unwrap_or(0))
            .arg(set(sets.destroy));
        cmd.get_packed_command()
    }
}

/// What the glue does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Send(Command),
    Done(Applied),
}

/// The write in flight: what the session becomes if it succeeds.
#[derive(Clone, Debug)]
struct Pending {
    id: SessionId,
    data: Data,
    destroyed_this: bool,
}

/// One response's commit.
#[derive(Clone, Debug)]
pub struct Commit {
    actions: Actions,
    limit: usize,
    now: u64,
    policy: Policy,
    /// The session as the request saw it: the answer when nothing could be done.
    original: Stored,
    /// The ID an explicit renewal gives (drawn once: every attempt writes the same).
    renewed: Option<SessionId>,
    /// Why the sets were not applied (the data would have been too large).
    refused: Option<Refused>,
    pending: Option<Pending>,
    attempts: u8,
}

impl Commit {
    /// Starts applying `actions` to the session the request decided on. `limit` is
    /// `sessions_data_size`.
    pub fn start(
        stored: &Stored,
        actions: &Actions,
        limit: usize,
        now: u64,
        policy: &Policy,
    ) -> (Commit, Step) {
        let mut commit = Commit {
            actions: actions.clone(),
            limit,
            now,
            policy: *policy,
            original: stored.clone(),
            renewed: actions.renew.then(SessionId::random),
            refused: None,
            pending: None,
            attempts: 0,
        };
        let step = commit.attempt(stored.record, stored.data.clone(), stored.value.clone());
        (commit, step)
    }

    /// The outcome when Redis could not be used: nothing changed.
    pub fn failed(&mut self) -> Applied {
        self.pending = None;
        Applied {
            id: Some(self.original.id),
            data: self.original.data.clone(),
            cookie: CookieChange::Keep,
            destroyed_this: false,
            destroyed_others: 0,
            refused: Some(Refused::Store),
        }
    }

    fn unchanged(&self, refused: Option<Refused>) -> Applied {
        Applied {
            id: Some(self.original.id),
            data: self.original.data.clone(),
            cookie: CookieChange::Keep,
            destroyed_this: false,
            destroyed_others: 0,
            refused,
        }
    }

    /// One attempt against the session's current state (`record`, `data`, exactly `value`).
    fn attempt(&mut self, record: Record, current: Data, value: Vec<u8>) -> Step {
        self.attempts += 1;
        if self.attempts > MAX_ATTEMPTS {
            return Step::Done(self.failed());
        }
        let key = self.original.id.store_key();
        // The sets first; too large refuses them all, renewal and destruction still go.
        let data = match current.apply(&self.actions.changes, self.limit) {
            Ok(d) => {
                self.refused = None;
                d
            }
            Err(too_large) => {
                self.refused = Some(Refused::TooLarge(too_large));
                current.clone()
            }
        };
        let old_subject = current.subject().map(data::subject_key);
        let new_subject = data.subject().map(data::subject_key);
        if let Some(Destroy::This | Destroy::All) = self.actions.destroy {
            let destroy =
                (self.actions.destroy == Some(Destroy::All)).then_some(new_subject).flatten();
            let sets = Sets { leave: old_subject, join: None, destroy };
            self.pending =
                Some(Pending { id: self.original.id, data: Data::new(), destroyed_this: true });
            return Step::Send(Command::Destroy { key, sets });
        }
        if self.renewed.is_none() && self.actions.destroy.is_none() && data == current {
            // Nothing to write (no change, or every change refused).
            return Step::Done(self.unchanged(self.refused));
        }
        let (new_id, new_record, ttl) = match self.renewed {
            Some(new_id) => {
                let succ = record.successor(self.now);
                let ttl = succ.expires_at(&self.policy).saturating_sub(self.now).max(1);
                (new_id, succ, Some(ttl))
            }
            None => (self.original.id, record, None),
        };
        let sets = Sets {
            leave: old_subject.filter(|&s| Some(s) != new_subject || self.renewed.is_some()),
            join: new_subject.map(|s| (s, subject_set_ttl(&self.policy))),
            destroy: (self.actions.destroy == Some(Destroy::Others))
                .then_some(new_subject)
                .flatten(),
        };
        let new_value = redis_record::encode(&new_record, &data);
        self.pending = Some(Pending { id: new_id, data, destroyed_this: false });
        Step::Send(Command::Write {
            key,
            new_key: new_id.store_key(),
            expected: value,
            value: new_value,
            ttl,
            sets,
        })
    }

    /// Feeds the reply to the command sent.
    pub fn on_reply(&mut self, reply: Reply) -> Step {
        let Some(pending) = self.pending.take() else { return Step::Done(self.failed()) };
        match reply {
            Reply::Int(destroyed_others) => {
                let cookie = if pending.destroyed_this {
                    CookieChange::Expire
                } else if self.renewed.is_some() {
                    CookieChange::Set(pending.id)
                } else {
                    CookieChange::Keep
                };
                Step::Done(Applied {
                    id: (!pending.destroyed_this).then_some(pending.id),
                    data: pending.data,
                    cookie,
                    destroyed_this: pending.destroyed_this,
                    destroyed_others: usize::try_from(destroyed_others).unwrap_or(0),
                    refused: self.refused,
                })
            }
            // Someone wrote the session meanwhile: merge again on what is there now.
            Reply::Bulk(value) => match redis_record::decode(&value) {
                // Renewed by a rolling renewal meanwhile: the session lives on under its
                // successor, which this request does not know; not written here.
                Some((record, _)) if record.renewed_at != 0 => {
                    Step::Done(self.unchanged(Some(Refused::Gone)))
                }
                Some((record, data)) => self.attempt(record, data, value),
                None => Step::Done(self.unchanged(Some(Refused::Gone))),
            },
            Reply::Nil => Step::Done(self.unchanged(Some(Refused::Gone))),
            Reply::Ok | Reply::Error(_) => Step::Done(self.failed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Incoming;
    use crate::data::{Changes, TooLarge};
    use crate::redis_flow::tests::{put_data, user_data, FakeRedis, ALICE, POLICY};
    use crate::session::Status;

    impl FakeRedis {
        /// Runs the commit script as Redis would.
        fn commit(&mut self, cmd: &Command) -> Reply {
            self.commands += 1;
            let (k1, k2, sets) = match cmd {
                Command::Write { key, new_key, expected, value, ttl, sets } => {
                    let (k1, k2) = (session_key(key), session_key(new_key));
                    let Some((cur, cur_ttl)) = self.data.get(&k1).cloned() else {
                        return Reply::Nil;
                    };
                    if cur != *expected {
                        return Reply::Bulk(cur);
                    }
                    self.data.remove(&k1);
                    self.data.insert(k2.clone(), (value.clone(), ttl.unwrap_or(cur_ttl)));
                    (k1, k2, sets)
                }
                Command::Destroy { key, sets } => {
                    let k = session_key(key);
                    self.data.remove(&k);
                    (k.clone(), k, sets)
                }
            };
            if let Some(s) = sets.leave {
                self.set(&s, 0).remove(&k1);
            }
            if let Some((s, ttl)) = sets.join {
                self.set(&s, ttl).insert(k2.clone());
            }
            let mut n = 0;
            if let Some(s) = sets.destroy {
                let members: Vec<_> = self.set(&s, 0).iter().cloned().collect();
                for m in members.into_iter().filter(|m| *m != k1 && *m != k2) {
                    n += i64::from(self.data.remove(&m).is_some());
                    self.set(&s, 0).remove(&m);
                }
            }
            Reply::Int(n)
        }

        fn apply(&mut self, stored: &Stored, actions: &Actions, now: u64) -> Applied {
            let (mut c, mut step) = Commit::start(stored, actions, 1024, now, &POLICY);
            for _ in 0..10 {
                match step {
                    Step::Done(a) => return a,
                    Step::Send(cmd) => step = c.on_reply(self.commit(&cmd)),
                }
            }
            panic!("commit did not finish");
        }

        /// A new session of ALICE, as its first request stored it.
        fn session(&mut self, now: u64) -> Stored {
            self.run_flow(Incoming::Absent, now, &ALICE).1.unwrap()
        }

        fn returning(&mut self, id: SessionId, now: u64) -> (Status, Option<Stored>) {
            let (e, s) = self.run_flow(Incoming::Verified(id), now, &ALICE);
            (e.status, s)
        }
    }

    fn sets(pairs: &[(&str, &str)]) -> Actions {
        let mut changes = Changes::new();
        for (k, v) in pairs {
            changes.set(k.as_bytes(), v.as_bytes());
        }
        Actions { changes, renew: false, destroy: None }
    }

    fn login(user: &str) -> Actions {
        Actions { renew: true, ..sets(&[("user", user), ("subject", user)]) }
    }

    fn destroy(d: Destroy) -> Actions {
        Actions { destroy: Some(d), ..Actions::default() }
    }

    #[test]
    fn sets_are_stored_in_one_round_trip_and_read_back() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let commands = r.commands;
        let a = r.apply(&s, &sets(&[("human", "1")]), 1000);
        assert_eq!(r.commands, commands + 1);
        assert_eq!((a.id, a.cookie, a.refused), (Some(s.id), CookieChange::Keep, None));
        assert_eq!(a.data.get(b"human"), Some(&b"1"[..]));
        let (st, back) = r.returning(s.id, 1000);
        assert_eq!((st, back.unwrap().data), (Status::Valid, a.data.clone()));
        // The same value again: nothing to write.
        let (_, s) = r.returning(s.id, 1000);
        let commands = r.commands;
        assert_eq!(r.apply(&s.unwrap(), &sets(&[("human", "1")]), 1000).refused, None);
        assert_eq!(r.commands, commands);
        // The key keeps its TTL.
        assert_eq!(r.data[&session_key(&a.id.unwrap().store_key())].1, 30);
    }

    #[test]
    fn too_large_refuses_the_sets_but_renews() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let big = "x".repeat(2000);
        let a = r.apply(&s, &Actions { renew: true, ..sets(&[("user", &big)]) }, 1000);
        assert!(matches!(a.refused, Some(Refused::TooLarge(TooLarge { limit: 1024, .. }))));
        let new = a.id.unwrap();
        assert_ne!(new, s.id);
        assert_eq!((a.cookie, a.data.is_empty()), (CookieChange::Set(new), true));
        let commands = r.commands;
        let s = r.returning(new, 1000).1.unwrap();
        let a = r.apply(&s, &sets(&[("user", &big)]), 1000);
        assert!(matches!(a.refused, Some(Refused::TooLarge(_))));
        assert_eq!(r.commands, commands + 1, "the GET only: nothing to write");
    }

    #[test]
    fn renew_kills_the_old_id_at_once_and_keeps_data_and_age() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let a = r.apply(&s, &login("alice"), 1010);
        let new = a.id.unwrap();
        assert_eq!(a.cookie, CookieChange::Set(new));
        assert_ne!(new, s.id);
        assert_ne!(new, crate::redis_flow::tests::signer().successor(&s.id), "random, not derived");
        assert_eq!(r.returning(s.id, 1011).0, Status::Invalid, "no grace");
        let (st, back) = r.returning(new, 1011);
        let back = back.unwrap();
        assert_eq!((st, back.data.get(b"user")), (Status::Valid, Some(&b"alice"[..])));
        assert_eq!((back.record.created, back.record.issued), (1000, 1010));
        let set = &r.sets[&subject_set_key(&data::subject_key(b"alice"))].0;
        assert_eq!(set.iter().collect::<Vec<_>>(), [&session_key(&new.store_key())]);
        // The new key's TTL follows its record (idle 30 from 1010).
        assert_eq!(r.data[&session_key(&new.store_key())].1, 30);
    }

    #[test]
    fn a_gone_session_is_not_brought_back() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        r.data.clear();
        let a = r.apply(&s, &Actions { renew: true, ..sets(&[("user", "x")]) }, 1000);
        assert_eq!(a, Applied { refused: Some(Refused::Gone), ..r_unchanged(&s) });
        assert!(r.data.is_empty());
        // A foreign value under the key is no session either.
        r.data.insert(session_key(&s.id.store_key()), (b"foreign".to_vec(), 5));
        assert_eq!(r.apply(&s, &sets(&[("user", "x")]), 1000).refused, Some(Refused::Gone));
    }

    fn r_unchanged(s: &Stored) -> Applied {
        Applied {
            id: Some(s.id),
            data: s.data.clone(),
            cookie: CookieChange::Keep,
            destroyed_this: false,
            destroyed_others: 0,
            refused: None,
        }
    }

    #[test]
    fn concurrent_writers_are_merged() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        // Another request (another instance) sets `a` after this one read the session.
        let other = r.apply(&s, &sets(&[("a", "1")]), 1000);
        assert_eq!(other.refused, None);
        let commands = r.commands;
        let a = r.apply(&s, &sets(&[("b", "2")]), 1000);
        assert_eq!(r.commands, commands + 2, "conflict, then merged");
        assert_eq!((a.data.get(b"a"), a.data.get(b"b")), (Some(&b"1"[..]), Some(&b"2"[..])));
        assert_eq!(r.data_of(&s.id), Some(a.data));
        // A touch meanwhile (the record changed): merged as well.
        let (_, touched) = r.returning(s.id, 1005);
        assert_ne!(touched.unwrap().value, s.value);
        assert_eq!(r.apply(&s, &sets(&[("c", "3")]), 1005).data.len(), 3 * 5);
    }

    #[test]
    fn writers_that_never_stop_give_up_with_store() {
        let s = FakeRedis::default().session(1000);
        let (mut c, mut step) = Commit::start(&s, &sets(&[("a", "1")]), 1024, 1000, &POLICY);
        for i in 0.. {
            match step {
                Step::Send(_) => {
                    let other = Record { last_seen: 1000 + i, ..s.record };
                    step = c.on_reply(Reply::Bulk(redis_record::encode(&other, &s.data)));
                }
                Step::Done(a) => {
                    assert_eq!((i, a.refused), (MAX_ATTEMPTS as u64, Some(Refused::Store)));
                    break;
                }
            }
        }
        let (mut c, _) = Commit::start(&s, &sets(&[("a", "1")]), 1024, 1000, &POLICY);
        assert_eq!(c.on_reply(Reply::Error("BUSY".into())), Step::Done(c.failed()));
    }

    #[test]
    fn a_write_racing_a_rolling_renewal_is_refused() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        r.returning(s.id, 1029);
        r.returning(s.id, 1058);
        assert_eq!(r.returning(s.id, 1060).0, Status::Renewed);
        assert_eq!(r.apply(&s, &sets(&[("a", "1")]), 1060).refused, Some(Refused::Gone));
    }

    #[test]
    fn subject_moves_with_the_subject_key() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let a = r.apply(&s, &sets(&[("subject", "alice")]), 1000);
        let (alice, bob) = (data::subject_key(b"alice"), data::subject_key(b"bob"));
        let key = session_key(&s.id.store_key());
        assert!(r.sets[&subject_set_key(&alice)].0.contains(&key));
        assert_eq!(r.sets[&subject_set_key(&alice)].1, subject_set_ttl(&POLICY));
        let s = Stored { data: a.data, ..r.returning(s.id, 1000).1.unwrap() };
        r.apply(&s, &sets(&[("subject", "bob")]), 1000);
        assert!(r.sets[&subject_set_key(&alice)].0.is_empty());
        assert!(r.sets[&subject_set_key(&bob)].0.contains(&key));
        let s = r.returning(s.id, 1000).1.unwrap();
        r.apply(&s, &sets(&[("subject", "")]), 1000);
        assert!(r.sets[&subject_set_key(&bob)].0.is_empty());
    }

    #[test]
    fn destroy_this_others_all() {
        let mut r = FakeRedis::default();
        // Three sessions of alice, one of bob.
        let mut alice = Vec::new();
        for _ in 0..3 {
            let s = r.session(1000);
            alice.push(r.apply(&s, &login("alice"), 1000).id.unwrap());
        }
        let s = r.session(1000);
        let bob = r.apply(&s, &login("bob"), 1000).id.unwrap();

        let s0 = r.returning(alice[0], 1000).1.unwrap();
        let a = r.apply(&s0, &destroy(Destroy::Others), 1000);
        assert_eq!((a.id, a.cookie, a.destroyed_this), (Some(alice[0]), CookieChange::Keep, false));
        assert_eq!(a.destroyed_others, 2);
        assert_eq!(a.data.get(b"user"), Some(&b"alice"[..]));
        assert_eq!(r.returning(alice[0], 1000).0, Status::Valid);
        assert_eq!(r.returning(alice[1], 1000).0, Status::Invalid);
        assert_eq!(r.returning(bob, 1000).0, Status::Valid);

        let s = r.returning(bob, 1000).1.unwrap();
        let a = r.apply(&s, &destroy(Destroy::This), 1000);
        assert_eq!(
            (a.id, a.cookie, a.destroyed_this, a.destroyed_others),
            (None, CookieChange::Expire, true, 0)
        );
        assert!(a.data.is_empty());
        assert_eq!(r.returning(bob, 1000).0, Status::Invalid);
        assert!(r.sets[&subject_set_key(&data::subject_key(b"bob"))].0.is_empty());

        // All: from a new session of alice, whichever it is.
        let s = r.session(1000);
        let other = r.apply(&s, &login("alice"), 1000).id.unwrap();
        let s0 = r.returning(alice[0], 1000).1.unwrap();
        let a = r.apply(&s0, &destroy(Destroy::All), 1000);
        assert_eq!(
            (a.destroyed_this, a.destroyed_others, a.cookie),
            (true, 1, CookieChange::Expire)
        );
        assert_eq!(r.returning(other, 1000).0, Status::Invalid);
        assert_eq!(r.returning(alice[0], 1000).0, Status::Invalid);
    }

    #[test]
    fn login_then_logout_everywhere_in_one_response() {
        // Sets first, then renew, then destroy: `all` reaches the subject just set.
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let first = r.apply(&s, &login("carol"), 1000).id.unwrap();
        let s = r.session(1000);
        let a = r.apply(&s, &Actions { destroy: Some(Destroy::All), ..login("carol") }, 1000);
        assert_eq!((a.destroyed_this, a.destroyed_others), (true, 1));
        assert_eq!(r.returning(first, 1000).0, Status::Invalid);
    }

    #[test]
    fn renewal_keeps_the_subject_set_in_step() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        let a = r.apply(&s, &login("dave"), 1000);
        let s = r.returning(a.id.unwrap(), 1000).1.unwrap();
        put_data(&mut r, &s.id, &user_data("dave"));
        let s = r.returning(s.id, 1000).1.unwrap();
        let b = r.apply(&s, &Actions { renew: true, ..Actions::default() }, 1001);
        let set = &r.sets[&subject_set_key(&data::subject_key(b"dave"))].0;
        assert_eq!(set.iter().collect::<Vec<_>>(), [&session_key(&b.id.unwrap().store_key())]);
    }

    #[test]
    fn commands_are_one_eval() {
        let cmd = Command::Destroy { key: StoreKey([1; 16]), sets: Sets::default() }.encode();
        let text = String::from_utf8_lossy(&cmd).into_owned();
        assert!(text.starts_with("*13\r\n$4\r\nEVAL\r\n"), "{text}");
        let s = data::subject_key(b"x");
        let cmd = Command::Write {
            key: StoreKey([1; 16]),
            new_key: StoreKey([2; 16]),
            expected: vec![1],
            value: vec![2],
            ttl: None,
            sets: Sets { leave: Some(s), join: Some((s, 300)), destroy: None },
        };
        let text = String::from_utf8_lossy(&cmd.encode()).into_owned();
        assert!(text.contains(&String::from_utf8_lossy(&subject_set_key(&s)).into_owned()));
        assert!(text.contains("$3\r\n300\r\n"));
    }
}

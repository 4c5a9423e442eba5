//! What a response does to its session with Redis, as a state machine that emits one
//! command and consumes its reply: the data changes (`sessions_set`), an explicit renewal
//! (`sessions_renew`) and destruction (`sessions_destroy`), applied when the response
//! header goes out. Pure: no I/O, time passed in.
//!
//! It starts from the session the request's [`crate::redis_flow::Flow`] decided on. One
//! script does everything in one round trip, atomically: the changes are merged into the
//! data Redis holds *now* (so concurrent writers of one session never conflict: each
//! change lands, the later one of the same key wins), under the size limit; the subject
//! sets follow the session; the subject's other sessions are destroyed through its set (no
//! `KEYS`/`SCAN`). A session renewed meanwhile by a rolling renewal (another request of the
//! same cookie) is written under its successor, where it lives on. A session that is gone
//! meanwhile is never written ([`Refused::Gone`]).

use crate::cookie::{SessionId, StoreKey};
use crate::data::{
    self, Actions, Applied, Changes, CookieChange, Data, Destroy, Refused, TooLarge,
};
use crate::redis_flow::{subject_set_ttl, Reply, Stored};
use crate::redis_record::{self, session_key, subject_set_key};
use crate::session::Policy;

/// `KEYS[1]`: the session's key; `KEYS[2]`: its key after the response (a new one when
/// renewed); `KEYS[3]`: the key of its rolling successor (`KEYS[1]` when unknown), where
/// the write goes when the session was renewed meanwhile. `ARGV`: mode (`w`: write, `d`: destroy this), the record to write instead of
/// the current one (renewal) or empty, TTL (`0`: keep), the data size limit, subject set to
/// leave, subject set to join, that set's TTL, subject set whose other sessions are
/// destroyed, then the changes as key, value pairs (empty value: remove). The value's layout
/// is `redis_record`'s (version 3; flag 2: renewed). Replies: nil when the session is gone
/// (or renewed twice, or not ours); else `"<destroyed> <refused size, 0 if none> <new value>"`.
const SCRIPT_COMMIT: &str = "local k1, k2 = KEYS[1], KEYS[2] \
local out, refused, n = '', 0, 0 \
if ARGV[1] == 'w' then \
local cur = redis.call('GET', k1) \
if cur and #cur >= 13 and cur:byte(1) == 3 and cur:byte(2) >= 2 and KEYS[3] ~= k1 then \
if k2 == k1 then k2 = KEYS[3] end \
k1 = KEYS[3] cur = redis.call('GET', k1) end \
if not cur or #cur < 13 or cur:byte(1) ~= 3 or cur:byte(2) >= 2 then return false end \
local pos = 3 \
for i = 1, 3 do while cur:byte(pos) >= 128 do pos = pos + 1 end pos = pos + 1 end \
pos = pos + 8 \
local rec, data, new = cur:sub(1, pos - 1), {}, {} \
while pos <= #cur do \
local kl = cur:byte(pos) \
local vl = cur:byte(pos + kl + 1) + 256 * cur:byte(pos + kl + 2) \
local k, v = cur:sub(pos + 1, pos + kl), cur:sub(pos + kl + 3, pos + kl + 2 + vl) \
data[k] = v new[k] = v \
pos = pos + kl + 3 + vl end \
for i = 9, #ARGV, 2 do if ARGV[i + 1] == '' then new[ARGV[i]] = nil else new[ARGV[i]] = ARGV[i + 1] end end \
local size, keys, parts = 0, {}, {} \
for k, v in pairs(new) do size = size + 3 + #k + #v end \
if size > tonumber(ARGV[4]) then refused = size new = data end \
for k in pairs(new) do keys[#keys + 1] = k end \
table.sort(keys) \
for _, k in ipairs(keys) do local v = new[k] \
parts[#parts + 1] = string.char(#k) .. k .. string.char(#v % 256, math.floor(#v / 256)) .. v end \
if ARGV[2] ~= '' then rec = ARGV[2] end \
out = rec .. table.concat(parts) \
if k2 ~= k1 then redis.call('DEL', k1) end \
if ARGV[3] == '0' then redis.call('SET', k2, out, 'KEEPTTL') \
else redis.call('SET', k2, out, 'EX', ARGV[3]) end \
else redis.call('DEL', k1) k2 = k1 end \
if ARGV[5] ~= '' then redis.call('SREM', ARGV[5], k1) end \
if ARGV[6] ~= '' then redis.call('SADD', ARGV[6], k2) \
if redis.call('TTL', ARGV[6]) < tonumber(ARGV[7]) then redis.call('EXPIRE', ARGV[6], ARGV[7]) end end \
if ARGV[8] ~= '' then \
for _, m in ipairs(redis.call('SMEMBERS', ARGV[8])) do \
if m ~= k1 and m ~= k2 then n = n + redis.call('DEL', m) redis.call('SREM', ARGV[8], m) end \
end end \
return n .. ' ' .. refused .. ' ' .. out";

/// The one command of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Merges `changes` into `key`'s data (renamed to `new_key` with `record` when
    /// renewed), with the subject sets.
    Write {
        key: StoreKey,
        new_key: StoreKey,
        /// The rolling successor of `key`, if it may have one.
        successor: Option<StoreKey>,
        /// The record part of the value to write instead of the current one (renewal).
        record: Option<Vec<u8>>,
        /// `None`: the key keeps its TTL.
        ttl: Option<u64>,
        /// `sessions_data_size`.
        limit: usize,
        changes: Changes,
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
        cmd.arg(SCRIPT_COMMIT).arg(3);
        let (sets, changes) = match self {
            Command::Write { key, new_key, successor, record, ttl, limit, changes, sets } => {
                cmd.arg(session_key(key)).arg(session_key(new_key));
                cmd.arg(session_key(successor.as_ref().unwrap_or(key)));
                cmd.arg("w").arg(record.as_deref().unwrap_or_default());
                cmd.arg(ttl.unwrap_or(0)).arg((*limit).min(data::MAX_DATA_SIZE));
                (sets, Some(changes))
            }
            Command::Destroy { key, sets } => {
                cmd.arg(session_key(key)).arg(session_key(key)).arg(session_key(key));
                cmd.arg("d").arg("").arg(0).arg(0);
                (sets, None)
            }
        };
        cmd.arg(set(sets.leave))
            .arg(set(sets.join.map(|(s, _)| s)))
            .arg(sets.join.map(|(_, t)| t).unwrap_or(0))
            .arg(set(sets.destroy));
        for (key, value) in changes.iter().flat_map(|c| c.iter()) {
            cmd.arg(key).arg(value);
        }
        cmd.get_packed_command()
    }
}

/// Splits the script's reply: other sessions destroyed, the refused size (0: none), the
/// value written (empty when destroyed).
pub fn parse_reply(reply: &[u8]) -> Option<(usize, usize, &[u8])> {
    let mut parts = reply.splitn(3, |&b| b == b' ');
    let number = |p: Option<&[u8]>| core::str::from_utf8(p?).ok()?.parse::<usize>().ok();
    let destroyed = number(parts.next())?;
    let refused = number(parts.next())?;
    Some((destroyed, refused, parts.next()?))
}

/// What the glue does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Send(Command),
    Done(Applied),
}

/// One response's commit.
#[derive(Clone, Debug)]
pub struct Commit {
    limit: usize,
    /// The session as the request saw it: the answer when nothing could be done.
    original: Stored,
    /// The session's ID after the response if the command succeeds.
    id: SessionId,
    renewed: bool,
    destroyed_this: bool,
    in_flight: bool,
}

impl Commit {
    /// Starts applying `actions` to the session the request decided on. `limit` is
    /// `sessions_data_size`; `successor` the ID a rolling renewal of `stored.id` would give
    /// (when `stored.id` is the cookie's: only then may another request renew it meanwhile).
    pub fn start(
        stored: &Stored,
        actions: &Actions,
        limit: usize,
        now: u64,
        policy: &Policy,
        successor: Option<SessionId>,
    ) -> (Commit, Step) {
        let mut commit = Commit {
            limit,
            original: stored.clone(),
            id: stored.id,
            renewed: false,
            destroyed_this: false,
            in_flight: false,
        };
        let key = stored.id.store_key();
        // The data as this request expects it after the sets (what the subject sets follow;
        // the script merges into what Redis holds then).
        let (expected, too_large) = match stored.data.apply(&actions.changes, limit) {
            Ok(d) => (d, None),
            Err(t) => (stored.data.clone(), Some(t)),
        };
        let old_subject = stored.data.subject().map(data::subject_key);
        let new_subject = expected.subject().map(data::subject_key);
        if let Some(Destroy::This | Destroy::All) = actions.destroy {
            let all = actions.destroy == Some(Destroy::All);
            let sets =
                Sets { leave: old_subject, join: None, destroy: new_subject.filter(|_| all) };
            commit.destroyed_this = true;
            commit.in_flight = true;
            return (commit, Step::Send(Command::Destroy { key, sets }));
        }
        if !actions.renew && actions.destroy.is_none() && expected == stored.data {
            // Nothing to write (no change, or every change refused).
            let refused = too_large.map(Refused::TooLarge);
            return (commit, Step::Done(commit_unchanged(stored, refused)));
        }
        let (record, ttl) = if actions.renew {
            commit.id = SessionId::random();
            commit.renewed = true;
            let succ = stored.record.successor(now);
            let ttl = succ.expires_at(policy).saturating_sub(now).max(1);
            (Some(redis_record::encode(&succ, &Data::new())), Some(ttl))
        } else {
            (None, None)
        };
        let sets = Sets {
            leave: old_subject.filter(|&s| Some(s) != new_subject || actions.renew),
            join: new_subject.map(|s| (s, subject_set_ttl(policy))),
            destroy: new_subject.filter(|_| actions.destroy == Some(Destroy::Others)),
        };
        commit.in_flight = true;
        let cmd = Command::Write {
            key,
            new_key: commit.id.store_key(),
            successor: successor.map(|s| s.store_key()),
            record,
            ttl,
            limit,
            changes: actions.changes.clone(),
            sets,
        };
        (commit, Step::Send(cmd))
    }

    /// The outcome when Redis could not be used: nothing changed.
    pub fn failed(&mut self) -> Applied {
        self.in_flight = false;
        commit_unchanged(&self.original, Some(Refused::Store))
    }

    /// Feeds the reply to the command sent.
    pub fn on_reply(&mut self, reply: Reply) -> Step {
        if !core::mem::replace(&mut self.in_flight, false) {
            return Step::Done(self.failed());
        }
        let parsed = match &reply {
            Reply::Bulk(b) => parse_reply(b).and_then(|(destroyed, refused, value)| {
                let data = match self.destroyed_this {
                    true => Data::new(),
                    false => redis_record::decode(value)?.1,
                };
                Some((destroyed, refused, data))
            }),
            Reply::Nil => return Step::Done(commit_unchanged(&self.original, Some(Refused::Gone))),
            _ => None,
        };
        let Some((destroyed_others, refused, data)) = parsed else {
            return Step::Done(self.failed());
        };
        let cookie = match (self.destroyed_this, self.renewed) {
            (true, _) => CookieChange::Expire,
            (false, true) => CookieChange::Set(self.id),
            (false, false) => CookieChange::Keep,
        };
        Step::Done(Applied {
            id: (!self.destroyed_this).then_some(self.id),
            data,
            cookie,
            destroyed_this: self.destroyed_this,
            destroyed_others,
            refused: (refused > 0)
                .then_some(Refused::TooLarge(TooLarge { size: refused, limit: self.limit })),
        })
    }
}

fn commit_unchanged(stored: &Stored, refused: Option<Refused>) -> Applied {
    Applied::unchanged(stored.id, stored.data.clone(), refused)
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
            let (k1, k2, sets, out, refused) = match cmd {
                Command::Write { key, new_key, successor, record, ttl, limit, changes, sets } => {
                    let (mut k1, mut k2) = (session_key(key), session_key(new_key));
                    let mut cur = self.data.get(&k1).cloned();
                    let renewed =
                        |v: &[u8]| redis_record::decode(v).is_some_and(|(r, _)| r.renewed_at != 0);
                    if let (Some((v, _)), Some(succ)) = (&cur, successor) {
                        if renewed(v) {
                            let sk = session_key(succ);
                            if k2 == k1 {
                                k2 = sk.clone();
                            }
                            k1 = sk;
                            cur = self.data.get(&k1).cloned();
                        }
                    }
                    let Some((cur, cur_ttl)) = cur else {
                        return Reply::Nil;
                    };
                    let Some((rec, data)) = redis_record::decode(&cur) else {
                        return Reply::Nil;
                    };
                    if rec.renewed_at != 0 {
                        return Reply::Nil;
                    }
                    let (new, refused) = match data.apply(changes, *limit) {
                        Ok(d) => (d, 0),
                        Err(t) => (data, t.size),
                    };
                    let mut out = match record {
                        Some(r) => r.clone(),
                        None => redis_record::encode(&rec, &Data::new()),
                    };
                    out.extend_from_slice(new.encoded());
                    self.data.remove(&k1);
                    self.data.insert(k2.clone(), (out.clone(), ttl.unwrap_or(cur_ttl)));
                    (k1, k2, sets, out, refused)
                }
                Command::Destroy { key, sets } => {
                    let k = session_key(key);
                    self.data.remove(&k);
                    (k.clone(), k, sets, Vec::new(), 0)
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
                    n += usize::from(self.data.remove(&m).is_some());
                    self.set(&s, 0).remove(&m);
                }
            }
            let mut reply = format!("{n} {refused} ").into_bytes();
            reply.extend_from_slice(&out);
            Reply::Bulk(reply)
        }

        fn apply(&mut self, stored: &Stored, actions: &Actions, now: u64) -> Applied {
            let successor = Some(crate::redis_flow::tests::signer().successor(&stored.id));
            let (mut c, mut step) = Commit::start(stored, actions, 1024, now, &POLICY, successor);
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
        Applied::unchanged(s.id, s.data.clone(), None)
    }

    #[test]
    fn concurrent_writers_are_merged_in_redis() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        // Another request (another instance) sets `a` after this one read the session.
        let other = r.apply(&s, &sets(&[("a", "1")]), 1000);
        assert_eq!(other.refused, None);
        let commands = r.commands;
        let a = r.apply(&s, &sets(&[("b", "2")]), 1000);
        assert_eq!(r.commands, commands + 1, "no conflict: merged by the script");
        assert_eq!((a.data.get(b"a"), a.data.get(b"b")), (Some(&b"1"[..]), Some(&b"2"[..])));
        assert_eq!(r.data_of(&s.id), Some(a.data));
        // A touch meanwhile (the record changed): merged as well, the touch kept.
        let (_, touched) = r.returning(s.id, 1005);
        let touched = touched.unwrap();
        assert_eq!(r.apply(&s, &sets(&[("c", "3")]), 1005).data.len(), 3 * 5);
        let (st, now) = r.returning(s.id, 1005);
        assert_eq!((st, now.unwrap().record), (Status::Valid, touched.record));
    }

    #[test]
    fn errors_and_foreign_replies_are_store_failures() {
        let s = FakeRedis::default().session(1000);
        for reply in [Reply::Error("BUSY".into()), Reply::Bulk(b"x".to_vec()), Reply::Int(1)] {
            let (mut c, _) = Commit::start(&s, &sets(&[("a", "1")]), 1024, 1000, &POLICY, None);
            let Step::Done(a) = c.on_reply(reply) else { panic!() };
            assert_eq!(a, Applied { refused: Some(Refused::Store), ..r_unchanged(&s) });
        }
        assert_eq!(parse_reply(b"2 0 abc"), Some((2, 0, &b"abc"[..])));
        assert_eq!(parse_reply(b"0 12 "), Some((0, 12, &b""[..])));
        assert_eq!(parse_reply(b"x 0 "), None);
    }

    #[test]
    fn a_write_racing_a_rolling_renewal_lands_on_the_successor() {
        let mut r = FakeRedis::default();
        let s = r.session(1000);
        r.returning(s.id, 1029);
        r.returning(s.id, 1058);
        let (st, next) = r.returning(s.id, 1060);
        let next = next.unwrap().id;
        assert_eq!(st, Status::Renewed);
        let a = r.apply(&s, &sets(&[("a", "1")]), 1060);
        assert_eq!((a.refused, a.id), (None, Some(s.id)));
        assert_eq!(r.data_of(&next).unwrap().get(b"a"), Some(&b"1"[..]));
        // Without the successor's key it cannot follow: refused, nothing written.
        let (mut c, step) = Commit::start(&s, &sets(&[("b", "2")]), 1024, 1060, &POLICY, None);
        let Step::Send(cmd) = step else { panic!() };
        assert_eq!(
            c.on_reply(r.commit(&cmd)),
            Step::Done(Applied { refused: Some(Refused::Gone), ..r_unchanged(&s) })
        );
        // An explicit renewal racing it kills the successor too: the old ID has no way back.
        let b = r.apply(&s, &Actions { renew: true, ..Actions::default() }, 1061);
        let new = b.id.unwrap();
        assert_eq!(r.returning(next, 1062).0, Status::Invalid);
        assert_eq!(r.returning(s.id, 1062).0, Status::Invalid);
        assert_eq!(r.returning(new, 1062).1.unwrap().data.get(b"a"), Some(&b"1"[..]));
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
        assert!(text.starts_with("*14\r\n$4\r\nEVAL\r\n"), "{text}");
        let s = data::subject_key(b"x");
        let mut changes = Changes::new();
        changes.set(b"user", b"alice");
        let cmd = Command::Write {
            key: StoreKey([1; 16]),
            new_key: StoreKey([2; 16]),
            successor: None,
            record: None,
            ttl: None,
            limit: 1 << 20,
            changes,
            sets: Sets { leave: Some(s), join: Some((s, 300)), destroy: None },
        };
        let text = String::from_utf8_lossy(&cmd.encode()).into_owned();
        assert!(text.contains(&String::from_utf8_lossy(&subject_set_key(&s)).into_owned()));
        assert!(text.contains("$3\r\n300\r\n"));
        assert!(text.contains("$5\r\n65536\r\n"), "the limit is at most 64k");
        assert!(text.ends_with("$4\r\nuser\r\n$5\r\nalice\r\n"), "{text}");
    }
}

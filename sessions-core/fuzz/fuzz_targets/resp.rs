//! Bytes from Redis: the RESP reply parser (`redis_flow::parse_reply`), fed the whole
//! input and then every prefix the network could have delivered first; the identity value
//! (`parse_identity`) and the shared-state value (`parse_shared`: binding key, then the
//! identity when asked for). A complete reply then drives a `Flow` from each start; and
//! the input, read as a session record near the flow's clock followed by a script of
//! replies (nil, OK, 0, 1, the record again or changed by another instance, an error),
//! drives a flow for a returning cookie through lookup, touch, renewal, successor check
//! and replacement. Values are `redis_record`'s (version 3: the record, then the data).
//!
//! Also: `redis_record::decode` (a decoded session encodes back to the same session) and
//! the commit script's reply (`redis_commit::parse_reply`).
//!
//! Checked: nothing panics; when the whole input is a complete reply, every shorter
//! prefix is either "need more" or the same complete reply (never garbage, never a
//! different reply); an identity that parses is the value split in two, with a token name;
//! a shared value parses exactly when it is a binding key alone or followed by a valid
//! identity. A flow ends within a bounded number of replies, every command it sends
//! encodes, and its result is coherent (a `Set-Cookie` always has an ID, a failure keeps
//! the cookie's ID and sets none, `valid` keeps the cookie's ID, `renewed` hands out its
//! derived successor); a compare-and-set expects exactly the value last read, and a
//! replacement deletes the cookie's key (with its successor's only for an old ID).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{is_token, Incoming, SessionId, Signer};
use sessions_core::data::Data;
use sessions_core::redis_flow::{
    parse_identity, parse_reply, parse_shared, Command, Flow, Parsed, Reply, Step, IDENTITY_LEN,
};
use sessions_core::redis_record;
use sessions_core::session::{
    BindingHashes, BindingKey, Client, Evaluation, Policy, Record, Status, RENEWAL_GRACE,
};
use sha2::{Digest, Sha256};

const POLICY: Policy =
    Policy { idle: 30, rolling: 60, absolute: 300, check_ip: true, check_user_agent: true };

/// Replies a flow may take before it must be done: `MAX_ATTEMPTS` (4) writes or creations,
/// plus the lookup and the successor check.
const MAX_REPLIES: usize = 8;

/// Feeds `reply` to a flow in each starting state, as often as the flow asks.
fn drive(reply: &Reply, signer: &Signer, client: &Client) {
    let verified = SessionId([3; 16]);
    for incoming in [Incoming::Absent, Incoming::Invalid, Incoming::Verified(verified)] {
        let (mut flow, mut step) = Flow::start(incoming, 1000, &POLICY, client);
        let mut replies = 0;
        let eval = loop {
            match step {
                Step::Done(eval) => break eval,
                Step::Send(cmd) => {
                    assert!(!cmd.encode().is_empty());
                    assert!(replies < MAX_REPLIES, "flow still running after {replies} replies");
                    replies += 1;
                    step = flow.on_reply(reply.clone(), signer, client);
                }
            }
        };
        check(&eval, incoming);
        // A flow that is done stays done.
        assert!(matches!(flow.on_reply(reply.clone(), signer, client), Step::Done(_)));
    }
}

fn check(eval: &Evaluation, incoming: Incoming) {
    let cookie_id = match incoming {
        Incoming::Verified(id) => Some(id),
        _ => None,
    };
    assert!(!eval.set_cookie || eval.id.is_some(), "Set-Cookie without an ID: {eval:?}");
    assert!(!eval.renewal || eval.status == Status::Renewed, "{eval:?}");
    match eval.status {
        Status::Error => assert_eq!(*eval, Evaluation::store_error(cookie_id)),
        Status::Valid => {
            assert_eq!((eval.id, eval.set_cookie), (cookie_id, false), "{eval:?}");
        }
        Status::New => assert_eq!(incoming, Incoming::Absent),
        _ => assert!(eval.set_cookie, "{eval:?}"),
    }
}

const NOW: u64 = 100_000;

fn legacy_hash(domain: u8, value: &[u8]) -> u32 {
    let d = Sha256::new().chain_update([domain]).chain_update(value).finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// A record a little before (or after) `NOW`, from 6 bytes: ages of its times, whether it
/// is renewed, and whose binding it carries.
fn record(b: &[u8; 6]) -> Record {
    let client_bits = b[5];
    let (ip, user_agent, hashes) = match client_bits & 3 {
        0 => (1, 2, BindingHashes::Keyed),
        1 => (1, 2, BindingHashes::Legacy),
        // Our client's, as each version makes them.
        2 => {
            let c = Client::new(&BindingKey([5; 16]), b"192.0.2.1", b"agent");
            (c.ip, c.user_agent, BindingHashes::Keyed)
        }
        _ => (legacy_hash(b'i', b"192.0.2.1"), legacy_hash(b'u', b"agent"), BindingHashes::Legacy),
    };
    // Mostly in the past, sometimes a little ahead (clock skew between instances).
    let at = |age: u8| (NOW + 8).saturating_sub(u64::from(age) * 2);
    Record {
        created: at(b[0]).saturating_sub(u64::from(client_bits >> 2) * 16),
        issued: at(b[1]),
        last_seen: at(b[2]),
        renewed_at: if b[3] == 0 { 0 } else { NOW - u64::from(b[3]) % (2 * RENEWAL_GRACE) },
        ip,
        user_agent,
        hashes,
    }
}

/// A returning cookie against a Redis that answers from a script.
fn scripted(data: &[u8], signer: &Signer, client: &Client) {
    let Some((head, script)) = data.split_first_chunk::<6>() else { return };
    let mut rec = record(head);
    let id = SessionId([3; 16]);
    let (mut flow, mut step) = Flow::start(Incoming::Verified(id), NOW, &POLICY, client);
    assert_eq!(step, Step::Send(Command::Get { key: id.store_key() }));
    // The value of the cookie's key the flow last read (a compare-and-set must expect
    // exactly that).
    let mut read: Option<Vec<u8>> = None;
    let value = |rec: &Record| redis_record::encode(rec, &Data::new());
    let mut script = script.iter();
    let mut replies = 0;
    let eval = loop {
        let cmd = match step {
            Step::Done(eval) => break eval,
            Step::Send(cmd) => cmd,
        };
        assert!(!cmd.encode().is_empty());
        match &cmd {
            Command::Cas { key, expected, .. } => {
                assert_eq!(*key, id.store_key());
                assert_eq!(Some(expected), read.as_ref(), "compare-and-set against another value");
            }
            Command::Replace { old, successor, .. } => {
                assert_eq!(*old, id.store_key());
                if let Some(s) = successor {
                    assert_eq!(*s, signer.successor(&id).store_key());
                    let renewed_at =
                        read.as_deref().and_then(redis_record::decode).map(|(r, _)| r.renewed_at);
                    assert_ne!(renewed_at, Some(0), "successor of a fresh ID");
                }
            }
            _ => {}
        }
        assert!(replies < MAX_REPLIES, "flow still running after {replies} replies");
        replies += 1;
        // The first reply is the record; then the script (an error once it runs out).
        let reply = match (replies, script.next()) {
            (1, _) => Reply::Bulk(value(&rec)),
            (_, None) => Reply::Error("ERR script ran out".into()),
            (_, Some(b)) => match b % 8 {
                0 => Reply::Nil,
                1 => Reply::Ok,
                2 => Reply::Int(0),
                3 | 4 => Reply::Int(1),
                5 => Reply::Bulk(value(&rec)),
                6 => {
                    // Another instance touched or renewed it meanwhile.
                    rec.last_seen = NOW - u64::from(b >> 4);
                    rec.renewed_at = if b & 8 != 0 { NOW - 1 } else { rec.renewed_at };
                    Reply::Bulk(value(&rec))
                }
                _ => Reply::Error("ERR".into()),
            },
        };
        read = match (&reply, &cmd) {
            (Reply::Bulk(b), Command::Get { key }) if *key == id.store_key() => Some(b.clone()),
            (Reply::Bulk(b), Command::Cas { .. }) => Some(b.clone()),
            _ => read,
        };
        step = flow.on_reply(reply, signer, client);
    };
    check(&eval, Incoming::Verified(id));
    match eval.status {
        Status::Renewed => assert_eq!(eval.id, Some(signer.successor(&id))),
        Status::Valid => assert_eq!(eval.id, Some(id)),
        Status::Error => {}
        _ => assert_ne!(eval.id, Some(id), "{eval:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
    let key = BindingKey([5; 16]);
    let client = Client::new(&key, b"192.0.2.1", b"agent");

    let whole = parse_reply(data);
    if let Parsed::Complete(reply) = &whole {
        for cut in 0..data.len() {
            match parse_reply(&data[..cut]) {
                Parsed::Incomplete => {}
                Parsed::Complete(r) if r == *reply => {}
                other => panic!("prefix {cut} of a complete reply parsed as {other:?}"),
            }
        }
        drive(reply, &signer, &client);
    }
    // The input as the value stored under the cookie's key (a session when it decodes as
    // version 3: the decision logic then runs on attacker-shaped times and data).
    drive(&Reply::Bulk(data.to_vec()), &signer, &client);
    scripted(data, &signer, &client);

    // A session value: what decodes encodes back to an equal session (varints read
    // leniently, written canonically); a commit script's reply splits or is refused.
    if let Some((rec, d)) = redis_record::decode(data) {
        assert_eq!(redis_record::decode(&redis_record::encode(&rec, &d)), Some((rec, d)));
    }
    if let Some((_, _, rest)) = sessions_core::redis_commit::parse_reply(data) {
        assert!(rest.len() < data.len());
    }

    if let Some((secret, name)) = parse_identity(data) {
        assert!(is_token(&name));
        assert_eq!([&secret[..], &name[..]].concat(), data);
    }

    let shared = parse_shared(data);
    match (data.len(), &shared) {
        (16, Some((k, None))) => assert_eq!(&k.0[..], data),
        (16, _) => panic!("a binding key alone parsed as {shared:?}"),
        (n, Some((k, Some(identity)))) if n == 16 + IDENTITY_LEN => {
            assert_eq!(&k.0[..], &data[..16]);
            assert_eq!(parse_identity(&data[16..]), Some(*identity));
        }
        (n, None) if n == 16 + IDENTITY_LEN => {
            assert_eq!(parse_identity(&data[16..]), None, "a valid shared value refused");
        }
        (_, None) => {}
        (n, Some(_)) => panic!("{n} bytes parsed as a shared value: {shared:?}"),
    }
});

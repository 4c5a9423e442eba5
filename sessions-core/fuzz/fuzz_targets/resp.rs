//! Bytes from Redis: the RESP reply parser (`redis_flow::parse_reply`), fed the whole
//! input and then every prefix the network could have delivered first; the identity value
//! (`parse_identity`) and the shared-state value (`parse_shared`: binding key, then the
//! identity when asked for). A reply, and the input as a stored record, then drive a
//! `Flow` in each state.
//!
//! Checked: nothing panics; when the whole input is a complete reply, every shorter
//! prefix is either "need more" or the same complete reply (never garbage, never a
//! different reply); an identity that parses is the value split in two, with a token name;
//! a shared value parses exactly when it is a binding key alone or followed by a valid
//! identity. A flow ends within a bounded number of replies, every command it sends
//! encodes, and its result is coherent (a `Set-Cookie` always has an ID, a failure keeps
//! the cookie's ID and sets none).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{is_token, Incoming, SessionId, Signer};
use sessions_core::redis_flow::{
    parse_identity, parse_reply, parse_shared, Flow, Parsed, Reply, Step, IDENTITY_LEN,
};
use sessions_core::session::{BindingKey, Client, Evaluation, Policy, Status};

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
    // The input as the value stored under the cookie's key (a record when 41 bytes with a
    // known version: the decision logic then runs on attacker-shaped times).
    drive(&Reply::Bulk(data.to_vec()), &signer, &client);

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

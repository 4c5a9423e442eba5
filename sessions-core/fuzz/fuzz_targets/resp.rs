//! Bytes from Redis: the RESP reply parser (`redis_flow::parse_reply`), fed the whole
//! input and then every prefix the network could have delivered first, and the identity
//! value (`redis_flow::parse_identity`). A reply then drives a `Flow` in each state.
//!
//! Checked: nothing panics; when the whole input is a complete reply, every shorter
//! prefix is either "need more" or the same complete reply (never garbage, never a
//! different reply); an identity that parses is the value split in two, with a token name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{is_token, Incoming, SessionId, Signer};
use sessions_core::redis_flow::{parse_identity, parse_reply, Flow, Parsed, Step};
use sessions_core::session::{Client, Policy};

const POLICY: Policy =
    Policy { idle: 30, rolling: 60, absolute: 300, check_ip: true, check_user_agent: true };

fuzz_target!(|data: &[u8]| {
    let whole = parse_reply(data);
    if let Parsed::Complete(reply) = &whole {
        for cut in 0..data.len() {
            match parse_reply(&data[..cut]) {
                Parsed::Incomplete => {}
                Parsed::Complete(r) if r == *reply => {}
                other => panic!("prefix {cut} of a complete reply parsed as {other:?}"),
            }
        }
        // Every state of the flow takes any reply without panicking.
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let client = Client { ip: 1, user_agent: 2 };
        for incoming in [Incoming::Absent, Incoming::Verified(SessionId([3; 16]))] {
            let (mut flow, mut step) = Flow::start(incoming, 1000, &POLICY, &client);
            for _ in 0..8 {
                if let Step::Done(_) = step {
                    break;
                }
                step = flow.on_reply(reply.clone(), &signer);
            }
        }
    }

    if let Some((secret, name)) = parse_identity(data) {
        assert!(is_token(&name));
        assert_eq!([&secret[..], &name[..]].concat(), data);
    }
});

//! Feeds arbitrary bytes to the frame decoder, the request parser and the
//! agent's classification of unparsable requests. None of them may panic,
//! and every request that parses must survive a serialise/parse round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use locale2b_agent::dispatch::classify_parse_error;
use locale2b_protocol::frame::{decode, parse_request, parse_response, FRAME_HEADER_LEN};

/// Small maximum so the fuzzer also reaches the `TooLarge` path.
const MAX: usize = 64 * 1024;

fn check_payload(payload: &[u8]) {
    match parse_request(payload) {
        Ok(frame) => {
            let again = serde_json::to_vec(&frame).expect("a parsed request serialises");
            let back = parse_request(&again).expect("a serialised request parses");
            assert_eq!(back, frame, "request round trip");
        }
        Err(err) => {
            let (_id, body) = classify_parse_error(payload, &err);
            assert!(!body.message.is_empty());
        }
    }
    let _ = parse_response(payload);
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode(rest, MAX) {
            Ok(Some((used, payload))) => {
                assert_eq!(used, FRAME_HEADER_LEN + payload.len());
                assert!(used <= rest.len());
                check_payload(payload);
                rest = &rest[used..];
            }
            Ok(None) | Err(_) => break,
        }
    }
    check_payload(data);
});

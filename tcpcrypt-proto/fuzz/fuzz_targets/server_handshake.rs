//! The accepting side's state machine fed arbitrary client bytes in
//! arbitrary pieces. Most inputs are given a genuine A, P or E marker so that
//! the option, Init1, key and 0-RTT skipping paths are reached.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::Counter;
use tcpcrypt_proto::hello::{HelloKind, marker};
use tcpcrypt_proto::{HandshakeConfig, ResumptionCache, ServerHandshake};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let config = Arc::new(HandshakeConfig::default());
    let cache = Arc::new(ResumptionCache::new(2));
    let mut hs = ServerHandshake::new(config, Some(cache), Box::new(Counter(mode))).unwrap();
    hs.write_to(&mut Vec::new());
    let kinds = [HelloKind::A, HelloKind::Pipelined, HelloKind::Early];
    let kind = kinds[usize::from(mode & 1) + usize::from(mode >> 7)];
    let input = if mode & 2 != 0 { [&marker(kind)[..], rest].concat() } else { rest.to_vec() };
    let piece = 1 + (mode as usize >> 2);
    let mut consumed = 0;
    for chunk in input.chunks(piece) {
        match hs.read(chunk) {
            Ok(n) => {
                assert!(n <= chunk.len());
                consumed += n;
                hs.write_to(&mut Vec::new());
                if hs.is_done() {
                    assert!(hs.outcome().is_some());
                    break;
                }
            }
            Err(_) => {
                assert!(hs.read(b"x").is_err(), "errors are sticky");
                return;
            }
        }
    }
    assert!(consumed <= input.len());
    let _ = hs.peer_eof();
});

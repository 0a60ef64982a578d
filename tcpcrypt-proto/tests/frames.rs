//! The data phase: FINp and end of stream, truncation, tampering, limits,
//! and the rekey rules of RFC 8548 3.8.

mod common;

use std::sync::Arc;

use common::*;
use tcpcrypt_proto::frame::{FrameOpener, MAX_DATA, MAX_FRAME_LEN, MIN_FRAME_LEN};
use tcpcrypt_proto::{Error, HandshakeConfig, Session};

fn pair() -> (Session, Session) {
    let cfg = Arc::new(HandshakeConfig::default());
    encrypted(drive(client(&cfg, None), server(&cfg, None)))
}

#[test]
fn fin_is_eof_only_with_finp() {
    let (mut a, mut b) = pair();
    let (_, fin) = transfer(&mut a, &mut b, b"data", false);
    assert!(!fin);
    assert_eq!(b.opener.end_of_stream(0), Err(Error::Truncated));
    let (_, fin) = transfer(&mut a, &mut b, b"", true);
    assert!(fin);
    assert_eq!(b.opener.end_of_stream(0), Ok(()));
    // Half-close: the other direction keeps working.
    let (got, _) = transfer(&mut b, &mut a, b"still talking", false);
    assert_eq!(got, b"still talking");
    // Nothing may be sent after FINp, and nothing may arrive after it.
    assert_eq!(
        a.sealer.seal(b"x", false, &mut Vec::new()),
        Err(Error::SendAfterFin)
    );
    let mut extra = vec![0u8; MIN_FRAME_LEN];
    assert_eq!(b.opener.open_in_place(&mut extra), Err(Error::DataAfterFin));
}

#[test]
fn truncated_stream_is_an_error_distinct_from_eof() {
    let (mut a, mut b) = pair();
    let mut wire = Vec::new();
    a.sealer.seal(b"first", false, &mut wire).unwrap();
    let first_len = wire.len();
    a.sealer.seal(b"last", true, &mut wire).unwrap();
    // Deliver only the first frame and part of the FINp frame, then EOF.
    receive(&mut b, &mut wire[..first_len]);
    assert_eq!(
        b.opener.open_in_place(&mut wire[first_len..first_len + 5]),
        Ok(None)
    );
    assert_eq!(b.opener.end_of_stream(0), Err(Error::Truncated));
}

#[test]
fn tampering_is_detected_and_the_opener_stays_failed() {
    // Every seventh bit of flags, data and tag, each on a fresh session.
    let frame_bits = (3 + 1 + 17 + 16) * 8;
    for bit in (3 * 8..frame_bits).step_by(7) {
        let (mut a, mut b) = pair();
        let mut w = Vec::new();
        a.sealer.seal(b"integrity matters", false, &mut w).unwrap();
        w[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            b.opener.open_in_place(&mut w),
            Err(Error::AuthenticationFailed),
            "bit {bit}"
        );
        // Sticky: even the genuine frame is refused afterwards.
        let mut genuine = Vec::new();
        a.sealer.seal(b"", false, &mut genuine).unwrap();
        assert_eq!(
            b.opener.open_in_place(&mut genuine),
            Err(Error::AuthenticationFailed)
        );
        assert_eq!(b.opener.end_of_stream(0), Err(Error::AuthenticationFailed));
    }
    // The control byte's rekey bit is authenticated too.
    let (mut a, mut b) = pair();
    let mut w = Vec::new();
    a.sealer.seal(b"x", false, &mut w).unwrap();
    w[0] ^= 1;
    assert_eq!(
        b.opener.open_in_place(&mut w),
        Err(Error::AuthenticationFailed)
    );
    // Reserved control bits are authenticated (they are associated data).
    let (mut a, mut b) = pair();
    let mut w = Vec::new();
    a.sealer.seal(b"x", false, &mut w).unwrap();
    w[0] ^= 0x80;
    assert_eq!(
        b.opener.open_in_place(&mut w),
        Err(Error::AuthenticationFailed)
    );
}

#[test]
fn length_limits() {
    let (mut a, mut b) = pair();
    let mut wire = Vec::new();
    assert_eq!(
        a.sealer.seal(&vec![0; MAX_DATA + 1], false, &mut wire),
        Err(Error::FrameTooLarge(MAX_DATA + 1))
    );
    assert!(wire.is_empty());
    assert_eq!(
        a.sealer.seal(&vec![1; MAX_DATA], false, &mut wire).unwrap(),
        MAX_FRAME_LEN
    );
    let (got, _) = receive(&mut b, &mut wire);
    assert_eq!(got.len(), MAX_DATA);
    // clen below flags + tag.
    for clen in [0u16, 1, 16] {
        let (_, mut b) = pair();
        let mut w = vec![0, (clen >> 8) as u8, clen as u8];
        w.resize(3 + clen as usize, 0);
        assert_eq!(
            b.opener.open_in_place(&mut w),
            Err(Error::FrameTooShort(clen))
        );
    }
    assert_eq!(
        FrameOpener::frame_len(&[0, 0xff, 0xff]),
        Some(MAX_FRAME_LEN)
    );
    assert_eq!(FrameOpener::frame_len(&[0, 0xff]), None);
}

#[test]
fn rekey_on_request_and_the_peer_answers() {
    let (mut a, mut b) = pair();
    a.sealer.initiate_rekey().unwrap();
    // A second request before the first went out is refused.
    assert_eq!(a.sealer.initiate_rekey(), Err(Error::RekeyOutstanding));
    // An empty rekey frame (keep-alive probe).
    let mut wire = Vec::new();
    a.sealer.seal(b"", false, &mut wire).unwrap();
    assert_eq!(a.sealer.generation(), 1);
    // While it is unanswered, no second empty rekey may start.
    assert_eq!(a.sealer.initiate_rekey(), Err(Error::RekeyOutstanding));
    receive(&mut b, &mut wire);
    assert_eq!(b.opener.generation(), 1);
    // B must answer at once with a rekey frame of its own.
    assert_eq!(b.sealer.rekey_frames_due(), 1);
    let mut answer = Vec::new();
    b.sealer.seal(b"", false, &mut answer).unwrap();
    assert_eq!(b.sealer.generation(), 1);
    assert_eq!(b.sealer.rekey_frames_due(), 0);
    receive(&mut a, &mut answer);
    assert_eq!(a.opener.generation(), 1);
    // A's own generation matched already: nothing owed, a new rekey is allowed.
    assert_eq!(a.sealer.rekey_frames_due(), 0);
    a.sealer.initiate_rekey().unwrap();
    let (got, _) = transfer(&mut a, &mut b, b"under generation 2", false);
    assert_eq!(got, b"under generation 2");
    assert_eq!((a.sealer.generation(), b.opener.generation()), (2, 2));
}

#[test]
fn catch_up_sends_one_rekey_frame_per_generation() {
    let (mut a, mut b) = pair();
    // A rekeys twice, each time carrying data (allowed without waiting).
    let mut wire = Vec::new();
    for _ in 0..2 {
        a.sealer.initiate_rekey().unwrap();
        a.sealer.seal(b"data", false, &mut wire).unwrap();
    }
    receive(&mut b, &mut wire);
    assert_eq!(b.opener.generation(), 2);
    assert_eq!(b.sealer.rekey_frames_due(), 2);
    let mut answer = Vec::new();
    while b.sealer.rekey_frames_due() > 0 {
        b.sealer.seal(b"", false, &mut answer).unwrap();
    }
    receive(&mut a, &mut answer);
    assert_eq!((b.sealer.generation(), a.opener.generation()), (2, 2));
    let (got, _) = transfer(&mut b, &mut a, b"in step", false);
    assert_eq!(got, b"in step");
}

#[test]
fn no_rekey_answer_after_fin() {
    let (mut a, mut b) = pair();
    transfer(&mut b, &mut a, b"", true);
    a.sealer.initiate_rekey().unwrap();
    let mut wire = Vec::new();
    a.sealer.seal(b"x", false, &mut wire).unwrap();
    receive(&mut b, &mut wire);
    assert_eq!(b.sealer.rekey_frames_due(), 0);
}

#[test]
fn rekeys_under_traffic_in_both_directions() {
    let (mut a, mut b) = pair();
    let mut rng = Counter(1);
    let mut seed = [0u8; 1];
    for round in 0..200u32 {
        use tcpcrypt_proto::RandomSource;
        rng.fill(&mut seed).unwrap();
        let (from, to) = if seed[0] & 1 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        if seed[0] % 5 == 0 {
            let _ = from.sealer.initiate_rekey();
        }
        let msg = round.to_be_bytes().repeat(1 + (seed[0] as usize % 50));
        let (got, _) = transfer(from, to, &msg, false);
        assert_eq!(got, msg);
        // Answer owed rekeys as a real connection would.
        let mut owed = Vec::new();
        while b.sealer.rekey_frames_due() > 0 {
            b.sealer.seal(b"", false, &mut owed).unwrap();
        }
        receive(&mut a, &mut owed);
        let mut owed = Vec::new();
        while a.sealer.rekey_frames_due() > 0 {
            a.sealer.seal(b"", false, &mut owed).unwrap();
        }
        receive(&mut b, &mut owed);
    }
    assert!(a.sealer.generation() > 5, "rekeys happened");
    assert_eq!(a.sealer.generation(), b.opener.generation());
    assert_eq!(b.sealer.generation(), a.opener.generation());
}

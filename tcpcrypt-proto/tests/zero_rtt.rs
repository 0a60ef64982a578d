//! 0-RTT data on resumed connections (docs/PROTOCOL.md 7.1): the
//! connecting side's first bytes travel with its hello under a key from
//! the resumed secret; the accepting side opens them at once when it
//! honours the resumption, and otherwise skips them up to the
//! end-of-early-data mark, after which the connecting side sends them
//! again. A secret is used once, so a replay neither resumes nor delivers.

mod common;

use std::sync::Arc;

use common::*;
use tcpcrypt_proto::frame::{EARLY_DATA_LIMIT, END_OF_EARLY_DATA, MIN_FRAME_LEN};
use tcpcrypt_proto::hello::{HelloKind, marker};
use tcpcrypt_proto::{
    ClientHandshake, ClientOutcome, DisableReason, Error, HandshakeConfig, OsRandom,
    ResumptionCache, ResumptionSecret, ServerOutcome, Tep,
};

const REQUEST: &[u8] = b"GET /resumed HTTP/1.1\r\nHost: b\r\n\r\n";

fn early_client(
    config: &Arc<HandshakeConfig>,
    ticket: Option<ResumptionSecret>,
    data: &[u8],
) -> ClientHandshake {
    ClientHandshake::with_early_data(config.clone(), ticket, data, Box::new(OsRandom))
        .expect("client starts")
}

/// A first, full session between default configurations; returns A's
/// ticket for the next connection and B's cache.
fn ticket() -> (Arc<HandshakeConfig>, ResumptionSecret, Arc<ResumptionCache>) {
    let cfg = Arc::new(HandshakeConfig::default());
    let cache = Arc::new(ResumptionCache::new(16));
    let (mut a, _) = encrypted(drive(client(&cfg, None), server(&cfg, Some(&cache))));
    (cfg.clone(), a.resumption.take().expect("a ticket"), cache)
}

#[test]
fn accepted_early_data_is_delivered_before_the_handshake_round_trip() {
    let (cfg, ticket, cache) = ticket();
    let mut a = early_client(&cfg, Some(ticket), REQUEST);
    assert_eq!(a.early_data_len(), REQUEST.len());
    let mut first_flight = Vec::new();
    a.write_to(&mut first_flight);
    assert!(first_flight.starts_with(&marker(HelloKind::Early)));
    let hello_len = 8 + first_flight[9] as usize;
    let early_len = first_flight.len() - hello_len;
    assert_eq!(early_len, MIN_FRAME_LEN + REQUEST.len(), "one frame");
    assert!(
        !first_flight.windows(REQUEST.len()).any(|w| w == REQUEST),
        "the request is encrypted"
    );

    // B is done with the hello alone: its session exists before A has
    // heard anything back, and it opens the early frame at once.
    let mut b = server(&cfg, Some(&cache));
    let used = b.read(&first_flight).unwrap();
    assert_eq!(used, hello_len);
    let Some(ServerOutcome::Encrypted(mut b_session)) = b.outcome() else {
        panic!("B keyed the resumed session on the hello");
    };
    assert!(b_session.info.resumed && b_session.info.zero_rtt);
    let (got, fin) = receive(&mut b_session, &mut first_flight[used..]);
    assert_eq!((got.as_slice(), fin), (REQUEST, false));
    assert!(b_session.opener.in_early_data());
    // B answers in the same flight as its hello.
    let mut to_a = Vec::new();
    b.write_to(&mut to_a);
    b_session
        .sealer
        .seal(b"HTTP/1.1 200 OK\r\n\r\n", false, &mut to_a)
        .unwrap();

    let used = a.read(&to_a).unwrap();
    let Some(ClientOutcome::Encrypted(mut a_session)) = a.outcome() else {
        panic!("A resumed");
    };
    assert!(a_session.info.resumed && a_session.info.zero_rtt);
    assert_eq!(a_session.info.session_id, b_session.info.session_id);
    let (got, _) = receive(&mut a_session, &mut to_a[used..]);
    assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");

    // A ends its early frames with its first frame of the session, not
    // before: a server that answered and closed at once gets nothing after
    // its close.
    let mut after = Vec::new();
    a.write_to(&mut after);
    assert!(after.is_empty());
    assert_eq!(a_session.sealer.offset(), (early_len + 3) as u64);
    a_session.sealer.seal(b"more", true, &mut after).unwrap();
    assert_eq!(after[..3], END_OF_EARLY_DATA);
    let mut second = Vec::new();
    a_session.sealer.seal(b"", false, &mut second).unwrap_err(); // after FINp
    let (got, fin) = receive(&mut b_session, &mut after);
    assert_eq!((got.as_slice(), fin), (&b"more"[..], true));
    assert!(!b_session.opener.in_early_data());
}

#[test]
fn a_spent_secret_neither_resumes_nor_delivers_its_early_data() {
    let (cfg, ticket, cache) = ticket();
    let replayed = ticket.clone();
    let (a1, b1) = encrypted(drive(
        early_client(&cfg, Some(ticket), REQUEST),
        server(&cfg, Some(&cache)),
    ));
    assert!(a1.info.zero_rtt && b1.info.zero_rtt);
    // The same secret again: B no longer holds it; a fresh exchange, the
    // early frame skipped unread, and A told to send its bytes again.
    let a2 = early_client(&cfg, Some(replayed), REQUEST);
    assert_eq!(a2.early_data_len(), REQUEST.len());
    let e = drive(a2, server(&cfg, Some(&cache)));
    assert!(
        e.server_rest.is_empty(),
        "B consumed the skipped frame and the mark"
    );
    let (mut a, mut b) = encrypted(e);
    assert!(!a.info.resumed && !a.info.zero_rtt && !b.info.zero_rtt);
    let (got, _) = transfer(&mut a, &mut b, REQUEST, false);
    assert_eq!(got, REQUEST, "sent again after the fresh exchange");
}

#[test]
fn a_replayed_connection_is_refused_and_delivers_nothing() {
    let (cfg, ticket, cache) = ticket();
    // Record everything A sends on a 0-RTT connection.
    let mut a = early_client(&cfg, Some(ticket), REQUEST);
    let mut b = server(&cfg, Some(&cache));
    let mut recorded = Vec::new();
    a.write_to(&mut recorded);
    let used = b.read(&recorded).unwrap();
    let Some(ServerOutcome::Encrypted(mut b_session)) = b.outcome() else {
        panic!("resumed");
    };
    let mut tail = recorded[used..].to_vec();
    assert_eq!(receive(&mut b_session, &mut tail).0, REQUEST);
    let mut to_a = Vec::new();
    b.write_to(&mut to_a);
    a.read(&to_a).unwrap();
    let Some(ClientOutcome::Encrypted(mut a_session)) = a.outcome() else {
        panic!("resumed");
    };
    a.write_to(&mut recorded);
    a_session
        .sealer
        .seal(b"pay 100", true, &mut recorded)
        .unwrap();

    // The whole recording, played to the same server again: nothing is
    // resumed and nothing delivered; the handshake fails on the frames
    // that follow the mark, which are no Init1.
    for piece in [1, 7, recorded.len()] {
        let mut replay = server(&cfg, Some(&cache));
        let mut result = Ok(0);
        for chunk in recorded.chunks(piece) {
            result = replay.read(chunk);
            if result.is_err() {
                break;
            }
            assert!(
                !matches!(replay.outcome(), Some(ServerOutcome::Encrypted(_))),
                "a replay must not resume"
            );
        }
        // Named for what it most likely is, not as a bad Init1.
        assert!(
            matches!(result, Err(Error::EarlyData(why)) if why.contains("played again")),
            "{piece}: {result:?}"
        );
    }
}

#[test]
fn a_server_that_refuses_0rtt_runs_a_fresh_exchange() {
    let (cfg, ticket, cache) = ticket();
    let refusing = Arc::new(HandshakeConfig {
        early_data: false,
        ..HandshakeConfig::default()
    });
    let e = drive_with(
        early_client(&cfg, Some(ticket), REQUEST),
        server(&refusing, Some(&cache)),
        &mut |_| 5,
    );
    let (a, b) = encrypted(e);
    assert!(!a.info.resumed && !b.info.resumed && !a.info.zero_rtt);
    assert!(
        cache.len() == 1,
        "the spent secret is gone, the new one cached"
    );
}

#[test]
fn a_client_that_refuses_0rtt_sends_a_plain_resumption_offer() {
    let (_, ticket, cache) = ticket();
    let off = Arc::new(HandshakeConfig {
        early_data: false,
        ..HandshakeConfig::default()
    });
    let a = early_client(&off, Some(ticket), REQUEST);
    assert_eq!(a.early_data_len(), 0);
    let (a, b) = encrypted(drive(a, server(&off, Some(&cache))));
    assert!(a.info.resumed && !a.info.zero_rtt && !b.info.zero_rtt);
}

#[test]
fn a_declining_server_skips_the_early_frames_and_goes_plain_after_the_mark() {
    let (cfg, ticket, cache) = ticket();
    // B shares no TEP with A: it answers with a vacuous option at once.
    let other = Arc::new(HandshakeConfig {
        teps: vec![Tep::EcdheP521],
        ..HandshakeConfig::default()
    });
    let e = drive(
        early_client(&cfg, Some(ticket), REQUEST),
        server(&other, Some(&cache)),
    );
    assert!(matches!(
        e.client,
        ClientOutcome::Declined(DisableReason::PeerDeclined)
    ));
    assert!(matches!(
        e.server,
        ServerOutcome::Declined(DisableReason::NoCommonTep)
    ));
    assert!(
        e.server_rest.is_empty(),
        "frames and mark consumed, not data"
    );
}

#[test]
fn early_data_beyond_the_limit_waits_for_the_handshake() {
    let (cfg, ticket, cache) = ticket();
    let big = vec![7u8; 100_000];
    let a = early_client(&cfg, Some(ticket), &big);
    let n = a.early_data_len();
    assert_eq!(n, EARLY_DATA_LIMIT - MIN_FRAME_LEN);
    let e = drive(a, server(&cfg, Some(&cache)));
    let mut rest = e.server_rest;
    let (mut a, mut b) = encrypted(Ended {
        server_rest: Vec::new(),
        ..e
    });
    assert_eq!(receive(&mut b, &mut rest).0, big[..n]);
    assert_eq!(transfer(&mut a, &mut b, &big[n..], true).0, big[n..]);
}

/// A hostile client's `'E'` hello with a fresh-only offer, then `frames`.
fn hostile(frames: &[u8]) -> Result<usize, Error> {
    let cfg = Arc::new(HandshakeConfig::default());
    let mut input = marker(HelloKind::Early).to_vec();
    input.extend_from_slice(&[0x45, 0x03, Tep::EcdheCurve25519.id()]);
    input.extend_from_slice(frames);
    server(&cfg, None).read(&input)
}

#[test]
fn early_frames_are_bounded_and_delimited() {
    // Skipped frames beyond the limit: an error before they are buffered.
    let mut frames = Vec::new();
    for _ in 0..(EARLY_DATA_LIMIT / 1000 + 1) {
        frames.extend_from_slice(&[0, 0x03, 0xe5]);
        frames.extend_from_slice(&[0u8; 997]);
    }
    assert_eq!(
        hostile(&frames),
        Err(Error::EarlyData("more than the limit before the end mark"))
    );
    // A frame header too short for any frame.
    assert_eq!(hostile(&[0, 0, 5]), Err(Error::FrameTooShort(5)));
    // A well-delimited skip ends at the mark, and Init1 is judged next.
    let mut frames = vec![0, 0, 20];
    frames.extend_from_slice(&[0u8; 20]);
    frames.extend_from_slice(&END_OF_EARLY_DATA);
    frames.extend_from_slice(b"not an Init1");
    assert!(matches!(hostile(&frames), Err(Error::EarlyData(_))));
}

#[test]
fn tampered_or_ill_formed_early_frames_abort_the_accepting_side() {
    for corrupt in [
        |f: &mut Vec<u8>| *f.last_mut().unwrap() ^= 1,
        |f: &mut Vec<u8>| f[0] |= 1, // the rekey bit
    ] {
        let (cfg, ticket, cache) = ticket();
        let mut a = early_client(&cfg, Some(ticket), REQUEST);
        let mut flight = Vec::new();
        a.write_to(&mut flight);
        let mut b = server(&cfg, Some(&cache));
        let used = b.read(&flight).unwrap();
        let Some(ServerOutcome::Encrypted(mut s)) = b.outcome() else {
            panic!("resumed");
        };
        let mut frame = flight[used..].to_vec();
        corrupt(&mut frame);
        let err = s.opener.open_in_place(&mut frame).unwrap_err();
        assert!(
            matches!(err, Error::AuthenticationFailed | Error::EarlyData(_)),
            "{err:?}"
        );
    }
}

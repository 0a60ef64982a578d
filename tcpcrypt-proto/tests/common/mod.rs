//! Helpers shared by the protocol-core tests: drive two state machines
//! against each other, entirely in memory.

#![allow(dead_code)]

use std::sync::Arc;

use tcpcrypt_proto::{
    ClientHandshake, ClientOutcome, HandshakeConfig, OsRandom, ResumptionCache, ResumptionSecret,
    ServerHandshake, ServerOutcome, Session,
};

/// A deterministic generator for tests that need reproducible keys.
pub struct Counter(pub u8);

impl tcpcrypt_proto::RandomSource for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), tcpcrypt_proto::Error> {
        for b in dest {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}

pub fn client(config: &Arc<HandshakeConfig>, ticket: Option<ResumptionSecret>) -> ClientHandshake {
    ClientHandshake::new(config.clone(), ticket, Box::new(OsRandom)).expect("client starts")
}

pub fn server(
    config: &Arc<HandshakeConfig>,
    cache: Option<&Arc<ResumptionCache>>,
) -> ServerHandshake {
    ServerHandshake::new(config.clone(), cache.cloned(), Box::new(OsRandom)).expect("server starts")
}

/// What each side saw: its outcome and the bytes it did not consume.
pub struct Ended {
    pub client: ClientOutcome,
    pub server: ServerOutcome,
    /// Bytes from the server the client's handshake left unconsumed.
    pub client_rest: Vec<u8>,
    /// Bytes from the client the server's handshake left unconsumed.
    pub server_rest: Vec<u8>,
}

/// Runs both handshakes, delivering bytes in pieces given by `split` (the
/// size of the next piece for a given amount of pending bytes). Bytes in
/// `client_after` / `server_after` are written by each side once its
/// handshake ends, as an application would.
pub fn drive_with(
    mut c: ClientHandshake,
    mut s: ServerHandshake,
    split: &mut dyn FnMut(usize) -> usize,
) -> Ended {
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut c_out = None;
    let mut s_out = None;
    for _ in 0..100_000 {
        c.write_to(&mut to_server);
        s.write_to(&mut to_client);
        let mut progressed = false;
        if s_out.is_none() && !to_server.is_empty() {
            let n = split(to_server.len()).clamp(1, to_server.len());
            let used = s.read(&to_server[..n]).expect("server reads");
            to_server.drain(..used);
            progressed |= used > 0;
            s_out = s.outcome();
            progressed |= s_out.is_some();
        }
        if c_out.is_none() && !to_client.is_empty() {
            let n = split(to_client.len()).clamp(1, to_client.len());
            let used = c.read(&to_client[..n]).expect("client reads");
            to_client.drain(..used);
            progressed |= used > 0;
            c_out = c.outcome();
            progressed |= c_out.is_some();
        }
        c.write_to(&mut to_server);
        s.write_to(&mut to_client);
        if let (Some(_), Some(_)) = (&c_out, &s_out) {
            return Ended {
                client: c_out.unwrap(),
                server: s_out.unwrap(),
                client_rest: to_client,
                server_rest: to_server,
            };
        }
        assert!(progressed, "handshake stalled");
    }
    panic!("handshake did not end");
}

pub fn drive(c: ClientHandshake, s: ServerHandshake) -> Ended {
    drive_with(c, s, &mut |n| n)
}

pub fn encrypted(e: Ended) -> (Session, Session) {
    match (e.client, e.server) {
        (ClientOutcome::Encrypted(a), ServerOutcome::Encrypted(b)) => (*a, *b),
        (c, s) => panic!("not encrypted: client {c:?}, server {s:?}"),
    }
}

/// Sends `data` from one session to the other through frames and returns
/// what the receiver read.
pub fn transfer(from: &mut Session, to: &mut Session, data: &[u8], fin: bool) -> (Vec<u8>, bool) {
    let mut wire = Vec::new();
    let mut chunks: Vec<&[u8]> = data.chunks(tcpcrypt_proto::frame::MAX_DATA).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        from.sealer
            .seal(c, fin && i == last, &mut wire)
            .expect("seal");
    }
    receive(to, &mut wire)
}

/// Opens every frame in `wire`.
pub fn receive(to: &mut Session, wire: &mut [u8]) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut fin = false;
    let mut pos = 0;
    while pos < wire.len() {
        let f = to
            .opener
            .open_in_place(&mut wire[pos..])
            .expect("open")
            .expect("whole frame");
        got.extend_from_slice(&wire[pos + f.data.start..pos + f.data.end]);
        fin |= f.fin;
        if f.rekeyed {
            to.sealer.observe_peer_generation(to.opener.generation());
        }
        pos += f.frame_len;
    }
    (got, fin)
}

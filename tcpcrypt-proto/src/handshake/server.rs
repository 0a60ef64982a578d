//! The accepting side (host B).

use std::sync::Arc;

use super::Accumulator;
use crate::aead::AeadAlgorithm;
use crate::config::HandshakeConfig;
use crate::eno::EnoOption;
use crate::error::Error;
use crate::frame::{EARLY_DATA_LIMIT, END_OF_EARLY_DATA, FrameOpener, HEADER_LEN, MIN_FRAME_LEN};
use crate::hello::{self, HelloKind, HelloScan};
use crate::init::{Init1, Init2, InitKind, NONCE_LEN};
use crate::negotiation::{self, DisableReason, ResumptionData, ServerChoice};
use crate::random::RandomSource;
use crate::resumption::{ResumptionCache, ResumptionSecret, session_nonce};
use crate::schedule::SessionSecret;
use crate::session::{Keying, Negotiated, Role, Session};
use crate::tep::Tep;

/// How the accepting side's handshake ended.
#[derive(Debug)]
pub enum ServerOutcome {
    /// Encryption is on.
    Encrypted(Box<Session>),
    /// The client does not speak tcpcrypt. `prefix` holds the bytes the
    /// handshake consumed; with the bytes `read` did not consume, they are
    /// the client's application data, nothing lost.
    PlainClient {
        /// Consumed bytes, to hand to the application first.
        prefix: Vec<u8>,
    },
    /// The client speaks tcpcrypt but negotiation failed; we answered with a
    /// vacuous option and both sides continue in plain TCP on this
    /// connection. Unconsumed bytes are application data.
    Declined(DisableReason),
}

/// Why a connection failed when what followed declined 0-RTT frames was
/// no Init1: a connecting side that follows the protocol sends Init1
/// there (docs/PROTOCOL.md 7.1, rule 9).
const REPLAYED: &str = "no Init1 after the 0-RTT frames of a hello whose resumption was \
     declined (its identifier unknown or spent): a recorded connection played again, \
     or a peer that breaks the protocol";

/// What to do once a pipelined Init1 we will not use has been skipped.
enum AfterSkip {
    Declined(DisableReason),
    Resumed {
        secret: ResumptionSecret,
        sn: Vec<u8>,
    },
    AwaitInit1(Tep),
}

enum State {
    AwaitHello,
    /// Waiting for the Init1 for `tep`; our hello is sent.
    AwaitInit1 {
        tep: Tep,
        /// After 0-RTT frames this side declined: other bytes than Init1
        /// there are most likely a recorded connection played again.
        after_early: bool,
    },
    SkipInit1(AfterSkip),
    /// Skipping 0-RTT frames this side did not accept, up to A's
    /// end-of-early-data mark; our hello is sent.
    SkipEarly(AfterSkip),
    Done,
    Failed(Error),
}

/// The accepting side's handshake.
///
/// ```
/// use std::sync::Arc;
/// use tcpcrypt_proto::{HandshakeConfig, OsRandom, ServerHandshake, ServerOutcome};
///
/// let config = Arc::new(HandshakeConfig::default());
/// let mut hs = ServerHandshake::new(config, None, Box::new(OsRandom)).unwrap();
/// // A plain HTTP client: the first byte decides, and nothing is lost.
/// let request = b"GET / HTTP/1.1\r\n\r\n";
/// let used = hs.read(request).unwrap();
/// match hs.outcome() {
///     Some(ServerOutcome::PlainClient { prefix }) => {
///         assert_eq!([&prefix[..], &request[used..]].concat(), request);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
pub struct ServerHandshake {
    config: Arc<HandshakeConfig>,
    cache: Option<Arc<ResumptionCache>>,
    rng: Box<dyn RandomSource + Send>,
    state: State,
    acc: Accumulator,
    output: Vec<u8>,
    a_option: Option<EnoOption>,
    b_option: Option<EnoOption>,
    /// The TEP of A's pipelined Init1, if A sent one.
    pipelined: Option<Tep>,
    /// Bytes of A's stream consumed after its hello: the origin of A's frame
    /// offsets.
    received_after_hello: u64,
    outcome: Option<ServerOutcome>,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake").finish_non_exhaustive()
    }
}

impl ServerHandshake {
    /// Starts a handshake. `cache` is the listener's resumption cache.
    pub fn new(
        config: Arc<HandshakeConfig>,
        cache: Option<Arc<ResumptionCache>>,
        rng: Box<dyn RandomSource + Send>,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(ServerHandshake {
            config,
            cache,
            rng,
            state: State::AwaitHello,
            acc: Accumulator::default(),
            output: Vec::new(),
            a_option: None,
            b_option: None,
            pipelined: None,
            received_after_hello: 0,
            outcome: None,
        })
    }

    /// The answer template a listener gives the kernel carriage: this
    /// side's global suboption byte and its TEP identifiers, most
    /// preferred first. The kernel answers a SYN's ENO option with the
    /// global byte and the first of these TEPs that A offered exactly once,
    /// which is [`negotiation`'s](crate::ServerHandshake) choice for an
    /// offer without resumption.
    pub fn kernel_template(config: &HandshakeConfig) -> (u8, Vec<u8>) {
        (
            config.global(true),
            config.teps.iter().rev().map(|t| t.id()).collect(),
        )
    }

    /// The accepting side of a handshake whose ENO options the kernel
    /// carried: A's SYN option and the SYN-ACK answer the kernel sent. A
    /// fresh answer is checked against this configuration's own choice
    /// (they differ only when the listener's template and this
    /// configuration disagree: an error); A's Init1 is then the first
    /// payload byte. A resumption answer (the kernel found A's identifier
    /// half among those this side gave it) takes the secret from `cache`
    /// and checks the answer's half against it: the session is ready at
    /// once, and A's first frame is the first payload byte. A secret the
    /// cache no longer holds is [`Error::ResumptionForgotten`].
    pub fn kernel(
        config: Arc<HandshakeConfig>,
        cache: Option<Arc<ResumptionCache>>,
        syn_option: &[u8],
        synack_option: &[u8],
        rng: Box<dyn RandomSource + Send>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mismatch =
            Error::InvalidConfig("the kernel's SYN-ACK answer is not this configuration's choice");
        let a_option = EnoOption::parse(syn_option).map_err(|_| mismatch.clone())?;
        let answer = EnoOption::parse(synack_option).map_err(|_| mismatch.clone())?;
        let resumed = answer
            .teps()
            .last()
            .and_then(|s| Some((s.id(), ResumptionData::from_suboption(s)?)));
        let mut hs = ServerHandshake {
            config,
            cache,
            rng,
            state: State::Done,
            acc: Accumulator::default(),
            output: Vec::new(),
            a_option: None,
            b_option: None,
            pipelined: None,
            received_after_hello: 0,
            outcome: None,
        };
        if let Some((tep_id, ours)) = resumed {
            let theirs = a_option
                .teps()
                .iter()
                .filter(|s| s.id() == tep_id)
                .find_map(ResumptionData::from_suboption)
                .ok_or(mismatch.clone())?;
            let tep = Tep::from_id(tep_id).ok_or(mismatch.clone())?;
            let secret = hs
                .cache
                .as_ref()
                .and_then(|c| c.take_for(&theirs.half, tep))
                .ok_or(Error::ResumptionForgotten)?;
            if secret.own_half(hs.config.backend) != ours.half {
                return Err(mismatch);
            }
            let expected = negotiation::server_option(&hs.config, Some((tep, Some(&ours))))?;
            if expected.as_bytes() != synack_option {
                return Err(mismatch);
            }
            let sn = session_nonce(secret.original_role, &ours.nonce, &theirs.nonce);
            hs.a_option = Some(a_option);
            hs.b_option = Some(expected);
            hs.finish_resumed(secret, &sn);
            return Ok(hs);
        }
        let tep = match negotiation::server_choose(&hs.config, &a_option, None) {
            Ok(ServerChoice::Fresh(tep)) => tep,
            _ => return Err(mismatch),
        };
        let b_option = negotiation::server_option(&hs.config, Some((tep, None)))?;
        if b_option.as_bytes() != synack_option {
            return Err(mismatch);
        }
        hs.state = State::AwaitInit1 {
            tep,
            after_early: false,
        };
        hs.a_option = Some(a_option);
        hs.b_option = Some(b_option);
        Ok(hs)
    }

    /// Appends the bytes to send to `out`.
    pub fn write_to(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    /// Whether there are bytes to send.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether the handshake has ended (an outcome or an error).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Failed(_))
    }

    /// Whether a whole hello has arrived (after which silence is an error,
    /// not a plain client).
    pub fn hello_received(&self) -> bool {
        !matches!(self.state, State::AwaitHello)
    }

    /// Takes the outcome, once the handshake has one.
    pub fn outcome(&mut self) -> Option<ServerOutcome> {
        self.outcome.take()
    }

    /// Hands in received bytes; returns how many were consumed.
    pub fn read(&mut self, input: &[u8]) -> Result<usize, Error> {
        let mut pos = 0;
        let result = self.advance(input, &mut pos);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result.map(|()| pos)
    }

    /// The client closed its side. Before a whole marker, the client was
    /// plain (and its bytes are returned); later it is an error.
    pub fn peer_eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::AwaitHello if self.acc.buf.len() < hello::MARKER_LEN => {
                self.plain_client();
                Ok(())
            }
            State::Done => Ok(()),
            State::Failed(ref e) => Err(e.clone()),
            _ => {
                self.state = State::Failed(Error::HandshakeEof);
                Err(Error::HandshakeEof)
            }
        }
    }

    /// The caller's wait for a client hello ended (the application wants to
    /// speak first). Before a whole marker the client is plain; later it is
    /// an error (a slow or stalled handshake).
    pub fn peer_silent(&mut self) -> Result<(), Error> {
        match self.state {
            State::AwaitHello if self.acc.buf.len() < hello::MARKER_LEN => {
                self.plain_client();
                Ok(())
            }
            State::Done => Ok(()),
            _ => Err(Error::InvalidState(
                "handshake timed out after the client's hello",
            )),
        }
    }

    fn plain_client(&mut self) {
        let prefix = std::mem::take(&mut self.acc.buf);
        self.finish(ServerOutcome::PlainClient { prefix });
    }

    fn finish(&mut self, outcome: ServerOutcome) {
        self.state = State::Done;
        self.outcome = Some(outcome);
    }

    fn advance(&mut self, input: &[u8], pos: &mut usize) -> Result<(), Error> {
        loop {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Failed(e) => return Err(e.clone()),
                State::AwaitHello => {
                    if !self.read_hello(input, pos)? {
                        return Ok(());
                    }
                }
                State::SkipInit1(_) => {
                    let Some(skipped) = self.acc.init_message(InitKind::Init1, input, pos)? else {
                        return Ok(());
                    };
                    self.received_after_hello += skipped.len() as u64;
                    let State::SkipInit1(next) = std::mem::replace(&mut self.state, State::Done)
                    else {
                        unreachable!()
                    };
                    match next {
                        AfterSkip::Declined(r) => {
                            self.send_hello(None)?;
                            self.finish(ServerOutcome::Declined(r));
                        }
                        AfterSkip::Resumed { secret, sn } => self.finish_resumed(secret, &sn),
                        AfterSkip::AwaitInit1(tep) => {
                            self.state = State::AwaitInit1 {
                                tep,
                                after_early: false,
                            };
                        }
                    }
                }
                State::SkipEarly(_) => {
                    if !self.skip_early_frame(input, pos)? {
                        return Ok(());
                    }
                }
                State::AwaitInit1 { after_early, .. } => {
                    let init1 = match self.acc.init_message(InitKind::Init1, input, pos) {
                        Ok(Some(init1)) => init1,
                        Ok(None) => return Ok(()),
                        Err(Error::BadMagic(_)) if *after_early => {
                            return Err(Error::EarlyData(REPLAYED));
                        }
                        Err(e) => return Err(e),
                    };
                    self.received_after_hello += init1.len() as u64;
                    self.on_init1(init1)?;
                }
            }
        }
    }

    /// Returns `true` when the state moved on.
    fn read_hello(&mut self, input: &[u8], pos: &mut usize) -> Result<bool, Error> {
        const EXPECTED: &[HelloKind] = hello::CLIENT_KINDS;
        loop {
            let before = self.acc.buf.len();
            let need = if before < hello::MARKER_LEN {
                before + 1
            } else if before < hello::MARKER_LEN + 2 {
                hello::MARKER_LEN + 2
            } else {
                hello::MARKER_LEN + self.acc.buf[hello::MARKER_LEN + 1] as usize
            };
            self.acc.fill(need, input, pos);
            match hello::scan(&self.acc.buf, EXPECTED)? {
                HelloScan::NotAHello { .. } => {
                    self.plain_client();
                    return Ok(true);
                }
                HelloScan::Incomplete if self.acc.buf.len() == before => return Ok(false),
                HelloScan::Incomplete => continue,
                HelloScan::Hello { kind, option, .. } => {
                    self.acc.buf.clear();
                    self.on_hello(kind, &option)?;
                    return Ok(true);
                }
            }
        }
    }

    fn on_hello(&mut self, kind: HelloKind, option: &[u8]) -> Result<(), Error> {
        if kind == HelloKind::Early {
            return self.on_early_hello(option);
        }
        let pipelined = kind == HelloKind::Pipelined;
        let choice = match EnoOption::parse(option) {
            Err(_) => Err(DisableReason::IllFormedOption),
            Ok(a_option) => {
                self.pipelined = pipelined
                    .then(|| a_option.teps().iter().rev().find(|s| !s.v()))
                    .flatten()
                    .and_then(|s| Tep::from_id(s.id()));
                let choice =
                    negotiation::server_choose(&self.config, &a_option, self.cache.as_deref());
                self.a_option = Some(a_option);
                choice
            }
        };
        let after = match choice {
            // A decline is answered only once a pipelined Init1 has been
            // skipped: if it cannot be (an option whose length a middlebox
            // changed swallows its header), the connection fails before
            // any answer, and A falls back on a new connection, instead of
            // going plain on one we cannot carry on (docs/PROTOCOL.md 3.3).
            Err(reason) if pipelined => AfterSkip::Declined(reason),
            Err(reason) => {
                self.send_hello(None)?;
                AfterSkip::Declined(reason)
            }
            Ok(ServerChoice::Resume(secret, theirs)) => {
                let sn = self.answer_resumption(&secret, &theirs)?;
                AfterSkip::Resumed { secret, sn }
            }
            Ok(ServerChoice::Fresh(tep)) if pipelined && self.pipelined == Some(tep) => {
                // Our hello goes out now, before Init1 is judged: if Init1
                // is bad, A sees a tcpcrypt peer abort, not a legacy server.
                self.send_hello(Some((tep, None)))?;
                self.state = State::AwaitInit1 {
                    tep,
                    after_early: false,
                };
                return Ok(());
            }
            Ok(ServerChoice::Fresh(tep)) => {
                self.send_hello(Some((tep, None)))?;
                AfterSkip::AwaitInit1(tep)
            }
        };
        if pipelined {
            self.state = State::SkipInit1(after);
        } else {
            match after {
                AfterSkip::Declined(r) => self.finish(ServerOutcome::Declined(r)),
                AfterSkip::Resumed { secret, sn } => self.finish_resumed(secret, &sn),
                AfterSkip::AwaitInit1(tep) => {
                    self.state = State::AwaitInit1 {
                        tep,
                        after_early: false,
                    }
                }
            }
        }
        Ok(())
    }

    /// A hello followed by 0-RTT frames (docs/PROTOCOL.md 7.1). Our hello
    /// goes out at once whatever the choice, since A ends its early frames
    /// only once it has it: a resumption this side honours opens them under
    /// the early key; otherwise they are skipped up to the mark, and A
    /// sends the same bytes again after a fresh exchange or in plain.
    fn on_early_hello(&mut self, option: &[u8]) -> Result<(), Error> {
        let choice = match EnoOption::parse(option) {
            Err(_) => Err(DisableReason::IllFormedOption),
            Ok(a_option) => {
                let choice =
                    negotiation::server_choose(&self.config, &a_option, self.cache.as_deref());
                self.a_option = Some(a_option);
                choice
            }
        };
        let after = match choice {
            Ok(ServerChoice::Resume(secret, theirs)) if self.config.early_data => {
                let sn = self.answer_resumption(&secret, &theirs)?;
                let early = secret
                    .secret
                    .early_master_key(self.config.backend, &theirs.nonce);
                self.finish_resumed_with(secret, &sn, Some(early));
                return Ok(());
            }
            // 0-RTT refused: the secret is spent, the same TEP goes fresh.
            Ok(ServerChoice::Resume(secret, _)) => {
                self.send_hello(Some((secret.tep, None)))?;
                AfterSkip::AwaitInit1(secret.tep)
            }
            Ok(ServerChoice::Fresh(tep)) => {
                self.send_hello(Some((tep, None)))?;
                AfterSkip::AwaitInit1(tep)
            }
            Err(reason) => {
                self.send_hello(None)?;
                AfterSkip::Declined(reason)
            }
        };
        self.state = State::SkipEarly(after);
        Ok(())
    }

    /// Skips one 0-RTT frame, or the end-of-early-data mark (then the state
    /// moves on). Returns `true` when a whole one was consumed.
    fn skip_early_frame(&mut self, input: &[u8], pos: &mut usize) -> Result<bool, Error> {
        if !self.acc.fill(HEADER_LEN, input, pos) {
            return Ok(false);
        }
        if self.acc.buf[..HEADER_LEN] == END_OF_EARLY_DATA {
            self.acc.buf.clear();
            self.received_after_hello += HEADER_LEN as u64;
            let State::SkipEarly(after) = std::mem::replace(&mut self.state, State::Done) else {
                unreachable!("skip_early_frame is called in SkipEarly")
            };
            match after {
                AfterSkip::Declined(r) => self.finish(ServerOutcome::Declined(r)),
                AfterSkip::AwaitInit1(tep) => {
                    self.state = State::AwaitInit1 {
                        tep,
                        after_early: true,
                    }
                }
                AfterSkip::Resumed { secret, sn } => self.finish_resumed(secret, &sn),
            }
            return Ok(true);
        }
        let len = FrameOpener::frame_len(&self.acc.buf).expect("a whole header");
        if len < MIN_FRAME_LEN {
            return Err(Error::FrameTooShort((len - HEADER_LEN) as u16));
        }
        if self.received_after_hello + len as u64 > EARLY_DATA_LIMIT as u64 {
            return Err(Error::EarlyData("more than the limit before the end mark"));
        }
        if !self.acc.fill(len, input, pos) {
            return Ok(false);
        }
        self.acc.buf.clear();
        self.received_after_hello += len as u64;
        Ok(true)
    }

    fn send_hello(&mut self, choice: Option<(Tep, Option<&ResumptionData>)>) -> Result<(), Error> {
        let option = negotiation::server_option(&self.config, choice)?;
        hello::encode(HelloKind::B, &option, &mut self.output);
        self.b_option = Some(option);
        Ok(())
    }

    fn negotiated(&self, tep: Tep, aead: AeadAlgorithm, resumed: bool) -> Negotiated {
        let a = self.a_option.as_ref().expect("hello received");
        let b = self.b_option.as_ref().expect("hello sent");
        let tep_byte = b.teps().last().expect("one TEP").byte;
        Negotiated {
            role: Role::B,
            tep,
            tep_byte,
            aead,
            transcript: [a.as_bytes(), b.as_bytes()].concat(),
            local_global: b.global(),
            peer_global: a.global(),
            resumed,
        }
    }

    /// Sends our resumption suboption; returns `sn[i]`.
    fn answer_resumption(
        &mut self,
        secret: &ResumptionSecret,
        theirs: &ResumptionData,
    ) -> Result<Vec<u8>, Error> {
        let mut nonce = vec![0u8; self.config.resumption.nonce_len];
        self.rng.fill(&mut nonce)?;
        let ours = ResumptionData {
            half: secret.own_half(self.config.backend),
            nonce,
        };
        self.send_hello(Some((secret.tep, Some(&ours))))?;
        Ok(session_nonce(
            secret.original_role,
            &ours.nonce,
            &theirs.nonce,
        ))
    }

    /// Keys a resumed session once A's frames can start (after any skipped
    /// pipelined Init1).
    fn finish_resumed(&mut self, secret: ResumptionSecret, sn: &[u8]) {
        self.finish_resumed_with(secret, sn, None);
    }

    /// Keys a resumed session whose opener first opens A's 0-RTT frames
    /// under `early`, when given.
    fn finish_resumed_with(
        &mut self,
        secret: ResumptionSecret,
        sn: &[u8],
        early: Option<crate::schedule::MasterKey>,
    ) {
        let negotiated = self.negotiated(secret.tep, secret.aead, true);
        let mut session = Session::key(
            Keying {
                backend: self.config.backend,
                secret: &secret.secret,
                index: secret.index,
                sn,
                original_role: secret.original_role,
                send_offset: 0,
                recv_offset: self.received_after_hello,
                cache_next: self.config.resumption.cache,
            },
            negotiated,
        );
        if let Some(early) = early {
            session.opener.expect_early(early);
            session.info.zero_rtt = true;
        }
        let session = self.cache_next(session);
        self.finish(ServerOutcome::Encrypted(Box::new(session)));
    }

    /// The accepting side keeps `ss[i+1]` in its own cache.
    fn cache_next(&self, mut session: Session) -> Session {
        if let (Some(cache), Some(next)) = (&self.cache, session.resumption.take()) {
            session.info.cached_resumption = cache.insert(self.config.backend, next);
        }
        session
    }

    fn on_init1(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        let State::AwaitInit1 { tep, .. } = std::mem::replace(&mut self.state, State::Done) else {
            unreachable!("on_init1 is called in AwaitInit1");
        };
        let init1 = Init1::decode(tep, &bytes)?;
        let offered: Vec<AeadAlgorithm> = init1
            .sym_ciphers
            .iter()
            .filter_map(|&id| AeadAlgorithm::from_id(id))
            .collect();
        let aead = *self
            .config
            .aeads
            .iter()
            .rev()
            .find(|a| offered.contains(a))
            .ok_or(Error::NoAcceptableAead)?;
        let key = self.config.ephemeral_key(tep, &mut *self.rng)?;
        let es = key.agree(&init1.pub_field, self.config.backend)?;
        let mut n_b = [0u8; NONCE_LEN];
        self.rng.fill(&mut n_b)?;
        let init2 = Init2 {
            sym_cipher: aead.id(),
            nonce: n_b,
            pub_field: key.pub_field().to_vec(),
        }
        .encode();
        self.output.extend_from_slice(&init2);
        let negotiated = self.negotiated(tep, aead, false);
        let ss0 = SessionSecret::from_key_exchange(
            self.config.backend,
            &init1.nonce,
            &negotiated.transcript,
            &bytes,
            &init2,
            &es,
        );
        let session = Session::key(
            Keying {
                backend: self.config.backend,
                secret: &ss0,
                index: 0,
                sn: &[],
                original_role: Role::B,
                send_offset: init2.len() as u64,
                recv_offset: self.received_after_hello,
                cache_next: self.config.resumption.cache,
            },
            negotiated,
        );
        let session = self.cache_next(session);
        self.finish(ServerOutcome::Encrypted(Box::new(session)));
        Ok(())
    }
}

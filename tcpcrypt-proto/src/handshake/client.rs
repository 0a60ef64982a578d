//! The connecting side (host A).

use std::sync::Arc;

use super::Accumulator;
use crate::aead::AeadAlgorithm;
use crate::config::HandshakeConfig;
use crate::eno::EnoOption;
use crate::eno::V_BIT;
use crate::error::Error;
use crate::frame::{EARLY_DATA_LIMIT, END_OF_EARLY_DATA, FrameSealer, MIN_FRAME_LEN};
use crate::hello::{self, HelloKind, HelloScan};
use crate::init::{Init1, Init2, InitKind, NONCE_LEN};
use crate::negotiation::{self, ClientOffer, ClientResult, DisableReason};
use crate::random::RandomSource;
use crate::resumption::{ResumptionSecret, session_nonce};
use crate::schedule::SessionSecret;
use crate::session::{Keying, Negotiated, Role, Session};
use crate::tep::{EphemeralKey, Tep};

/// Why the connecting side concluded that the server does not speak
/// tcpcrypt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyEvidence {
    /// The server sent bytes that are not a B hello (kept for diagnostics;
    /// the connection is spoiled, since the server has read our hello).
    Bytes(Vec<u8>),
    /// The server closed the connection before answering.
    Eof,
    /// The server said nothing before the caller's deadline.
    Silence,
}

/// How the connecting side's handshake ended.
#[derive(Debug)]
pub enum ClientOutcome {
    /// Encryption is on.
    Encrypted(Box<Session>),
    /// The server is not a tcpcrypt peer. The connection is spoiled: the
    /// caller connects again in plain TCP (or fails, if encryption is
    /// mandatory).
    Legacy(LegacyEvidence),
    /// The server speaks tcpcrypt and answered with a vacuous option: both
    /// sides continue in plain TCP on this same connection. The bytes after
    /// B's hello (not consumed by `read`) are application data.
    Declined(DisableReason),
    /// B answered, but ENO must be disabled by an RFC rule that B cannot
    /// know about (mismatched resumption half, role clash, mandatory
    /// application-aware mode, no valid TEP). B may already be encrypting,
    /// so this connection is spoiled and the caller connects again.
    Disabled(DisableReason),
    /// The server speaks tcpcrypt, but our hello reached it after it had
    /// taken us for a plain client (the hello was lost, and lost again):
    /// it answered with the late marker instead of a hello, delivered
    /// nothing and sent nothing else. The connection is spoiled; the
    /// caller connects again with a new hello (docs/PROTOCOL.md 3.4). The
    /// marker is not authenticated: 0-RTT data that left may still have
    /// been delivered, as after any failure before B's hello.
    HelloLate,
}

enum State {
    AwaitHello,
    /// Kernel carriage: the SYN carried our option; the kernel's report of
    /// B's SYN-ACK option comes through `kernel_synack`.
    AwaitSynAck,
    AwaitInit2 {
        tep: Tep,
        key: EphemeralKey,
        init1: Vec<u8>,
        n_a: [u8; NONCE_LEN],
        b_option: EnoOption,
        tep_byte: u8,
    },
    Done,
    Failed(Error),
}

/// The connecting side's handshake.
///
/// ```
/// use std::sync::Arc;
/// use tcpcrypt_proto::{ClientHandshake, HandshakeConfig, OsRandom};
///
/// let config = Arc::new(HandshakeConfig::default());
/// let mut hs = ClientHandshake::new(config, None, Box::new(OsRandom)).unwrap();
/// let mut hello = Vec::new();
/// hs.write_to(&mut hello);
/// assert!(hello.starts_with(b"\xE5ENO\x01P\r\n")); // hello with a pipelined Init1
/// ```
pub struct ClientHandshake {
    config: Arc<HandshakeConfig>,
    rng: Box<dyn RandomSource + Send>,
    offer: ClientOffer,
    state: State,
    acc: Accumulator,
    output: Vec<u8>,
    /// Bytes sent after our hello (Init1 messages), the origin of our frame
    /// offsets.
    sent_after_hello: u64,
    /// The pipelined Init1 and its key, if one was sent.
    pipelined: Option<(EphemeralKey, Vec<u8>, [u8; NONCE_LEN])>,
    /// Application bytes sealed as 0-RTT frames after an `'E'` hello; the
    /// end-of-early-data mark is still to be sent while `early_open`.
    early_data_len: usize,
    early_open: bool,
    outcome: Option<ClientOutcome>,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

/// A resumption offer's secret with a fresh nonce of the configured length.
fn with_nonce(
    config: &HandshakeConfig,
    resume: Option<ResumptionSecret>,
    rng: &mut dyn RandomSource,
) -> Result<Option<(ResumptionSecret, Vec<u8>)>, Error> {
    resume
        .map(|secret| {
            let mut nonce = vec![0u8; config.resumption.nonce_len];
            rng.fill(&mut nonce)?;
            Ok((secret, nonce))
        })
        .transpose()
}

fn make_init1(
    config: &HandshakeConfig,
    tep: Tep,
    rng: &mut dyn RandomSource,
) -> Result<(EphemeralKey, Vec<u8>, [u8; NONCE_LEN]), Error> {
    let key = config.ephemeral_key(tep, rng)?;
    let mut n_a = [0u8; NONCE_LEN];
    rng.fill(&mut n_a)?;
    let init1 = Init1 {
        sym_ciphers: config.aeads.iter().map(|a| a.id()).collect(),
        nonce: n_a,
        pub_field: key.pub_field().to_vec(),
    }
    .encode()?;
    Ok((key, init1, n_a))
}

impl ClientHandshake {
    /// Starts a handshake, offering `resume` (a secret cached from an
    /// earlier session with the same peer) if given. The hello, and a
    /// pipelined Init1, are ready to send at once.
    pub fn new(
        config: Arc<HandshakeConfig>,
        resume: Option<ResumptionSecret>,
        rng: Box<dyn RandomSource + Send>,
    ) -> Result<Self, Error> {
        Self::with_early_data(config, resume, &[], rng)
    }

    /// Like [`new`](Self::new), with the application's first bytes. When
    /// `resume` is offered and 0-RTT is on (`HandshakeConfig::early_data`),
    /// up to [`EARLY_DATA_LIMIT`] bytes of frames carry the start of `data`
    /// under the resumed secret right after the hello (`docs/PROTOCOL.md`
    /// 7.1); [`early_data_len`](Self::early_data_len) says how many bytes
    /// of `data` that is. They were delivered if the outcome is a session
    /// whose `info.zero_rtt` is set; in every other outcome the caller
    /// sends them again, after the handshake or on the new connection.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tcpcrypt_proto::{ClientHandshake, HandshakeConfig, OsRandom};
    ///
    /// let config = Arc::new(HandshakeConfig::default());
    /// // Without a resumption secret nothing can be sent before the handshake.
    /// let hs = ClientHandshake::with_early_data(config, None, b"GET /", Box::new(OsRandom)).unwrap();
    /// assert_eq!(hs.early_data_len(), 0);
    /// ```
    pub fn with_early_data(
        config: Arc<HandshakeConfig>,
        resume: Option<ResumptionSecret>,
        data: &[u8],
        mut rng: Box<dyn RandomSource + Send>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let resume = with_nonce(&config, resume, &mut *rng)?;
        let offer = negotiation::client_offer(&config, resume)?;
        let mut output = Vec::new();
        let pipelined = match offer.pipelined {
            Some(tep) => Some(make_init1(&config, tep, &mut *rng)?),
            None => None,
        };
        let early = offer
            .resumption
            .as_ref()
            .filter(|_| config.early_data && !data.is_empty());
        let kind = if early.is_some() {
            HelloKind::Early
        } else if pipelined.is_some() {
            HelloKind::Pipelined
        } else {
            HelloKind::A
        };
        hello::encode(kind, &offer.option, &mut output);
        let mut sent_after_hello = 0;
        if let Some((_, init1, _)) = &pipelined {
            output.extend_from_slice(init1);
            sent_after_hello = init1.len() as u64;
        }
        let mut early_data_len = 0;
        if let Some((secret, ours)) = early {
            // One frame: the limit is far below a frame's largest size.
            early_data_len = data.len().min(EARLY_DATA_LIMIT - MIN_FRAME_LEN);
            let key = secret.secret.early_master_key(config.backend, &ours.nonce);
            let direction = secret.original_role.sending_direction();
            let mut sealer = FrameSealer::new(config.backend, key, direction, secret.aead, 0);
            let before = output.len();
            sealer.seal(&data[..early_data_len], false, &mut output)?;
            sent_after_hello = (output.len() - before) as u64;
        }
        Ok(ClientHandshake {
            config,
            rng,
            offer,
            state: State::AwaitHello,
            acc: Accumulator::default(),
            output,
            sent_after_hello,
            pipelined,
            early_data_len,
            early_open: early_data_len > 0,
            outcome: None,
        })
    }

    /// How many bytes of the data given to
    /// [`with_early_data`](Self::with_early_data) were sent as 0-RTT
    /// frames (0 when no resumption was offered or 0-RTT is off).
    pub fn early_data_len(&self) -> usize {
        self.early_data_len
    }

    /// Starts a handshake whose ENO options the kernel carries in the SYN
    /// and SYN-ACK (RFC 8547 proper; `docs/PROTOCOL.md`, "The kernel
    /// carriage"). Nothing is sent in the byte stream until B's option is
    /// known: give [`syn_option`](Self::syn_option) to the kernel before
    /// connecting, then B's answer to [`kernel_synack`](Self::kernel_synack);
    /// Init1 is then the first payload byte (or, resumed, A's first frame),
    /// and frame offsets count from it. `resume` is offered in the SYN when
    /// its suboption fits the SYN's 20 bytes of room (alone if need be;
    /// `docs/PROTOCOL.md` 3.5); it is spent either way.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tcpcrypt_proto::{ClientHandshake, HandshakeConfig, OsRandom};
    ///
    /// let config = Arc::new(HandshakeConfig::default());
    /// let mut hs = ClientHandshake::kernel(config, None, Box::new(OsRandom)).unwrap();
    /// assert_eq!(hs.syn_option()[0], 69); // kind 69: ENO
    /// assert!(!hs.wants_write()); // no hello in the stream
    /// ```
    pub fn kernel(
        config: Arc<HandshakeConfig>,
        resume: Option<ResumptionSecret>,
        mut rng: Box<dyn RandomSource + Send>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let resume = with_nonce(&config, resume, &mut *rng)?;
        let offer =
            negotiation::client_offer_within(&config, resume, negotiation::KERNEL_OPTION_ROOM)?;
        Ok(ClientHandshake {
            config,
            rng,
            offer,
            state: State::AwaitSynAck,
            acc: Accumulator::default(),
            output: Vec::new(),
            sent_after_hello: 0,
            pipelined: None,
            early_data_len: 0,
            early_open: false,
            outcome: None,
        })
    }

    /// The SYN-form ENO option this side offers (kind and length
    /// included).
    pub fn syn_option(&self) -> &[u8] {
        self.offer.option.as_bytes()
    }

    /// Kernel carriage: B's SYN-ACK option, as the kernel received it.
    /// Afterwards either Init1 is ready to send, or the outcome says the
    /// connection is plain (B declined, or ENO must be disabled: nothing
    /// was sent in the stream, so plain TCP on this same connection).
    pub fn kernel_synack(&mut self, synack_option: &[u8]) -> Result<(), Error> {
        if !matches!(self.state, State::AwaitSynAck) {
            return Err(Error::InvalidState(
                "kernel_synack outside the kernel carriage",
            ));
        }
        self.state = State::AwaitHello;
        let result = self.on_hello(synack_option);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
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

    /// Takes the outcome, once the handshake has one.
    pub fn outcome(&mut self) -> Option<ClientOutcome> {
        self.outcome.take()
    }

    /// The resumption secret of a kernel-carriage offer whose SYN never
    /// carried it (the program was not attached to the socket, or left the
    /// option out): it was not used, so it may be offered again (RFC 8548
    /// 3.5 counts the offers made). `None` once the SYN-ACK was handed in.
    pub fn into_unsent_resumption(self) -> Option<ResumptionSecret> {
        match self.state {
            State::AwaitSynAck => self.offer.resumption.map(|(secret, _)| secret),
            _ => None,
        }
    }

    /// Whether a resumption secret was offered (it is spent either way).
    pub fn offered_resumption(&self) -> bool {
        self.offer.resumption.is_some()
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

    /// The server closed the connection.
    pub fn peer_eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::AwaitHello => {
                self.finish(ClientOutcome::Legacy(LegacyEvidence::Eof));
                Ok(())
            }
            State::Done => Ok(()),
            State::Failed(ref e) => Err(e.clone()),
            State::AwaitSynAck => Err(Error::InvalidState(
                "kernel carriage: the SYN-ACK's option was not handed in",
            )),
            State::AwaitInit2 { .. } => {
                self.state = State::Failed(Error::HandshakeEof);
                Err(Error::HandshakeEof)
            }
        }
    }

    /// The caller's deadline for the server's hello passed. Before any
    /// hello byte this makes the server legacy; later it is an error.
    pub fn peer_silent(&mut self) -> Result<(), Error> {
        match self.state {
            State::AwaitHello if self.acc.buf.is_empty() => {
                self.finish(ClientOutcome::Legacy(LegacyEvidence::Silence));
                Ok(())
            }
            State::AwaitHello => {
                let bytes = std::mem::take(&mut self.acc.buf);
                self.finish(ClientOutcome::Legacy(LegacyEvidence::Bytes(bytes)));
                Ok(())
            }
            State::Done => Ok(()),
            _ => Err(Error::InvalidState(
                "handshake timed out after the server's hello",
            )),
        }
    }

    fn finish(&mut self, outcome: ClientOutcome) {
        self.state = State::Done;
        self.outcome = Some(outcome);
    }

    fn advance(&mut self, input: &[u8], pos: &mut usize) -> Result<(), Error> {
        loop {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Failed(e) => return Err(e.clone()),
                State::AwaitSynAck => {
                    return Err(Error::InvalidState(
                        "kernel carriage: the SYN-ACK's option was not handed in",
                    ));
                }
                State::AwaitHello => {
                    if !self.read_hello(input, pos)? {
                        return Ok(());
                    }
                }
                State::AwaitInit2 { .. } => {
                    let Some(init2) = self.acc.init_message(InitKind::Init2, input, pos)? else {
                        return Ok(());
                    };
                    self.on_init2(init2)?;
                }
            }
        }
    }

    /// Returns `true` when the state moved on.
    fn read_hello(&mut self, input: &[u8], pos: &mut usize) -> Result<bool, Error> {
        loop {
            let need = if self.acc.buf.len() < hello::MARKER_LEN + 2 {
                hello::MARKER_LEN + 2
            } else {
                hello::MARKER_LEN + self.acc.buf[hello::MARKER_LEN + 1] as usize
            };
            let before = self.acc.buf.len();
            // Take one byte at a time until the marker is complete, so that
            // a deviating byte is noticed without waiting for more.
            let step = if before < hello::MARKER_LEN {
                before + 1
            } else {
                need
            };
            self.acc.fill(step.min(need), input, pos);
            match hello::scan(&self.acc.buf, hello::SERVER_KINDS)? {
                HelloScan::NotAHello { .. } => {
                    let bytes = std::mem::take(&mut self.acc.buf);
                    self.finish(ClientOutcome::Legacy(LegacyEvidence::Bytes(bytes)));
                    return Ok(true);
                }
                HelloScan::Incomplete if self.acc.buf.len() == before => return Ok(false),
                HelloScan::Incomplete => continue,
                HelloScan::Hello {
                    kind: HelloKind::Late,
                    ..
                } => {
                    self.acc.buf.clear();
                    self.finish(ClientOutcome::HelloLate);
                    return Ok(true);
                }
                HelloScan::Hello { option, .. } => {
                    self.acc.buf.clear();
                    self.on_hello(&option)?;
                    return Ok(true);
                }
            }
        }
    }

    fn on_hello(&mut self, option: &[u8]) -> Result<(), Error> {
        let b_option = match EnoOption::parse(option) {
            Ok(o) => o,
            Err(_) => {
                self.finish(ClientOutcome::Disabled(DisableReason::IllFormedOption));
                return Ok(());
            }
        };
        let result = negotiation::client_interpret(&self.config, &self.offer, &b_option);
        if matches!(
            result,
            Ok(ClientResult::Fresh(..)) | Err(DisableReason::PeerDeclined)
        ) {
            // B skipped the 0-RTT frames and waits for the mark before
            // Init1 or plain bytes (docs/PROTOCOL.md 7.1). After an
            // accepted resumption it goes with the session's first frame.
            self.end_early_data();
        }
        match result {
            Err(DisableReason::PeerDeclined) => {
                self.finish(ClientOutcome::Declined(DisableReason::PeerDeclined));
            }
            Err(reason) => self.finish(ClientOutcome::Disabled(reason)),
            Ok(ClientResult::Resume(theirs)) => {
                let (secret, ours) = self
                    .offer
                    .resumption
                    .take()
                    .expect("resumption was offered");
                let sn = session_nonce(secret.original_role, &ours.nonce, &theirs.nonce);
                let owe_mark = std::mem::take(&mut self.early_open);
                if owe_mark {
                    self.sent_after_hello += END_OF_EARLY_DATA.len() as u64;
                }
                let tep_byte = secret.tep.id() | V_BIT;
                let negotiated = Negotiated {
                    role: Role::A,
                    tep: secret.tep,
                    tep_byte,
                    aead: secret.aead,
                    transcript: [self.offer.option.as_bytes(), b_option.as_bytes()].concat(),
                    local_global: self.offer.option.global(),
                    peer_global: b_option.global(),
                    resumed: true,
                };
                let session = Session::key(
                    Keying {
                        backend: self.config.backend,
                        secret: &secret.secret,
                        index: secret.index,
                        sn: &sn,
                        original_role: secret.original_role,
                        send_offset: self.sent_after_hello,
                        recv_offset: 0,
                        cache_next: self.config.resumption.cache,
                    },
                    negotiated,
                );
                let mut session = session;
                session.info.zero_rtt = self.early_data_len > 0;
                if owe_mark {
                    session.sealer.owe_end_of_early_data();
                }
                self.finish(ClientOutcome::Encrypted(Box::new(session)));
            }
            Ok(ClientResult::Fresh(tep, tep_byte)) => {
                let (key, init1, n_a) = match self.pipelined.take() {
                    Some(p) if p.0.tep() == tep => p,
                    _ => {
                        let fresh = make_init1(&self.config, tep, &mut *self.rng)?;
                        self.output.extend_from_slice(&fresh.1);
                        self.sent_after_hello += fresh.1.len() as u64;
                        fresh
                    }
                };
                self.state = State::AwaitInit2 {
                    tep,
                    key,
                    init1,
                    n_a,
                    b_option,
                    tep_byte,
                };
            }
        }
        Ok(())
    }

    /// Sends the end-of-early-data mark after 0-RTT frames.
    fn end_early_data(&mut self) {
        if std::mem::take(&mut self.early_open) {
            self.output.extend_from_slice(&END_OF_EARLY_DATA);
            self.sent_after_hello += END_OF_EARLY_DATA.len() as u64;
        }
    }

    fn on_init2(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        let State::AwaitInit2 {
            tep,
            key,
            init1,
            n_a,
            b_option,
            tep_byte,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("on_init2 is called in AwaitInit2");
        };
        let init2 = Init2::decode(tep, &bytes)?;
        let aead = AeadAlgorithm::from_id(init2.sym_cipher)
            .filter(|a| self.config.aeads.contains(a))
            .ok_or(Error::CipherNotOffered(init2.sym_cipher))?;
        let es = key.agree(&init2.pub_field, self.config.backend)?;
        let transcript = [self.offer.option.as_bytes(), b_option.as_bytes()].concat();
        let ss0 = SessionSecret::from_key_exchange(
            self.config.backend,
            &n_a,
            &transcript,
            &init1,
            &bytes,
            &es,
        );
        let negotiated = Negotiated {
            role: Role::A,
            tep,
            tep_byte,
            aead,
            transcript,
            local_global: self.offer.option.global(),
            peer_global: b_option.global(),
            resumed: false,
        };
        let session = Session::key(
            Keying {
                backend: self.config.backend,
                secret: &ss0,
                index: 0,
                sn: &[],
                original_role: Role::A,
                send_offset: self.sent_after_hello,
                recv_offset: bytes.len() as u64,
                cache_next: self.config.resumption.cache,
            },
            negotiated,
        );
        self.finish(ClientOutcome::Encrypted(Box::new(session)));
        Ok(())
    }
}

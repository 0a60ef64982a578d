//! Configuration of the tokio layer: what to offer, the fallback policy,
//! deadlines, and the caches shared by every connection made with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::ClientCache;
use crate::proto::crypto::CryptoBackend;
use crate::proto::resumption::{Clock, ResumptionCache};
use crate::proto::{AeadAlgorithm, HandshakeConfig, ResumptionSettings, Tep};

/// What happens when the peer does not speak tcpcrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Encrypt when the peer can, fall back to plain TCP otherwise.
    #[default]
    Opportunistic,
    /// Encrypt or fail: no fallback, and no application byte is ever sent
    /// in the clear.
    Mandatory,
    /// Plain TCP, no negotiation.
    Off,
}

/// How the ENO negotiation travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Carriage {
    /// The kernel's when this socket's cgroup has the ENO program
    /// (`tcpcrypt kernel enable`); the in-band hello otherwise, or when the
    /// peer's SYN-ACK carried no ENO (it may be an in-band-only host).
    #[default]
    Auto,
    /// RFC 8547 proper: ENO in the SYN, and a SYN-ACK without it means
    /// plain TCP at once (no hello, no second connection, not one byte of
    /// ours to a legacy server). An error where the kernel program is not
    /// attached.
    Kernel,
    /// The in-band hello only (`docs/PROTOCOL.md` section 3).
    InBand,
}

/// Shared configuration (`Arc<Config>`), built with [`Config::builder`].
///
/// ```
/// use std::time::Duration;
/// use tcpcrypt_tokio::{Config, Policy};
///
/// let config = Config::builder()
///     .policy(Policy::Mandatory)
///     .handshake_timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(config.policy(), Policy::Mandatory);
/// ```
#[derive(Debug)]
pub struct Config {
    pub(crate) handshake: Arc<HandshakeConfig>,
    pub(crate) policy: Policy,
    pub(crate) carriage: Carriage,
    pub(crate) handshake_timeout: Duration,
    pub(crate) server_hello_timeout: Duration,
    pub(crate) client_hello_wait: Duration,
    pub(crate) refuse_downgrade: bool,
    pub(crate) max_pending_handshakes: usize,
    pub(crate) client_cache: Arc<ClientCache>,
    pub(crate) server_cache: Arc<ResumptionCache>,
    /// How long a cached secret lives (the kernel carriage's copy of its
    /// identifier lives a little less).
    pub(crate) resumption_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config::builder()
            .build()
            .expect("the default configuration is valid")
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// How the ENO negotiation travels.
    pub fn carriage(&self) -> Carriage {
        self.carriage
    }

    /// The fallback policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The protocol configuration.
    pub fn handshake_config(&self) -> &HandshakeConfig {
        &self.handshake
    }

    /// The connecting side's caches: verdicts per destination and
    /// resumption secrets.
    pub fn client_cache(&self) -> &ClientCache {
        &self.client_cache
    }

    /// The accepting side's resumption cache.
    pub fn resumption_cache(&self) -> &ResumptionCache {
        &self.server_cache
    }
}

/// Builds a [`Config`]. Every setting has a default.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    handshake: HandshakeConfig,
    policy: Policy,
    carriage: Carriage,
    handshake_timeout: Duration,
    server_hello_timeout: Duration,
    client_hello_wait: Duration,
    refuse_downgrade: bool,
    max_pending_handshakes: usize,
    verdict_ttl: Duration,
    client_cache_size: usize,
    resumption_ttl: Duration,
    resumption_cache_size: usize,
    key_pair_pool: usize,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            handshake: HandshakeConfig::default(),
            policy: Policy::Opportunistic,
            carriage: Carriage::Auto,
            handshake_timeout: Duration::from_secs(10),
            server_hello_timeout: Duration::from_secs(2),
            client_hello_wait: Duration::from_millis(300),
            refuse_downgrade: false,
            max_pending_handshakes: 1024,
            verdict_ttl: Duration::from_secs(600),
            client_cache_size: 4096,
            resumption_ttl: Duration::from_secs(3600),
            resumption_cache_size: 16384,
            key_pair_pool: 16,
        }
    }
}

impl ConfigBuilder {
    /// TEPs offered and accepted, in increasing order of preference
    /// (default: P-256, then X25519).
    pub fn teps(mut self, teps: impl Into<Vec<Tep>>) -> Self {
        self.handshake.teps = teps.into();
        self
    }

    /// AEADs: as a client the list sent in Init1; as a server the
    /// preference, increasing (default: ChaCha20-Poly1305, AES-256-GCM,
    /// AES-128-GCM).
    pub fn aeads(mut self, aeads: impl Into<Vec<AeadAlgorithm>>) -> Self {
        self.handshake.aeads = aeads.into();
        self
    }

    /// The crypto backend (default: aws-lc-rs when compiled in).
    pub fn backend(mut self, backend: &'static dyn CryptoBackend) -> Self {
        self.handshake.backend = backend;
        self
    }

    /// How the ENO negotiation travels (default [`Carriage::Auto`]: in the
    /// SYN where the kernel program is attached, in band otherwise).
    pub fn carriage(mut self, carriage: Carriage) -> Self {
        self.carriage = carriage;
        self
    }

    /// The fallback policy (default: opportunistic).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the ENO application-aware bit: this application authenticates
    /// the session ID (default: off).
    pub fn application_aware(mut self, on: bool) -> Self {
        self.handshake.application_aware = on;
        self
    }

    /// Mandatory application-aware mode: only encrypt with peers that set
    /// the application-aware bit (default: off).
    pub fn require_application_aware(mut self, on: bool) -> Self {
        self.handshake.require_application_aware = on;
        self
    }

    /// Send Init1 with the hello (default: on; saves a round trip).
    pub fn pipeline_init1(mut self, on: bool) -> Self {
        self.handshake.pipeline_init1 = on;
        self
    }

    /// 0-RTT data on resumed connections (default: on;
    /// `docs/PROTOCOL.md` 7.1). As a client, the bytes given to
    /// [`TcpcryptStream::connect_with_data`](crate::TcpcryptStream::connect_with_data)
    /// leave with the hello under the resumed secret; as a server, such
    /// bytes are accepted. Off, a client sends them after the handshake and
    /// a server answers an offer carrying them with a fresh exchange. A
    /// resumption secret is used once either way, so a replayed connection
    /// neither resumes nor delivers its data.
    pub fn early_data(mut self, on: bool) -> Self {
        self.handshake.early_data = on;
        self
    }

    /// Ephemeral key pairs made ahead of time, per TEP in use (default 16;
    /// 0 turns it off): a handshake then computes only its key agreement
    /// while the peer waits. A background thread refills the pool when it
    /// is half empty and empties it after 30 s without a handshake; each
    /// pair serves one handshake and is zeroized when dropped.
    pub fn key_pair_pool(mut self, per_tep: usize) -> Self {
        self.key_pair_pool = per_tep;
        self
    }

    /// The whole handshake must end within this time (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// How long a client waits for the server's first bytes before it
    /// decides the server is legacy (default 2 s). Over TCP it counts from
    /// the moment the server had the hello (its acknowledgement): a hello
    /// lost on the way is waited for, within the handshake timeout. A
    /// destination that negotiated tcpcrypt before, and any under
    /// [`Policy::Mandatory`], get the whole handshake timeout instead: a
    /// busy server is silent until its application accepts.
    pub fn server_hello_timeout(mut self, d: Duration) -> Self {
        self.server_hello_timeout = d;
        self
    }

    /// How long a server waits for a silent client's hello before treating
    /// it as plain, so that server-speaks-first applications can send their
    /// banner (default 300 ms). Over TCP the wait is at least the path's
    /// retransmission timeout and a round trip, when a hello lost once
    /// would come back later than this.
    pub fn client_hello_wait(mut self, d: Duration) -> Self {
        self.client_hello_wait = d;
        self
    }

    /// Refuse to fall back to plain TCP with a destination that negotiated
    /// tcpcrypt before (a possible downgrade attack). Either way the event
    /// is logged as a warning (default: off).
    pub fn refuse_downgrade(mut self, on: bool) -> Self {
        self.refuse_downgrade = on;
        self
    }

    /// How many handshakes a [`TcpcryptListener`](crate::TcpcryptListener)
    /// runs at once (default 1024). When all are under way, the oldest
    /// that has run for a second gives its place to a newcomer.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// Offer and honour resumption (default: on). Off is RFC 8548's
    /// "resumption requests will be ignored".
    pub fn resumption(mut self, on: bool) -> Self {
        self.handshake.resumption.resume = on;
        self
    }

    /// Keep session secrets for later resumption (default: on). Off is
    /// RFC 8548's "no session secrets will be cached".
    pub fn cache_sessions(mut self, on: bool) -> Self {
        self.handshake.resumption.cache = on;
        self
    }

    /// Resumption nonce length, 0 to 8 (default 8).
    pub fn resumption_nonce_len(mut self, len: usize) -> Self {
        self.handshake.resumption = ResumptionSettings {
            nonce_len: len,
            ..self.handshake.resumption
        };
        self
    }

    /// How long cached session secrets stay usable (default 1 h).
    pub fn resumption_ttl(mut self, d: Duration) -> Self {
        self.resumption_ttl = d;
        self
    }

    /// Most secrets the server keeps (default 16384).
    pub fn resumption_cache_size(mut self, n: usize) -> Self {
        self.resumption_cache_size = n;
        self
    }

    /// How long a "this destination is legacy" verdict is remembered
    /// (default 10 min).
    pub fn legacy_verdict_ttl(mut self, d: Duration) -> Self {
        self.verdict_ttl = d;
        self
    }

    /// Most destinations the client remembers (default 4096).
    pub fn client_cache_size(mut self, n: usize) -> Self {
        self.client_cache_size = n;
        self
    }

    /// Builds the configuration.
    pub fn build(mut self) -> Result<Config, crate::proto::Error> {
        self.handshake.validate()?;
        self.handshake.key_pairs = (self.key_pair_pool > 0)
            .then(|| crate::key_refill::pool(self.handshake.backend, self.key_pair_pool));
        let origin = Instant::now();
        let clock: Clock = Arc::new(move || origin.elapsed());
        Ok(Config {
            handshake: Arc::new(self.handshake),
            policy: self.policy,
            carriage: self.carriage,
            handshake_timeout: self.handshake_timeout,
            server_hello_timeout: self.server_hello_timeout,
            client_hello_wait: self.client_hello_wait,
            refuse_downgrade: self.refuse_downgrade,
            max_pending_handshakes: self.max_pending_handshakes,
            client_cache: Arc::new(ClientCache::new(
                self.client_cache_size,
                self.verdict_ttl,
                self.resumption_ttl,
            )),
            server_cache: Arc::new(ResumptionCache::with_expiry(
                self.resumption_cache_size,
                self.resumption_ttl,
                clock,
            )),
            resumption_ttl: self.resumption_ttl,
        })
    }
}

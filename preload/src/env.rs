//! Configuration from `TCPCRYPT_*` environment variables, read once.
//!
//! * `TCPCRYPT_POLICY`: `opportunistic` (default), `mandatory`, `off`.
//! * `TCPCRYPT_EXCLUDE`: comma-separated destinations and listening ports
//!   left alone: `ADDR`, `ADDR/PREFIX` (CIDR), `:PORT`.
//! * `TCPCRYPT_HANDSHAKE_TIMEOUT_MS`, `TCPCRYPT_SERVER_HELLO_TIMEOUT_MS`,
//!   `TCPCRYPT_CLIENT_HELLO_WAIT_MS`: the library's deadlines (whole
//!   handshake; a client's wait for a server's hello before deciding it is
//!   legacy; a server's wait for a silent client's hello).
//! * `TCPCRYPT_LOG`: log filter (`error`, `warn`, `info`, `debug`, `trace`,
//!   or a tracing filter such as `tcpcrypt_tokio=debug`); default `warn`.
//! * `TCPCRYPT_LOG_FILE`: where logs go; `stderr` for the program's stderr.
//!   Without it the shim logs nothing: the program's own output stays as it
//!   was.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use tcpcrypt_tokio::Policy;

/// One exclusion rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exclude {
    Net(IpAddr, u8),
    Port(u16),
}

impl Exclude {
    fn parse(s: &str) -> Option<Exclude> {
        let s = s.trim();
        if let Some(port) = s.strip_prefix(':').and_then(|p| p.parse().ok()) {
            return Some(Exclude::Port(port));
        }
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, p.parse().ok()?),
            None => (s, 128),
        };
        let ip: IpAddr = ip.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        Some(Exclude::Net(ip, prefix.min(max)))
    }

    fn matches(&self, addr: SocketAddr) -> bool {
        match *self {
            Exclude::Port(p) => addr.port() == p,
            Exclude::Net(net, prefix) => same_prefix(net, canonical(addr.ip()), prefix),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

/// The shim's settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub policy: Policy,
    pub exclude: Vec<Exclude>,
    pub handshake_timeout: Option<Duration>,
    pub server_hello_timeout: Option<Duration>,
    pub client_hello_wait: Option<Duration>,
}

fn millis(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_millis)
}

impl Settings {
    fn from_env() -> Settings {
        let policy = match std::env::var("TCPCRYPT_POLICY").as_deref() {
            Ok("mandatory") => Policy::Mandatory,
            Ok("off") => Policy::Off,
            _ => Policy::Opportunistic,
        };
        let exclude = std::env::var("TCPCRYPT_EXCLUDE")
            .map(|v| v.split(',').filter_map(Exclude::parse).collect())
            .unwrap_or_default();
        Settings {
            policy,
            exclude,
            handshake_timeout: millis("TCPCRYPT_HANDSHAKE_TIMEOUT_MS"),
            server_hello_timeout: millis("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS"),
            client_hello_wait: millis("TCPCRYPT_CLIENT_HELLO_WAIT_MS"),
        }
    }

    /// The library configuration these settings describe.
    pub fn config(&self) -> Result<tcpcrypt_tokio::Config, tcpcrypt_tokio::proto::Error> {
        let mut b = tcpcrypt_tokio::Config::builder().policy(self.policy);
        if let Some(d) = self.handshake_timeout {
            b = b.handshake_timeout(d);
        }
        if let Some(d) = self.server_hello_timeout {
            b = b.server_hello_timeout(d);
        }
        if let Some(d) = self.client_hello_wait {
            b = b.client_hello_wait(d);
        }
        b.build()
    }

    /// Whether a connection to or on `addr` is left alone.
    pub fn excluded(&self, addr: SocketAddr) -> bool {
        self.policy == Policy::Off || self.exclude.iter().any(|e| e.matches(addr))
    }
}

pub(crate) fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(Settings::from_env)
}

/// Starts logging as the environment asks, once per process. A host
/// program with its own global subscriber keeps it.
pub(crate) fn init_logging() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(dest) = std::env::var("TCPCRYPT_LOG_FILE") else {
            return;
        };
        let filter = tracing_subscriber::EnvFilter::try_new(
            std::env::var("TCPCRYPT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false);
        let _ = if dest == "stderr" {
            builder.with_writer(std::io::stderr).try_init()
        } else {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&dest)
            {
                Ok(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
                Err(_) => return,
            }
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions() {
        let rules: Vec<Exclude> = ["10.0.0.0/8", ":22", "::1", "bogus"]
            .iter()
            .filter_map(|s| Exclude::parse(s))
            .collect();
        assert_eq!(rules.len(), 3);
        let s = Settings {
            policy: Policy::Opportunistic,
            exclude: rules,
            handshake_timeout: None,
            server_hello_timeout: None,
            client_hello_wait: None,
        };
        assert!(s.excluded("10.1.2.3:80".parse().unwrap()));
        assert!(s.excluded("[::ffff:10.1.2.3]:80".parse().unwrap()));
        assert!(s.excluded("192.168.1.1:22".parse().unwrap()));
        assert!(s.excluded("[::1]:80".parse().unwrap()));
        assert!(!s.excluded("127.0.0.1:80".parse().unwrap()));
        assert!(!s.excluded("11.0.0.1:80".parse().unwrap()));
    }
}

//! Configuration from `TCPCRYPT_*` environment variables, read once.
//!
//! * `TCPCRYPT_POLICY`: `opportunistic` (default), `mandatory`, `off`, in
//!   any case. Any other value is logged and taken as `mandatory`: the
//!   safe reading of a typo.
//! * `TCPCRYPT_EXCLUDE`: comma-separated destinations and listening ports
//!   left alone: `ADDR`, `ADDR/PREFIX` (CIDR), `:PORT`.
//! * `TCPCRYPT_INCLUDE`: the same syntax; when set, only the destinations
//!   and listening ports it matches are handled (and `TCPCRYPT_EXCLUDE`
//!   still removes some of them). Rules that do not parse are ignored and
//!   logged.
//! * `TCPCRYPT_HANDSHAKE_TIMEOUT_MS`, `TCPCRYPT_SERVER_HELLO_TIMEOUT_MS`,
//!   `TCPCRYPT_CLIENT_HELLO_WAIT_MS`: the library's deadlines (whole
//!   handshake; a client's wait for a server's hello before deciding it is
//!   legacy; a server's wait for a silent client's hello), sent to the
//!   daemon with each connection.
//! * `TCPCRYPT_CARRIAGE`: `auto` (default), `kernel` or `in-band`, in any
//!   case: where ENO travels (`docs/SHIM.md`, "The kernel carriage"). Any
//!   other value is logged and taken as `auto`.
//! * `TCPCRYPT_DAEMON`: the `tcpcrypt` executable that runs the daemon
//!   (default: the one beside this library).
//! * `TCPCRYPT_RUNTIME_DIR`: the daemon's directory (see `wire`).
//! * `TCPCRYPT_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default
//!   `warn`) and `TCPCRYPT_LOG_FILE` (a path, or `stderr`): see `log`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::rule::Rule;
use crate::wire::{Deadlines, Profile, WireCarriage, WirePolicy};

/// What the shim does with a program's TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Encrypted when the peer speaks tcpcrypt, plain otherwise.
    Opportunistic,
    /// Encrypted or not at all.
    Mandatory,
    /// Left alone.
    Off,
}

/// The shim's settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub policy: Policy,
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
    /// Rules that did not parse, for the log.
    pub rejected: Vec<String>,
    pub handshake_timeout: Option<Duration>,
    pub server_hello_timeout: Option<Duration>,
    pub client_hello_wait: Option<Duration>,
    pub carriage: WireCarriage,
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
        let mut rejected = Vec::new();
        let policy = match std::env::var("TCPCRYPT_POLICY") {
            Err(_) => Policy::Opportunistic,
            Ok(text) => parse_policy(&text).unwrap_or_else(|| {
                // Whoever set it wanted something other than the default:
                // the safe reading of a typo is the strict policy.
                rejected.push(format!("TCPCRYPT_POLICY: {text} (taken as mandatory)"));
                Policy::Mandatory
            }),
        };
        let mut rules = |name: &str| {
            let mut rules = Vec::new();
            for text in std::env::var(name).unwrap_or_default().split(',') {
                match Rule::parse(text) {
                    Some(r) => rules.push(r),
                    None if text.trim().is_empty() => {}
                    None => rejected.push(format!("{name}: {text}")),
                }
            }
            rules
        };
        let (include, exclude) = (rules("TCPCRYPT_INCLUDE"), rules("TCPCRYPT_EXCLUDE"));
        let carriage = match std::env::var("TCPCRYPT_CARRIAGE") {
            Err(_) => WireCarriage::Auto,
            Ok(text) => parse_carriage(&text).unwrap_or_else(|| {
                rejected.push(format!("TCPCRYPT_CARRIAGE: {text} (taken as auto)"));
                WireCarriage::Auto
            }),
        };
        Settings {
            carriage,
            policy,
            include,
            exclude,
            rejected,
            handshake_timeout: millis("TCPCRYPT_HANDSHAKE_TIMEOUT_MS"),
            server_hello_timeout: millis("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS"),
            client_hello_wait: millis("TCPCRYPT_CLIENT_HELLO_WAIT_MS"),
        }
    }

    /// The policy, deadlines and carriage the daemon applies to this
    /// program's connections.
    pub fn wire(&self) -> Profile {
        let ms = |d: Option<Duration>| {
            d.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
        };
        let policy = if self.mandatory() {
            WirePolicy::Mandatory
        } else {
            WirePolicy::Opportunistic
        };
        let deadlines = Deadlines {
            handshake_ms: ms(self.handshake_timeout),
            server_hello_ms: ms(self.server_hello_timeout),
            client_hello_wait_ms: ms(self.client_hello_wait),
        };
        Profile {
            policy,
            deadlines,
            carriage: self.carriage,
        }
    }

    /// Whether connections may negotiate in the SYN: the carriage allows
    /// it and `tcpcrypt kernel enable` has run on this machine (one
    /// `lstat`; the daemon decides the rest).
    pub fn kernel_carriage(&self) -> bool {
        self.carriage != WireCarriage::InBand
            && std::fs::symlink_metadata(crate::wire::KERNEL_SOCKET_MAP).is_ok()
    }

    /// Whether a rule names addresses (not only ports).
    pub fn has_address_rules(&self) -> bool {
        self.include
            .iter()
            .chain(&self.exclude)
            .any(|r| matches!(r, Rule::Net(..)))
    }

    /// Whether no application byte may travel unencrypted.
    pub fn mandatory(&self) -> bool {
        self.policy == Policy::Mandatory
    }

    /// Whether a connection to or on `addr` is left alone.
    pub fn excluded(&self, addr: SocketAddr) -> bool {
        self.policy == Policy::Off
            || (!self.include.is_empty() && !self.include.iter().any(|r| r.matches(addr)))
            || self.exclude.iter().any(|r| r.matches(addr))
    }
}

/// `opportunistic` (also an empty value), `mandatory` or `off`, in any case.
fn parse_policy(text: &str) -> Option<Policy> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "opportunistic" => Some(Policy::Opportunistic),
        "mandatory" => Some(Policy::Mandatory),
        "off" => Some(Policy::Off),
        _ => None,
    }
}

/// `auto` (also an empty value), `kernel` or `in-band`, in any case.
fn parse_carriage(text: &str) -> Option<WireCarriage> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Some(WireCarriage::Auto),
        "kernel" => Some(WireCarriage::Kernel),
        "in-band" | "inband" => Some(WireCarriage::InBand),
        _ => None,
    }
}

pub(crate) fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let s = Settings::from_env();
        for rule in &s.rejected {
            crate::log::log!(Warn, "a setting that does not parse: {rule}");
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(include: &[&str], exclude: &[&str]) -> Settings {
        let parse = |rules: &[&str]| rules.iter().filter_map(|s| Rule::parse(s)).collect();
        Settings {
            policy: Policy::Opportunistic,
            include: parse(include),
            exclude: parse(exclude),
            rejected: Vec::new(),
            handshake_timeout: None,
            server_hello_timeout: None,
            client_hello_wait: None,
            carriage: WireCarriage::Auto,
        }
    }

    #[test]
    fn policies_parse_in_any_case_and_nothing_else_does() {
        assert_eq!(parse_policy(" Mandatory "), Some(Policy::Mandatory));
        assert_eq!(parse_policy("OFF"), Some(Policy::Off));
        assert_eq!(parse_policy("opportunistic"), Some(Policy::Opportunistic));
        assert_eq!(parse_policy(""), Some(Policy::Opportunistic));
        assert_eq!(parse_policy("mandatroy"), None);
    }

    #[test]
    fn carriages_parse_in_any_case_and_nothing_else_does() {
        assert_eq!(parse_carriage(" Kernel "), Some(WireCarriage::Kernel));
        assert_eq!(parse_carriage("IN-BAND"), Some(WireCarriage::InBand));
        assert_eq!(parse_carriage(""), Some(WireCarriage::Auto));
        assert_eq!(parse_carriage("kernal"), None);
    }

    #[test]
    fn exclusions() {
        let s = settings(&[], &["10.0.0.0/8", ":22", "::1", "bogus"]);
        assert_eq!(s.exclude.len(), 3);
        assert!(s.excluded("10.1.2.3:80".parse().unwrap()));
        assert!(s.excluded("[::ffff:10.1.2.3]:80".parse().unwrap()));
        assert!(s.excluded("192.168.1.1:22".parse().unwrap()));
        assert!(s.excluded("[::1]:80".parse().unwrap()));
        assert!(!s.excluded("127.0.0.1:80".parse().unwrap()));
        assert!(s.has_address_rules());
        assert!(!settings(&[], &[":22"]).has_address_rules());
        assert!(!s.excluded("11.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn inclusions_narrow_and_exclusions_still_apply() {
        let s = settings(&["192.168.0.0/16", ":8443"], &["192.168.1.1"]);
        assert!(!s.excluded("192.168.7.7:80".parse().unwrap()));
        assert!(!s.excluded("10.0.0.1:8443".parse().unwrap()));
        assert!(s.excluded("10.0.0.1:80".parse().unwrap()), "not included");
        assert!(s.excluded("192.168.1.1:80".parse().unwrap()), "excluded");
        assert!(!settings(&[], &[]).excluded("10.0.0.1:80".parse().unwrap()));
    }
}

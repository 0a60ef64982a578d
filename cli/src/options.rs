//! Negotiation options shared by `connect`, `listen`, `proxy`, `check` and
//! `bench`, turned into one library [`Config`]; and the destination
//! argument of `connect` and `check`.

use std::sync::Arc;
use std::time::Duration;

use tcpcrypt_tokio::{Config, Policy};

/// How to negotiate.
#[derive(clap::Args, Clone, Debug)]
pub struct Negotiation {
    /// Refuse plain TCP: fail when the peer does not speak tcpcrypt.
    #[arg(long)]
    pub mandatory: bool,
    /// Give up a handshake after this long (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Connecting side: how long a silent server may take to answer the
    /// hello before it is taken for a plain server.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    pub server_hello_timeout: Duration,
    /// Accepting side: how long to wait for a client's hello before taking
    /// a silent client for a plain one that waits for the server to speak.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "300ms")]
    pub client_hello_wait: Duration,
    /// How ENO travels: auto (in the SYN where `tcpcrypt kernel enable`
    /// attached its program, else the in-band hello), kernel (the SYN only:
    /// a SYN-ACK without ENO means plain TCP at once), in-band.
    #[arg(long, value_enum, default_value = "auto")]
    pub carriage: CarriageArg,
}

/// `--carriage`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CarriageArg {
    Auto,
    Kernel,
    InBand,
}

impl From<CarriageArg> for tcpcrypt_tokio::Carriage {
    fn from(c: CarriageArg) -> Self {
        match c {
            CarriageArg::Auto => tcpcrypt_tokio::Carriage::Auto,
            CarriageArg::Kernel => tcpcrypt_tokio::Carriage::Kernel,
            CarriageArg::InBand => tcpcrypt_tokio::Carriage::InBand,
        }
    }
}

impl Negotiation {
    /// The library configuration these options describe.
    pub fn config(&self) -> Arc<Config> {
        self.builder()
            .build()
            .map(Arc::new)
            .expect("the options only set valid values")
    }

    /// A builder preset with these options, for commands that add more.
    pub fn builder(&self) -> tcpcrypt_tokio::ConfigBuilder {
        Config::builder()
            .policy(if self.mandatory {
                Policy::Mandatory
            } else {
                Policy::Opportunistic
            })
            .handshake_timeout(self.handshake_timeout)
            .server_hello_timeout(self.server_hello_timeout)
            .client_hello_wait(self.client_hello_wait)
            .carriage(self.carriage.into())
    }
}

/// A destination argument, `HOST:PORT`: a name, an IPv4 address or an
/// IPv6 one in brackets, and a port. Checked when the arguments are read,
/// so that a missing port is a usage error (exit 2), not a failed
/// connection.
pub fn destination(value: &str) -> Result<String, String> {
    let usage = "expected HOST:PORT (a name, an IPv4 address or an IPv6 one in brackets, and a port: example.net:80, [::1]:7777)";
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("no port: {usage}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("`{port}` is not a port: {usage}"));
    }
    let bare_ipv6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
    if host.is_empty() || bare_ipv6 {
        return Err(format!("`{host}` is not a host: {usage}"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::destination;

    #[test]
    fn destinations_need_a_host_and_a_port() {
        for good in [
            "example.net:80",
            "127.0.0.1:7777",
            "[::1]:7777",
            "localhost:0",
        ] {
            assert_eq!(destination(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1",
            "example.net",
            ":80",
            "::1:7777",
            "host:http",
            "host:65536",
            "",
        ] {
            assert!(destination(bad).is_err(), "{bad}");
        }
    }
}

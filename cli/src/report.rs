//! The negotiation report: what `connect`, `listen`, `proxy` and `check`
//! say about a connection, as one line for people or one JSON object for
//! scripts.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tcpcrypt_tokio::{FallbackReason, SessionInfo};

/// What was negotiated on one connection.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// The address of the other end.
    pub peer: String,
    /// Whether tcpcrypt protects the connection.
    pub encrypted: bool,
    /// This end's tcpcrypt role: "A" connected, "B" accepted.
    pub role: Option<String>,
    /// The negotiated key exchange, by its registry name.
    pub tep: Option<String>,
    /// The negotiated TEP identifier.
    pub tep_id: Option<u8>,
    /// The negotiated AEAD, by its registry name.
    pub aead: Option<String>,
    /// The session ID: 66 hex digits.
    pub session_id: Option<String>,
    /// Whether the session was resumed from an earlier one.
    pub resumed: bool,
    /// How the ENO negotiation travelled: "kernel" (in the SYNs) or
    /// "in-band" (the hello); none when plain.
    pub carriage: Option<&'static str>,
    /// From the start of the connection (connect or accept) to the end of
    /// negotiation; `check` counts from its first byte instead, beside
    /// `connect_ms`.
    pub handshake_ms: f64,
    /// Why the connection is not encrypted.
    pub reason: Option<String>,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    /// The report of an encrypted or plain connection.
    pub fn new(
        peer: SocketAddr,
        session: Option<&SessionInfo>,
        fallback: Option<&FallbackReason>,
        handshake: Duration,
    ) -> Self {
        Report {
            peer: peer.to_string(),
            encrypted: session.is_some(),
            role: session.map(|s| s.role.to_string()),
            tep: session.map(|s| s.tep.name().to_string()),
            tep_id: session.map(|s| s.tep.id()),
            aead: session.map(|s| s.aead.name().to_string()),
            session_id: session.map(|s| s.session_id.to_string()),
            resumed: session.is_some_and(|s| s.resumed),
            carriage: None,
            handshake_ms: millis(handshake),
            reason: match (session, fallback) {
                (Some(_), _) => None,
                (None, Some(r)) => Some(r.to_string()),
                (None, None) => Some("not negotiated".into()),
            },
        }
    }

    /// The report of a stream, with how its negotiation travelled.
    pub fn of<IO>(
        stream: &tcpcrypt_tokio::TcpcryptStream<IO>,
        peer: SocketAddr,
        took: Duration,
    ) -> Self {
        let mut report = Report::new(peer, stream.session(), stream.fallback_reason(), took);
        report.carriage = stream.carriage().map(|c| match c {
            tcpcrypt_tokio::Carriage::Kernel => "kernel",
            _ => "in-band",
        });
        report
    }

    /// One line for a person: the outcome, the algorithms and the session
    /// ID, or the reason for plain TCP.
    pub fn line(&self) -> String {
        match (&self.session_id, &self.reason) {
            (Some(id), _) => format!(
                "{}: encrypted ({}, {}, role {}{}) in {:.1} ms, session ID {id}",
                self.peer,
                self.tep.as_deref().unwrap_or("?"),
                self.aead.as_deref().unwrap_or("?"),
                self.role.as_deref().unwrap_or("?"),
                if self.resumed { ", resumed" } else { "" },
                self.handshake_ms,
            ),
            (None, reason) => format!(
                "{}: plain TCP ({})",
                self.peer,
                reason.as_deref().unwrap_or("not negotiated")
            ),
        }
    }

    /// Prints the report on stderr, as JSON or as a line.
    pub fn print_stderr(&self, json: bool) {
        if json {
            eprintln!("{}", serde_json::to_string(self).expect("serializable"));
        } else {
            eprintln!("tcpcrypt: {}", self.line());
        }
    }
}

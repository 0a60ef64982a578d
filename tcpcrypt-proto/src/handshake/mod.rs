//! The handshake state machines of both roles (docs/PROTOCOL.md,
//! "Handshake").
//!
//! Both are driven the same way: [`read`](ClientHandshake::read) hands in
//! received bytes and returns how many it consumed (never more than the
//! handshake needs: what follows belongs to the data phase),
//! [`write_to`](ClientHandshake::write_to) drains bytes to send, and
//! [`outcome`](ClientHandshake::outcome) yields the result once there is
//! one. Timeouts belong to the caller, who reports them with
//! `peer_silent`.

mod client;
mod server;

pub use client::{ClientHandshake, ClientOutcome, LegacyEvidence};
pub use server::{ServerHandshake, ServerOutcome};

use super::error::Error;
use super::init::{self, InitKind};

/// Accumulates the bytes of the message in progress, taking from the input
/// no more than the message needs.
#[derive(Debug, Default)]
struct Accumulator {
    buf: Vec<u8>,
}

impl Accumulator {
    /// Tops the buffer up to `need` bytes from `input[*pos..]`. Returns
    /// whether it holds `need` bytes.
    fn fill(&mut self, need: usize, input: &[u8], pos: &mut usize) -> bool {
        if self.buf.len() < need {
            let take = (need - self.buf.len()).min(input.len() - *pos);
            self.buf.extend_from_slice(&input[*pos..*pos + take]);
            *pos += take;
        }
        self.buf.len() >= need
    }

    /// Accumulates a whole Init message, bounding its length from the
    /// header first. Returns the message once complete.
    fn init_message(
        &mut self,
        kind: InitKind,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        if !self.fill(init::HEADER_LEN, input, pos) {
            return Ok(None);
        }
        let header: &[u8; init::HEADER_LEN] =
            self.buf[..init::HEADER_LEN].try_into().expect("8 bytes");
        let len = init::message_len(kind, header)?;
        if !self.fill(len, input, pos) {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.buf)))
    }
}

//! Encryption frames (RFC 8548 3.6 to 3.8, 4.2): sealing and opening, the
//! nonce from the frame's stream offset, FINp and URGp, and rekeying.
//!
//! ```text
//! frame     = control(1) | clen(2, BE) | ciphertext(clen)
//! AD        = control | clen
//! plaintext = flags(1) [| urgent(2, BE) if URGp] | data
//! nonce     = (4 zero bytes | offset(8, BE)) XOR NR
//! ```
//!
//! A [`FrameSealer`] and a [`FrameOpener`] are independent values, so the
//! two directions of a connection can live in different tasks without a
//! lock. The only thing the read side tells the write side is the peer's
//! generation, through [`FrameSealer::observe_peer_generation`].

use std::ops::Range;

use super::aead::{AeadAlgorithm, NONCE_LEN, TAG_LEN};
use super::crypto::{AeadKey, CryptoBackend};
use super::error::Error;
use super::schedule::{KeyDirection, MasterKey};
use zeroize::Zeroizing;

/// control and clen.
pub const HEADER_LEN: usize = 3;
/// Largest ciphertext: clen is a 16-bit field and must be below 2^16.
pub const MAX_CLEN: usize = u16::MAX as usize;
/// Largest application data in one frame without an urgent field.
pub const MAX_DATA: usize = MAX_CLEN - TAG_LEN - 1;
/// Largest whole frame on the wire.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_CLEN;
/// Smallest whole frame: an empty data frame.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + 1 + TAG_LEN;
/// The control byte's rekey bit. The other seven bits (`cres`) are sent as
/// zero and ignored on receipt.
pub const CONTROL_REKEY: u8 = 0x01;
/// The flags byte's FINp bit. Bits 7..2 (`fres`) are sent as zero and
/// ignored on receipt.
pub const FLAG_FIN: u8 = 0x01;
/// The flags byte's URGp bit: an urgent field follows the flags.
pub const FLAG_URG: u8 = 0x02;
/// Frames sealed under one key before the sealer rekeys by itself. Far
/// below the AES-GCM limit of about 2^32 invocations under one key and near
/// the TLS 1.3 guidance for full-size records.
pub const REKEY_AFTER_FRAMES: u64 = 1 << 24;
/// Bytes sent under one key before the sealer rekeys by itself; keeps the
/// 64-bit offset far from wrapping under one key.
pub const REKEY_AFTER_BYTES: u64 = 1 << 62;

/// Most bytes of 0-RTT frames the connecting side sends before the
/// end-of-early-data mark, and the accepting side accepts or skips
/// (docs/PROTOCOL.md 7.1): one initial congestion window's worth.
pub const EARLY_DATA_LIMIT: usize = 16 * 1024;
/// The end-of-early-data mark: a frame header with `clen = 0`, which no
/// frame has (the smallest is [`MIN_FRAME_LEN`]).
pub const END_OF_EARLY_DATA: [u8; HEADER_LEN] = [0, 0, 0];

/// The AEAD nonce for a frame at `offset`: the frame ID XOR NR.
pub fn frame_nonce(nr: &[u8; NONCE_LEN], offset: u64) -> [u8; NONCE_LEN] {
    let mut n = *nr;
    for (dst, b) in n[NONCE_LEN - 8..].iter_mut().zip(offset.to_be_bytes()) {
        *dst ^= b;
    }
    n
}

/// The parts of a frame the sender chooses. The sealer sets only the rekey
/// bit, FINp and (never, in practice) URGp; raw values are accepted so that
/// known-answer tests can exercise the reserved bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFields {
    /// The control byte as sent.
    pub control: u8,
    /// The flags byte as sent.
    pub flags: u8,
    /// The urgent field; must be `Some` exactly when `flags` has URGp.
    pub urgent: Option<u16>,
}

/// Where a frame's application data starts, for callers that write data
/// in place before [`FrameSealer::seal_in_place`]: after control, clen and
/// flags.
pub const DATA_OFFSET: usize = HEADER_LEN + 1;

/// Fills in the header of the frame that starts at `buf[start]` (whose
/// plaintext, flags first, runs to the end of `buf`), encrypts the
/// plaintext in place and appends the tag. Returns the frame's length.
fn seal_prepared(
    key: &dyn AeadKey,
    nr: &[u8; NONCE_LEN],
    offset: u64,
    control: u8,
    buf: &mut Vec<u8>,
    start: usize,
) -> usize {
    let clen = buf.len() - start - HEADER_LEN + TAG_LEN;
    debug_assert!(clen <= MAX_CLEN);
    buf[start] = control;
    buf[start + 1..start + HEADER_LEN].copy_from_slice(&(clen as u16).to_be_bytes());
    let (header, plaintext) = buf[start..].split_at_mut(HEADER_LEN);
    let tag = key.seal_in_place(&frame_nonce(nr, offset), header, plaintext);
    buf.extend_from_slice(&tag);
    HEADER_LEN + clen
}

/// Appends one sealed frame with raw header fields to `out` and returns its
/// length. The data is copied once and encrypted in place.
///
/// Dangerous: the caller chooses the offset, hence the nonce; sealing two
/// frames at one offset under one key breaks the AEAD. For known-answer
/// tests and conformance only.
#[cfg(feature = "dangerous")]
pub fn dangerous_seal_frame(
    key: &dyn AeadKey,
    nr: &[u8; NONCE_LEN],
    offset: u64,
    fields: FrameFields,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, Error> {
    if (fields.flags & FLAG_URG != 0) != fields.urgent.is_some() {
        return Err(Error::InvalidState("urgent field must match URGp"));
    }
    let urgent_len = if fields.urgent.is_some() { 2 } else { 0 };
    if 1 + urgent_len + data.len() + TAG_LEN > MAX_CLEN {
        return Err(Error::FrameTooLarge(data.len()));
    }
    let start = out.len();
    out.reserve(DATA_OFFSET + urgent_len + data.len() + TAG_LEN);
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(fields.flags);
    if let Some(u) = fields.urgent {
        out.extend_from_slice(&u.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(seal_prepared(key, nr, offset, fields.control, out, start))
}

/// The current key of one direction at one generation.
struct GenerationKey {
    master: MasterKey,
    key: Box<dyn AeadKey>,
    nr: Zeroizing<[u8; NONCE_LEN]>,
}

impl GenerationKey {
    fn new(
        backend: &dyn CryptoBackend,
        master: MasterKey,
        direction: KeyDirection,
        aead: AeadAlgorithm,
    ) -> Self {
        let traffic = master.traffic_key(backend, direction, aead);
        GenerationKey {
            key: traffic.aead_key(backend),
            nr: Zeroizing::new(traffic.nonce_randomizer()),
            master,
        }
    }

    /// Moves to the next generation; the old keys are dropped (zeroized).
    fn advance(
        &mut self,
        backend: &dyn CryptoBackend,
        direction: KeyDirection,
        aead: AeadAlgorithm,
    ) {
        let next = self.master.next(backend);
        *self = GenerationKey::new(backend, next, direction, aead);
    }
}

/// The sending half: seals application data into frames at increasing
/// offsets, and carries the rekey rules of RFC 8548 3.8.
pub struct FrameSealer {
    backend: &'static dyn CryptoBackend,
    aead: AeadAlgorithm,
    direction: KeyDirection,
    current: GenerationKey,
    generation: u64,
    offset: u64,
    frames_under_key: u64,
    bytes_under_key: u64,
    /// Frames under one key before an automatic rekey.
    rekey_after_frames: u64,
    /// Generation increments not yet announced by a rekey = 1 frame.
    rekeys_due: u64,
    /// The highest generation seen from the peer.
    peer_generation: u64,
    /// An empty rekey frame was sent and the peer has not caught up.
    empty_rekey_outstanding: bool,
    fin_sent: bool,
    /// The end-of-early-data mark goes out just before the next frame.
    owe_end_of_early_data: bool,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("aead", &self.aead)
            .field("generation", &self.generation)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// A sealer at generation 0 whose first frame sits at `offset`.
    /// Dangerous: two sealers from one master key and direction reuse
    /// nonces. A [`Session`](crate::Session) makes the only one.
    #[cfg(feature = "dangerous")]
    pub fn dangerous_new(
        backend: &'static dyn CryptoBackend,
        mk0: MasterKey,
        direction: KeyDirection,
        aead: AeadAlgorithm,
        offset: u64,
    ) -> Self {
        Self::new(backend, mk0, direction, aead, offset)
    }

    /// A sealer at generation 0 whose first frame sits at `offset`.
    pub(crate) fn new(
        backend: &'static dyn CryptoBackend,
        mk0: MasterKey,
        direction: KeyDirection,
        aead: AeadAlgorithm,
        offset: u64,
    ) -> Self {
        FrameSealer {
            backend,
            aead,
            direction,
            current: GenerationKey::new(backend, mk0, direction, aead),
            generation: 0,
            offset,
            frames_under_key: 0,
            bytes_under_key: 0,
            rekey_after_frames: REKEY_AFTER_FRAMES,
            rekeys_due: 0,
            peer_generation: 0,
            empty_rekey_outstanding: false,
            fin_sent: false,
            owe_end_of_early_data: false,
        }
    }

    /// Puts the end-of-early-data mark in front of the next frame (its 3
    /// bytes sit just before this sealer's starting offset): after an
    /// accepted 0-RTT resumption the connecting side sends it with its
    /// first frame of the session, not on its own, so that a server that
    /// answered the early data and closed at once receives nothing after
    /// its close (docs/PROTOCOL.md 7.1).
    pub(crate) fn owe_end_of_early_data(&mut self) {
        self.owe_end_of_early_data = true;
    }

    /// Seals `data` (at most [`MAX_DATA`] bytes) as one frame appended to
    /// `out`, with FINp when `fin`. Returns the bytes appended: the frame's
    /// length (and the end-of-early-data mark's, when one was owed).
    pub fn seal(&mut self, data: &[u8], fin: bool, out: &mut Vec<u8>) -> Result<usize, Error> {
        self.check_send(data.len())?;
        let start = out.len();
        out.reserve(DATA_OFFSET + data.len() + TAG_LEN);
        out.extend_from_slice(&[0; DATA_OFFSET]);
        out.extend_from_slice(data);
        self.seal_in_place(out, start, fin)
    }

    /// Seals, without copying, a frame whose data the caller has already
    /// written into `buf` after [`DATA_OFFSET`] reserved bytes at `start`
    /// (`buf[start + DATA_OFFSET..]` is the data). Returns the frame's
    /// length (with the end-of-early-data mark in front of it, when one was
    /// owed); the tag is appended. On error `buf` is left as it was.
    pub fn seal_in_place(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        fin: bool,
    ) -> Result<usize, Error> {
        let data_len = buf
            .len()
            .checked_sub(start + DATA_OFFSET)
            .ok_or(Error::InvalidState("no room reserved for the frame header"))?;
        self.check_send(data_len)?;
        let mut start = start;
        let mut mark = 0;
        if std::mem::take(&mut self.owe_end_of_early_data) {
            buf.splice(start..start, END_OF_EARLY_DATA);
            start += HEADER_LEN;
            mark = HEADER_LEN;
        }
        // An exhausted key is replaced even while an empty rekey is
        // unanswered, as long as this frame carries data (only a second
        // empty rekey is forbidden).
        if self.rekeys_due == 0
            && self.key_exhausted()
            && (data_len > 0 || !self.empty_rekey_outstanding)
        {
            self.rekeys_due = 1;
        }
        let rekey = self.rekeys_due > 0;
        if rekey {
            self.current
                .advance(self.backend, self.direction, self.aead);
            self.generation += 1;
            self.rekeys_due -= 1;
            self.frames_under_key = 0;
            self.bytes_under_key = 0;
        }
        buf[start + HEADER_LEN] = if fin { FLAG_FIN } else { 0 };
        let control = if rekey { CONTROL_REKEY } else { 0 };
        let len = seal_prepared(
            &*self.current.key,
            &self.current.nr,
            self.offset,
            control,
            buf,
            start,
        );
        self.offset = self.offset.wrapping_add(len as u64);
        self.frames_under_key += 1;
        self.bytes_under_key += len as u64;
        self.fin_sent = fin;
        if rekey && data_len == 0 && self.generation > self.peer_generation {
            self.empty_rekey_outstanding = true;
        }
        Ok(mark + len)
    }

    fn check_send(&self, data_len: usize) -> Result<(), Error> {
        if self.fin_sent {
            return Err(Error::SendAfterFin);
        }
        if data_len > MAX_DATA {
            return Err(Error::FrameTooLarge(data_len));
        }
        Ok(())
    }

    /// Starts a rekey: the next frame is sealed under the next generation
    /// with rekey = 1. Refused while an earlier rekey has not been sent yet
    /// or an empty rekey frame is unanswered (RFC 8548 3.8), which is also
    /// what makes it safe as a liveness probe (3.9).
    pub fn initiate_rekey(&mut self) -> Result<(), Error> {
        if self.fin_sent {
            return Err(Error::SendAfterFin);
        }
        if self.rekeys_due > 0 || self.empty_rekey_outstanding {
            return Err(Error::RekeyOutstanding);
        }
        self.rekeys_due = 1;
        Ok(())
    }

    /// Tells the sealer the peer's generation after a rekey = 1 frame. If
    /// the peer is now ahead, the sealer catches up one generation per
    /// frame, and [`rekey_frames_due`](Self::rekey_frames_due) says how many
    /// frames (empty if need be) must be sent at once.
    pub fn observe_peer_generation(&mut self, peer_generation: u64) {
        self.peer_generation = self.peer_generation.max(peer_generation);
        if self.peer_generation >= self.generation {
            self.empty_rekey_outstanding = false;
        }
        if self.fin_sent {
            return;
        }
        let target = self.generation + self.rekeys_due;
        if self.peer_generation > target {
            self.rekeys_due += self.peer_generation - target;
        }
    }

    /// Frames that must carry rekey = 1 and are not sent yet. The caller
    /// sends this many (empty if it has no data) without waiting.
    pub fn rekey_frames_due(&self) -> u64 {
        if self.fin_sent { 0 } else { self.rekeys_due }
    }

    fn key_exhausted(&self) -> bool {
        self.frames_under_key >= self.rekey_after_frames
            || self.bytes_under_key >= REKEY_AFTER_BYTES
    }

    /// The local generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The offset of the next frame in the sending stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the FINp frame has been sealed.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// The negotiated AEAD.
    pub fn aead(&self) -> AeadAlgorithm {
        self.aead
    }
}

/// A frame opened in place by [`FrameOpener::open_in_place`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenedFrame {
    /// Bytes of the input the frame occupied.
    pub frame_len: usize,
    /// Where the application data now lies in the input buffer.
    pub data: Range<usize>,
    /// FINp: the peer's last frame.
    pub fin: bool,
    /// The urgent field, when URGp was set. Urgent data is delivered inline
    /// with the rest of the stream; the field is reported, never acted on.
    pub urgent: Option<u16>,
    /// The frame had rekey = 1; [`FrameOpener::generation`] moved up by one.
    pub rekeyed: bool,
}

/// The receiving half: authenticates and decrypts frames in stream order.
pub struct FrameOpener {
    backend: &'static dyn CryptoBackend,
    aead: AeadAlgorithm,
    direction: KeyDirection,
    current: GenerationKey,
    generation: u64,
    offset: u64,
    fin_received: bool,
    failed: Option<Error>,
    /// The peer's 0-RTT key, until its end-of-early-data mark.
    early: Option<GenerationKey>,
}

impl std::fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameOpener")
            .field("aead", &self.aead)
            .field("generation", &self.generation)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl FrameOpener {
    /// An opener at generation 0 whose first frame sits at `offset` of the
    /// peer's stream.
    /// Dangerous in the way [`FrameSealer::dangerous_new`] is: for tests.
    #[cfg(feature = "dangerous")]
    pub fn dangerous_new(
        backend: &'static dyn CryptoBackend,
        mk0: MasterKey,
        direction: KeyDirection,
        aead: AeadAlgorithm,
        offset: u64,
    ) -> Self {
        Self::new(backend, mk0, direction, aead, offset)
    }

    /// An opener at generation 0 whose first frame sits at `offset` of the
    /// peer's stream.
    pub(crate) fn new(
        backend: &'static dyn CryptoBackend,
        mk0: MasterKey,
        direction: KeyDirection,
        aead: AeadAlgorithm,
        offset: u64,
    ) -> Self {
        FrameOpener {
            backend,
            aead,
            direction,
            current: GenerationKey::new(backend, mk0, direction, aead),
            generation: 0,
            offset,
            fin_received: false,
            failed: None,
            early: None,
        }
    }

    /// Opens 0-RTT frames under `early` (from offset 0, generation 0, no
    /// rekey, no FINp, at most [`EARLY_DATA_LIMIT`] bytes) until the
    /// end-of-early-data mark, then the session's frames from the offset
    /// after the mark.
    pub(crate) fn expect_early(&mut self, early: MasterKey) {
        self.early = Some(GenerationKey::new(
            self.backend,
            early,
            self.direction,
            self.aead,
        ));
    }

    /// Whether 0-RTT frames are still being opened (the end-of-early-data
    /// mark has not arrived).
    pub fn in_early_data(&self) -> bool {
        self.early.is_some()
    }

    /// The whole length of the frame that starts `buf`, once its header has
    /// arrived. Any 16-bit clen is a well-formed length, so a reader can
    /// size its buffer from this without further checks.
    pub fn frame_len(buf: &[u8]) -> Option<usize> {
        let header = buf.get(..HEADER_LEN)?;
        Some(HEADER_LEN + u16::from_be_bytes([header[1], header[2]]) as usize)
    }

    /// Opens the frame at the start of `buf` in place. Returns `Ok(None)`
    /// until the whole frame is present. After an error, every later call
    /// returns the same error: the connection must be aborted.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<Option<OpenedFrame>, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.open_inner(buf);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn open_inner(&mut self, buf: &mut [u8]) -> Result<Option<OpenedFrame>, Error> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.fin_received {
            return Err(Error::DataAfterFin);
        }
        let Some(frame_len) = Self::frame_len(buf) else {
            return Ok(None);
        };
        let clen = frame_len - HEADER_LEN;
        if self.early.is_some() && buf[..HEADER_LEN] == END_OF_EARLY_DATA {
            // The session's own keys from here on.
            self.early = None;
            self.offset += HEADER_LEN as u64;
            return Ok(Some(OpenedFrame {
                frame_len: HEADER_LEN,
                data: HEADER_LEN..HEADER_LEN,
                fin: false,
                urgent: None,
                rekeyed: false,
            }));
        }
        if clen < 1 + TAG_LEN {
            return Err(Error::FrameTooShort(clen as u16));
        }
        if self.early.is_some() {
            if self.offset + frame_len as u64 > EARLY_DATA_LIMIT as u64 {
                return Err(Error::EarlyData("more than the limit before the end mark"));
            }
            if buf[0] & CONTROL_REKEY != 0 {
                return Err(Error::EarlyData("a rekey among the early frames"));
            }
        }
        if buf.len() < frame_len {
            return Ok(None);
        }
        let rekeyed = buf[0] & CONTROL_REKEY != 0;
        if rekeyed {
            self.current
                .advance(self.backend, self.direction, self.aead);
            self.generation += 1;
        }
        let (header, rest) = buf[..frame_len].split_at_mut(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at_mut(clen - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("tag length");
        let key = self.early.as_ref().unwrap_or(&self.current);
        let nonce = frame_nonce(&key.nr, self.offset);
        key.key
            .open_in_place(&nonce, header, ciphertext, tag)
            .map_err(|_| Error::AuthenticationFailed)?;
        let flags = ciphertext[0];
        if self.early.is_some() && flags & FLAG_FIN != 0 {
            return Err(Error::EarlyData("FINp among the early frames"));
        }
        let (urgent, data_start) = if flags & FLAG_URG != 0 {
            let u = ciphertext
                .get(1..3)
                .ok_or(Error::FrameTooShort(clen as u16))?;
            (Some(u16::from_be_bytes([u[0], u[1]])), HEADER_LEN + 3)
        } else {
            (None, HEADER_LEN + 1)
        };
        let fin = flags & FLAG_FIN != 0;
        self.offset = self.offset.wrapping_add(frame_len as u64);
        self.fin_received = fin;
        Ok(Some(OpenedFrame {
            frame_len,
            data: data_start..frame_len - TAG_LEN,
            fin,
            urgent,
            rekeyed,
        }))
    }

    /// Called when the transport reports end of stream with `unopened`
    /// bytes received but not opened (part of a frame): a clean EOF only
    /// after the FINp frame with nothing after it, otherwise truncation
    /// (RFC 8548 3.7).
    pub fn end_of_stream(&self, unopened: usize) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.fin_received && unopened > 0 {
            return Err(Error::DataAfterFin);
        }
        if unopened > 0 {
            return Err(Error::Truncated);
        }
        if self.fin_received {
            Ok(())
        } else {
            Err(Error::Truncated)
        }
    }

    /// The peer's generation (the remote generation of RFC 8548 3.8).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The offset of the next frame in the peer's stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the FINp frame has arrived.
    pub fn fin_received(&self) -> bool {
        self.fin_received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;
    use crate::schedule::SessionSecret;

    fn keyed(offset: u64) -> (FrameSealer, FrameOpener) {
        let backend = crypto::default_backend();
        let mk0 = SessionSecret::dangerous_from_bytes([7; 32]).master_key(backend, &[]);
        let aead = AeadAlgorithm::Aes128Gcm;
        (
            FrameSealer::new(backend, mk0.clone(), KeyDirection::AToB, aead, offset),
            FrameOpener::new(backend, mk0, KeyDirection::AToB, aead, offset),
        )
    }

    #[test]
    fn nonce_is_offset_xor_randomizer() {
        let nr = [0xffu8; NONCE_LEN];
        let n = frame_nonce(&nr, 0x0102_0304_0506_0708);
        assert_eq!(n[..4], [0xff; 4]);
        assert_eq!(n[4..], [0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0xf7]);
    }

    #[test]
    fn sealer_rekeys_by_itself_before_the_key_limit() {
        let (mut sealer, mut opener) = keyed(0);
        sealer.rekey_after_frames = 3;
        let mut wire = Vec::new();
        for _ in 0..7 {
            sealer.seal(b"x", false, &mut wire).unwrap();
        }
        // Frames 0-2 under generation 0, 3-5 under 1, 6 under 2.
        assert_eq!(sealer.generation(), 2);
        let mut pos = 0;
        let mut rekeyed = Vec::new();
        while pos < wire.len() {
            let f = opener.open_in_place(&mut wire[pos..]).unwrap().unwrap();
            rekeyed.push(f.rekeyed);
            pos += f.frame_len;
        }
        assert_eq!(rekeyed, [false, false, false, true, false, false, true]);
    }

    #[test]
    fn exhausted_key_is_replaced_even_with_an_empty_rekey_unanswered() {
        let (mut sealer, mut opener) = keyed(0);
        sealer.rekey_after_frames = 2;
        let mut wire = Vec::new();
        sealer.initiate_rekey().unwrap();
        sealer.seal(b"", false, &mut wire).unwrap();
        assert_eq!(sealer.initiate_rekey(), Err(Error::RekeyOutstanding));
        sealer.seal(b"a", false, &mut wire).unwrap();
        // The key has sealed two frames: the next data frame rekeys anyway.
        sealer.seal(b"b", false, &mut wire).unwrap();
        assert_eq!(sealer.generation(), 2);
        let mut pos = 0;
        while pos < wire.len() {
            pos += opener
                .open_in_place(&mut wire[pos..])
                .unwrap()
                .unwrap()
                .frame_len;
        }
        assert_eq!(opener.generation(), 2);
    }

    #[test]
    fn seal_in_place_matches_seal() {
        let (mut a, _) = keyed(10);
        let (mut b, _) = keyed(10);
        let mut copied = Vec::new();
        a.seal(b"in place", true, &mut copied).unwrap();
        let mut in_place = b"prefix".to_vec();
        let start = in_place.len();
        in_place.extend_from_slice(&[0; DATA_OFFSET]);
        in_place.extend_from_slice(b"in place");
        let len = b.seal_in_place(&mut in_place, start, true).unwrap();
        assert_eq!(&in_place[start..], &copied[..]);
        assert_eq!(len, copied.len());
        // No room for the header: an error, and the buffer is untouched.
        let mut short = vec![0u8; 2];
        assert!(b.seal_in_place(&mut short, 0, false).is_err());
        assert_eq!(short, [0, 0]);
    }

    #[test]
    fn offsets_wrap_modulo_2_64() {
        let (mut sealer, mut opener) = keyed(u64::MAX - 5);
        let mut wire = Vec::new();
        sealer.seal(b"across the wrap", false, &mut wire).unwrap();
        sealer.seal(b"after", false, &mut wire).unwrap();
        let first = opener.open_in_place(&mut wire).unwrap().unwrap();
        assert_eq!(
            opener.offset(),
            (u64::MAX - 5).wrapping_add(first.frame_len as u64)
        );
        let f = opener
            .open_in_place(&mut wire[first.frame_len..])
            .unwrap()
            .unwrap();
        assert!(!f.fin);
    }
}

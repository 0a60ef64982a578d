//! The frame opener over arbitrary stream bytes, fed in arbitrary pieces.
//! Half the inputs start with a genuine frame so that the fuzzer also
//! explores what follows a valid one (FINp, rekey, data after FINp).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcrypt_proto::crypto;
use tcpcrypt_proto::frame::{FrameOpener, FrameSealer};
use tcpcrypt_proto::schedule::{KeyDirection, SessionSecret};
use tcpcrypt_proto::AeadAlgorithm;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let backend = crypto::default_backend();
    let aead = AeadAlgorithm::ALL[mode as usize % 3];
    let mk0 = SessionSecret::dangerous_from_bytes([1; 32]).master_key(backend, &[]);
    let mut stream = Vec::new();
    if mode & 0x10 != 0 {
        let mut sealer = FrameSealer::dangerous_new(backend, mk0.clone(), KeyDirection::AToB, aead, 0);
        if mode & 0x20 != 0 {
            sealer.initiate_rekey().unwrap();
        }
        let n = rest.len().min(64);
        sealer.seal(&rest[..n], mode & 0x40 != 0, &mut stream).unwrap();
    }
    stream.extend_from_slice(rest);
    let piece = 1 + (mode as usize >> 3);
    let mut opener = FrameOpener::dangerous_new(backend, mk0, KeyDirection::AToB, aead, 0);
    let mut buf = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match opener.open_in_place(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.data.end <= f.frame_len && f.frame_len <= buf.len());
                    buf.drain(..f.frame_len);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = opener.end_of_stream(0);
});

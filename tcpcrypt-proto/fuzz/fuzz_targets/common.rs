//! Deterministic randomness for the handshake targets, so that every input
//! replays exactly.

use tcpcrypt_proto::{Error, RandomSource};

pub struct Counter(pub u8);

impl RandomSource for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        for b in dest {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}

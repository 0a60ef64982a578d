//! Init1 and Init2 decoding for every TEP, and the length check that runs
//! before anything is buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcrypt_proto::Tep;
use tcpcrypt_proto::init::{self, Init1, Init2, InitKind};

fuzz_target!(|data: &[u8]| {
    for tep in Tep::ALL {
        if let Ok(m) = Init1::decode(tep, data) {
            assert!(!m.sym_ciphers.is_empty());
            assert_eq!(m.pub_field.len(), tep.pub_field_len());
        }
        if let Ok(m) = Init2::decode(tep, data) {
            assert_eq!(m.pub_field.len(), tep.pub_field_len());
        }
    }
    if let Some(header) = data.get(..init::HEADER_LEN) {
        let header: &[u8; init::HEADER_LEN] = header.try_into().unwrap();
        for kind in [InitKind::Init1, InitKind::Init2] {
            if let Ok(len) = init::message_len(kind, header) {
                assert!(len <= init::MAX_MESSAGE_LEN as usize);
            }
        }
    }
});

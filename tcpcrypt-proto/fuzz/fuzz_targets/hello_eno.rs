//! The in-band hello scanner, the ENO option parser, and both sides'
//! negotiation over whatever option parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcrypt_proto::eno::EnoOption;
use tcpcrypt_proto::hello::{self, HelloKind, HelloScan};
use tcpcrypt_proto::negotiation;
use tcpcrypt_proto::{HandshakeConfig, ResumptionCache};

fuzz_target!(|data: &[u8]| {
    let config = HandshakeConfig::default();
    for expected in [&[HelloKind::A, HelloKind::Pipelined][..], &[HelloKind::B]] {
        if let Ok(HelloScan::Hello { option, len, .. }) = hello::scan(data, expected) {
            assert!(len <= data.len() && len <= hello::MAX_HELLO_LEN);
            let _ = EnoOption::parse(&option);
        }
    }
    if let Ok(option) = EnoOption::parse(data) {
        assert_eq!(option.as_bytes(), data);
        let cache = ResumptionCache::new(1);
        let _ = negotiation::server_choose(&config, &option, Some(&cache));
        let offer = negotiation::client_offer(&config, None).expect("default offer");
        let _ = negotiation::client_interpret(&config, &offer, &option);
    }
});

//! The HTTP/1.x request and response parser of `tcpcrypt proxy --mode
//! server --http-header` (`cli/src/http_header.rs`), which reads untrusted
//! bytes from both the client and the backend: any input ends, with a
//! result or an error, and never panics.
#![no_main]

#[allow(dead_code)]
#[path = "../../../cli/src/http_header.rs"]
mod http_header;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the rest into what the client sends and what
    // the backend answers.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize * rest.len()) / 255;
    let (requests, responses) = rest.split_at(at);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, mut client_end) = duplex(1 << 20);
        let (backend, mut backend_end) = duplex(1 << 20);
        client_end.write_all(requests).await.unwrap();
        client_end.shutdown().await.unwrap();
        backend_end.write_all(responses).await.unwrap();
        backend_end.shutdown().await.unwrap();
        let _ = http_header::carry(
            tokio::io::split(client),
            tokio::io::split(backend),
            "Tcpcrypt-Session-Id",
            Some("abc"),
        )
        .await;
        // Whatever was forwarded can be read to its end.
        let mut sink = Vec::new();
        backend_end.read_to_end(&mut sink).await.unwrap();
        client_end.read_to_end(&mut sink).await.unwrap();
    });
});

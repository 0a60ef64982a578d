//! Choosing the carriage, whether or not the kernel's ENO program carries
//! this process's connections (`cli/tests/kernel.rs` tests it where it
//! does): `Kernel` never falls back to the in-band hello; `InBand` never
//! uses the kernel; both ends agree on the carriage they used.

use std::io;
use std::sync::Arc;

use tcpcrypt_tokio::{Carriage, Config, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(carriage: Carriage) -> Arc<Config> {
    Arc::new(Config::builder().carriage(carriage).build().unwrap())
}

#[tokio::test]
async fn in_band_never_uses_the_kernel_and_both_ends_agree() {
    for carriage in [Carriage::Auto, Carriage::InBand] {
        let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config(carriage))
            .await
            .unwrap();
        let addr = listener.local_addr();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            (s.carriage(), got)
        });
        let mut client = TcpcryptStream::connect(addr, &config(carriage))
            .await
            .unwrap();
        assert!(client.is_encrypted());
        if carriage == Carriage::InBand {
            assert_eq!(client.carriage(), Some(Carriage::InBand));
        }
        client.write_all(b"data").await.unwrap();
        client.shutdown().await.unwrap();
        let (server_carriage, got) = server.await.unwrap();
        // Auto: the kernel's where this process's cgroup has the program,
        // the hello elsewhere; the same on both ends.
        assert_eq!(server_carriage, client.carriage(), "{carriage:?}");
        assert_eq!(got, b"data");
    }
}

#[tokio::test]
async fn the_kernel_carriage_never_falls_back_to_the_hello() {
    // A listener of the in-band carriage only: it answers no SYN with ENO.
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config(Carriage::InBand))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok::<_, io::Error>((s.is_encrypted(), got))
    });
    match TcpcryptStream::connect(addr, &config(Carriage::Kernel)).await {
        // Not carried for this process: an error, before any byte.
        Err(err) => {
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains("kernel"), "{err}");
            server.abort();
        }
        // Carried: a SYN-ACK without ENO means plain TCP at once, with no
        // hello in the stream: the server gets only the application's bytes.
        Ok(mut client) => {
            assert!(!client.is_encrypted());
            assert_eq!(
                client.fallback_reason(),
                Some(&tcpcrypt_tokio::FallbackReason::NoEnoInSynAck)
            );
            client.write_all(b"only this").await.unwrap();
            client.shutdown().await.unwrap();
            let (encrypted, got) = server.await.unwrap().unwrap();
            assert!(!encrypted);
            assert_eq!(got, b"only this");
        }
    }
}

#[tokio::test]
async fn a_listener_under_the_kernel_carriage_is_not_bound_without_it() {
    // Where the program is not there, binding fails rather than listening
    // without ENO; where it is, the listener answers ENO (cli/tests/kernel.rs).
    if let Err(err) = TcpcryptListener::bind("127.0.0.1:0", &config(Carriage::Kernel)).await {
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("kernel"), "{err}");
    }
}

#[tokio::test]
async fn a_plain_stream_reports_no_carriage() {
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    // It answers the hello with an error, and then the plain reconnect.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
        }
    });
    let client = TcpcryptStream::connect(addr, &config(Carriage::Auto))
        .await
        .unwrap();
    assert!(!client.is_encrypted());
    assert_eq!(client.carriage(), None);
}

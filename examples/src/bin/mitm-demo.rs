//! mitm-demo: why the session ID matters.
//!
//! Runs, in one process, a login server, an active man in the middle that
//! terminates one tcpcrypt session with the client and another with the
//! server and relays between them, and a client. It shows that encryption
//! alone does not notice the attacker (each leg is encrypted, with a
//! different session ID), that a login bound to the session ID does, and
//! that the same login succeeds without the attacker. Exits 0 only if both
//! the detection and the direct login worked.

use std::net::SocketAddr;
use std::sync::Arc;

use tcpcrypt_tokio::{Config, SessionId, TcpcryptListener, TcpcryptStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const PASSWORD: &[u8] = b"correct horse battery staple";

/// The honest server: reports (session ID, login accepted) per connection.
async fn server(
    results: mpsc::UnboundedSender<(Option<SessionId>, bool)>,
) -> std::io::Result<SocketAddr> {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(Config::default())).await?;
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let session = stream.session().cloned();
            let ok = tcpcrypt_examples::login(&mut stream, session.as_ref(), PASSWORD)
                .await
                .is_ok();
            let _ = stream.shutdown().await;
            let _ = results.send((stream.session_id(), ok));
        }
    });
    Ok(addr)
}

/// The attacker: accepts the client's tcpcrypt connection, opens its own to
/// the server, and relays every byte. Reports the client-side session ID.
async fn man_in_the_middle(
    server: SocketAddr,
    seen: mpsc::UnboundedSender<Option<SessionId>>,
) -> std::io::Result<SocketAddr> {
    let config = Arc::new(Config::default());
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config).await?;
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok((mut from_client, _)) = listener.accept().await {
            let Ok(mut to_server) = TcpcryptStream::connect(server, &config).await else {
                return;
            };
            let _ = seen.send(from_client.session_id());
            println!(
                "  attacker: leg to the client {}, leg to the server {}",
                tcpcrypt_examples::describe(from_client.session()),
                tcpcrypt_examples::describe(to_server.session())
            );
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut from_client, &mut to_server).await;
            });
        }
    });
    Ok(addr)
}

/// A client login; returns (its session ID, login accepted).
async fn client(addr: SocketAddr) -> std::io::Result<(Option<SessionId>, bool)> {
    let mut stream = TcpcryptStream::connect(addr, &Arc::new(Config::default())).await?;
    let session = stream.session().cloned();
    println!(
        "  client:   {}",
        tcpcrypt_examples::describe(session.as_ref())
    );
    let result = tcpcrypt_examples::login(&mut stream, session.as_ref(), PASSWORD).await;
    match &result {
        Ok(()) => println!("  client:   login ok"),
        Err(e) => println!("  client:   {e}"),
    }
    let _ = stream.shutdown().await;
    Ok((stream.session_id(), result.is_ok()))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let server_addr = server(results_tx).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mitm_addr = man_in_the_middle(server_addr, seen_tx).await?;

    println!("1. Through an active man in the middle:");
    let (client_id, client_ok) = client(mitm_addr).await?;
    let (server_id, server_ok) = results.recv().await.expect("server result");
    let attacker_client_leg = seen.recv().await.flatten();
    let encrypted_both_legs = client_id.is_some() && server_id.is_some();
    let ids_differ = client_id != server_id && attacker_client_leg == client_id;
    println!(
        "   encryption alone: both legs encrypted = {encrypted_both_legs}; the client cannot tell (its session ID is the attacker's)"
    );
    println!(
        "   session IDs: client {} / server {}",
        client_id.map(|i| i.to_string()).unwrap_or_default(),
        server_id.map(|i| i.to_string()).unwrap_or_default()
    );
    let detected = encrypted_both_legs && ids_differ && !client_ok && !server_ok;
    println!(
        "   login bound to the session ID: {}",
        if detected {
            "rejected on both sides: ATTACK DETECTED"
        } else {
            "NOT detected"
        }
    );

    println!("2. Directly, without the attacker:");
    let (client_id, client_ok) = client(server_addr).await?;
    let (server_id, server_ok) = results.recv().await.expect("server result");
    let direct = client_ok && server_ok && client_id.is_some() && client_id == server_id;
    println!(
        "   same session ID on both ends: {}; login {}",
        client_id == server_id,
        if direct { "succeeded" } else { "FAILED" }
    );

    if detected && direct {
        println!(
            "result: the session-ID-bound login detected the man in the middle and accepted the direct login"
        );
        Ok(())
    } else {
        println!("result: FAILED (detected: {detected}, direct login: {direct})");
        std::process::exit(1);
    }
}

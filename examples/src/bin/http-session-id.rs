//! http-session-id: an HTTP server that tells each client whether its
//! connection is encrypted and what its session ID is, so that a client can
//! compare it with its own (`tcpcrypt run -- curl http://ADDR/`).
//!
//! `http-session-id [ADDR]` (default 127.0.0.1:8080). Prints
//! `listening on ADDR` first.

use std::sync::Arc;

use tcpcrypt_tokio::{Config, TcpcryptListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut listener = TcpcryptListener::bind(addr, &Arc::new(Config::default())).await?;
    println!("listening on {}", listener.local_addr());
    loop {
        let (mut stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            // Read the request head (up to the blank line).
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = match stream.session() {
                Some(s) => format!(
                    "encrypted: yes\nsession-id: {}\nrole: {}\ntep: 0x{:02x}\naead: {}\nclient: {peer}\n",
                    s.session_id, s.role, s.tep_byte, s.aead
                ),
                None => format!(
                    "encrypted: no\nreason: {}\nclient: {peer}\n",
                    stream
                        .fallback_reason()
                        .map(|r| r.to_string())
                        .unwrap_or_default()
                ),
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

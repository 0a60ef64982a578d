//! echo-server: the smallest tcpcrypt server. Accepts tcpcrypt and plain
//! clients alike, prints each connection's session ID, and echoes.
//!
//! `echo-server [ADDR]` (default 127.0.0.1:7000; port 0 picks one). Prints
//! `listening on ADDR` first.

use std::sync::Arc;

use tcpcrypt_tokio::{Config, TcpcryptListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let mut listener = TcpcryptListener::bind(addr, &Arc::new(Config::default())).await?;
    println!("listening on {}", listener.local_addr());
    loop {
        let (mut stream, peer) = listener.accept().await?;
        println!("{peer}: {}", tcpcrypt_examples::describe(stream.session()));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("{peer}: {e}");
                        return;
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

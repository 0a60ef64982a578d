//! echo-client: connects, prints the session ID (or why the connection is
//! plain), sends a message, and prints the echo.
//!
//! `echo-client ADDR MESSAGE`

use std::sync::Arc;

use tcpcrypt_tokio::{Config, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(message)) = (args.next(), args.next()) else {
        eprintln!("usage: echo-client ADDR MESSAGE");
        std::process::exit(2);
    };
    let mut stream = TcpcryptStream::connect(addr, &Arc::new(Config::default())).await?;
    match stream.fallback_reason() {
        None => println!("{}", tcpcrypt_examples::describe(stream.session())),
        Some(reason) => println!("not encrypted: {reason}"),
    }
    stream.write_all(message.as_bytes()).await?;
    stream.shutdown().await?;
    let mut echo = String::new();
    stream.read_to_string(&mut echo).await?;
    println!("echo: {echo}");
    Ok(())
}

//! pake-login: a password login bound to the tcpcrypt session ID.
//!
//! `pake-login server ADDR PASSWORD` accepts logins and prints each result
//! (`listening on ADDR` first); `pake-login client ADDR PASSWORD` logs in
//! and exits 0 on success, 1 on rejection. The password never crosses the
//! wire, and a man in the middle makes the login fail (see mitm-demo).

use std::sync::Arc;

use tcpcrypt_tokio::{Config, TcpcryptListener, TcpcryptStream};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, password] = args.as_slice() else {
        eprintln!("usage: pake-login server|client ADDR PASSWORD");
        std::process::exit(2);
    };
    let config = Arc::new(Config::default());
    match mode.as_str() {
        "server" => {
            let mut listener = TcpcryptListener::bind(addr, &config).await?;
            println!("listening on {}", listener.local_addr());
            loop {
                let (mut stream, peer) = listener.accept().await?;
                let password = password.clone().into_bytes();
                tokio::spawn(async move {
                    let session = stream.session().cloned();
                    match tcpcrypt_examples::login(&mut stream, session.as_ref(), &password).await {
                        Ok(()) => println!(
                            "{peer}: login ok, {}",
                            tcpcrypt_examples::describe(session.as_ref())
                        ),
                        Err(e) => println!("{peer}: {e}"),
                    }
                    let _ = stream.shutdown().await;
                });
            }
        }
        "client" => {
            let mut stream = TcpcryptStream::connect(addr, &config).await?;
            let session = stream.session().cloned();
            println!("{}", tcpcrypt_examples::describe(session.as_ref()));
            let result =
                tcpcrypt_examples::login(&mut stream, session.as_ref(), password.as_bytes()).await;
            let _ = stream.shutdown().await;
            match result {
                Ok(()) => {
                    println!("login ok");
                    Ok(())
                }
                Err(e) => {
                    println!("{e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!("usage: pake-login server|client ADDR PASSWORD");
            std::process::exit(2);
        }
    }
}

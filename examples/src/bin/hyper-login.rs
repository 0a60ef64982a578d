//! hyper-login: the client side of `axum-session-id`, written with
//! hyper-util's client and tcpcrypt's connector. It logs in, asks who it
//! is on the same (pooled) connection, and then shows that the cookie is
//! worthless on any other connection: a second client that replays it is
//! refused.
//!
//! `hyper-login [--http2] http://HOST:PORT`
//!
//! Prints one line per step: the status, the body and the session ID each
//! response came over.
//!
//! A login bound to the session holds only on the connection it was made
//! on, and hyper-util's pool does not promise to reuse one: an HTTP/1
//! connection goes back to the pool in a task of its own after the
//! response, and a request sent before that task has run opens a new
//! connection. Alice's client therefore uses a connector that connects
//! once ([`OneConnection`]): her later requests wait for that connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::Uri;
use hyper::body::Bytes;
use hyper::header;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tcpcrypt_tokio::{Config, HttpStream, Policy, SessionAddr, TcpcryptHttpConnector};

type HttpClient = Client<OneConnection, Full<Bytes>>;

/// A connector that opens one connection and no more: a second attempt
/// never completes, so the pool hands out the first connection once it is
/// idle again rather than racing a new one against it.
#[derive(Clone)]
struct OneConnection {
    inner: TcpcryptHttpConnector,
    used: Arc<AtomicBool>,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<HttpStream>> + Send>>;

impl tower_service::Service<Uri> for OneConnection {
    type Response = HttpStream;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        if self.used.swap(true, Ordering::SeqCst) {
            Box::pin(std::future::pending())
        } else {
            self.inner.call(uri)
        }
    }
}

/// A client that encrypts or fails (a login over plain TCP would be
/// refused by the server anyway) over one connection.
fn client(http2: bool) -> HttpClient {
    let config = Config::builder()
        .policy(Policy::Mandatory)
        .build()
        .expect("a valid configuration");
    let connector = OneConnection {
        inner: TcpcryptHttpConnector::new(Arc::new(config)),
        used: Arc::default(),
    };
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector)
}

/// Sends `request`; prints and returns its status, cookie and session ID.
async fn send(
    client: &HttpClient,
    step: &str,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Option<String>, String), Box<dyn std::error::Error>> {
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let session = response
        .extensions()
        .get::<SessionAddr>()
        .and_then(SessionAddr::session_id)
        .map(|id| id.to_string())
        .unwrap_or_else(|| "none".into());
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "{step}: {status} {} (session ID {session})",
        String::from_utf8_lossy(&body).trim_end()
    );
    Ok((status, cookie, session))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let http2 = args.first().is_some_and(|a| a == "--http2");
    if http2 {
        args.remove(0);
    }
    let [base] = &args[..] else {
        eprintln!("usage: hyper-login [--http2] http://HOST:PORT");
        std::process::exit(2);
    };
    let base = base.trim_end_matches('/');

    let alice = client(http2);
    let (status, cookie, login_session) = send(
        &alice,
        "login",
        Request::post(format!("{base}/login"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::from("user=alice&password=wonderland"))?,
    )
    .await?;
    let cookie = match (status, cookie) {
        (200, Some(cookie)) => cookie,
        _ => return Err("login failed".into()),
    };
    let whoami = |cookie: &str| {
        Request::get(format!("{base}/whoami"))
            .header(header::COOKIE, cookie)
            .body(Full::default())
    };
    let (status, _, session) = send(&alice, "whoami", whoami(&cookie)?).await?;
    println!(
        "same connection, same session: {}",
        if session == login_session {
            "yes"
        } else {
            "no"
        }
    );
    if status != 200 {
        return Err("the cookie was refused on its own connection".into());
    }

    // Another client: another connection, another session.
    let thief = client(http2);
    let (status, _, _) = send(&thief, "replayed", whoami(&cookie)?).await?;
    if status == 403 {
        println!("the replayed cookie was refused");
        Ok(())
    } else {
        Err("a replayed cookie was accepted".into())
    }
}

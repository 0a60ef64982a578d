//! The axum listener and the hyper client connector over real sockets:
//! handlers see the session ID, responses carry it, a reused connection
//! keeps one session (HTTP/1.1 and HTTP/2), and the mandatory policy
//! refuses a plain server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tcpcrypt_tokio::{
    Config, FallbackReason, HttpStream, Policy, SessionAddr, TcpcryptHttpConnector,
    TcpcryptListener,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server saw of the connection: its session ID or "plain: REASON".
async fn session(ConnectInfo(peer): ConnectInfo<SessionAddr>) -> String {
    match (peer.session_id(), peer.fallback_reason()) {
        (Some(id), _) => id.to_string(),
        (None, Some(FallbackReason::PlainClient)) => "plain client".into(),
        (None, other) => format!("plain: {other:?}"),
    }
}

/// An axum server over a `TcpcryptListener`, in this runtime.
async fn serve_axum(config: Config) -> SocketAddr {
    let listener = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(config))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let app = Router::new().route("/session", get(session));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SessionAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A connector that connects once: a second attempt never completes.
/// hyper-util's pool returns an HTTP/1 connection in a task of its own, so
/// a request sent before that task ran would otherwise race a new
/// connection against the idle one; with this, the second request waits
/// for the first connection and the test sees reuse, every time.
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

fn one_connection() -> OneConnection {
    OneConnection {
        inner: TcpcryptHttpConnector::new(Arc::new(Config::default())),
        used: Arc::default(),
    }
}

/// GETs `/session` twice through one client; returns the two bodies and
/// the sessions the responses carry.
async fn get_twice(
    client: &Client<OneConnection, Empty<Bytes>>,
    addr: SocketAddr,
) -> Vec<(String, Option<SessionAddr>)> {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!("http://{addr}/session").parse().unwrap())
            .await
            .unwrap();
        assert!(response.status().is_success());
        let extra = response.extensions().get::<SessionAddr>().cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        seen.push((String::from_utf8(body.to_vec()).unwrap(), extra));
    }
    seen
}

fn assert_one_session(seen: &[(String, Option<SessionAddr>)], server: SocketAddr) {
    let (first_body, first) = &seen[0];
    let first = first.as_ref().expect("the response carries its session");
    assert_eq!(first.addr(), server);
    let id = first.session_id().expect("encrypted").to_string();
    for (body, extra) in seen {
        // The server's handler saw the session ID the client holds ...
        assert_eq!(body, &id);
        // ... and a reused connection keeps it.
        assert_eq!(
            extra
                .as_ref()
                .and_then(|e| e.session_id())
                .unwrap()
                .to_string(),
            id
        );
    }
    assert_eq!(first_body, &id);
}

#[tokio::test]
async fn http1_client_and_axum_server_share_one_session_across_requests() {
    let addr = serve_axum(Config::default()).await;
    let client = Client::builder(TokioExecutor::new()).build(one_connection());
    assert_one_session(&get_twice(&client, addr).await, addr);
}

#[tokio::test]
async fn http2_client_and_axum_server_share_one_session_across_requests() {
    let addr = serve_axum(Config::default()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(one_connection());
    assert_one_session(&get_twice(&client, addr).await, addr);
}

#[tokio::test]
async fn a_plain_client_reaches_an_axum_handler_without_a_session() {
    let addr = serve_axum(Config::default()).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("plain client"), "{response}");
}

#[tokio::test]
async fn an_axum_server_under_the_mandatory_policy_turns_plain_clients_away() {
    let addr = serve_axum(Config::builder().policy(Policy::Mandatory).build().unwrap()).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    // Closed or reset, never answered.
    let _ = tcp.read_to_end(&mut response).await;
    assert!(
        response.is_empty(),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test]
async fn the_mandatory_connector_refuses_a_plain_server() {
    // A plain axum server: the client's hello is not answered by one.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    let app = Router::new().route("/session", get(|| async { "plain server" }));
    tokio::spawn(async move { axum::serve(plain, app).await.unwrap() });

    let config = Config::builder().policy(Policy::Mandatory).build().unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(TcpcryptHttpConnector::new(Arc::new(config)));
    let result = client
        .get(format!("http://{addr}/session").parse().unwrap())
        .await;
    assert!(
        result.is_err(),
        "a plain server answered under the mandatory policy"
    );

    // The same request with the default policy falls back and says so.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .build(TcpcryptHttpConnector::new(Arc::new(Config::default())));
    let response = client
        .get(format!("http://{addr}/session").parse().unwrap())
        .await
        .unwrap();
    let extra = response.extensions().get::<SessionAddr>().cloned().unwrap();
    assert!(!extra.is_encrypted());
    assert!(extra.fallback_reason().is_some());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain server");
}

//! axum-session-id: a login service written with axum whose session cookie
//! is bound to the tcpcrypt session ID of the connection it was issued on.
//! A cookie stolen from one connection and replayed on another is refused,
//! and a login over plain TCP is refused outright (there is no session to
//! bind to).
//!
//! `axum-session-id [ADDR]` (default 127.0.0.1:8080). Prints
//! `listening on ADDR` first. One account: `alice`, password `wonderland`
//! (or `$LOGIN_PASSWORD`).
//!
//! ```sh
//! tcpcrypt run -- curl -c jar -d 'user=alice&password=wonderland' http://127.0.0.1:8080/login \
//!     --next -b jar http://127.0.0.1:8080/whoami       # alice (one connection)
//! tcpcrypt run -- curl -b jar http://127.0.0.1:8080/whoami   # 403: another connection
//! ```
//!
//! Routes: `POST /login` (form `user`, `password`) sets the cookie `login`;
//! `GET /whoami` answers the user's name when the cookie was issued on this
//! connection. The cookie is `USER.MAC` with MAC = HMAC-SHA256(key,
//! session ID || user), the key drawn from the OS at start.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tcpcrypt_tokio::{Config, SessionAddr, SessionId, TcpcryptListener};

const USER: &str = "alice";

struct Service {
    /// Signs cookies; never leaves the process.
    key: [u8; 32],
    password: String,
}

impl Service {
    /// The cookie value for `user` on the connection with `session`.
    fn cookie(&self, session: SessionId, user: &str) -> String {
        format!("{user}.{}", hex(&self.mac(session, user)))
    }

    fn mac(&self, session: SessionId, user: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(session.as_bytes());
        mac.update(user.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

async fn login(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SessionAddr>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(session) = peer.session_id() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "login needs a tcpcrypt connection (this one is plain TCP)",
        );
    };
    let user = form.get("user").map(String::as_str).unwrap_or("");
    let password = form.get("password").map(String::as_bytes).unwrap_or(b"");
    let password_ok: bool = password.ct_eq(service.password.as_bytes()).into();
    if user != USER || !password_ok {
        return refuse(StatusCode::UNAUTHORIZED, "wrong user or password");
    }
    let cookie = service.cookie(session, user);
    (
        [(
            header::SET_COOKIE,
            format!("login={cookie}; HttpOnly; Path=/"),
        )],
        format!("logged in as {user} on session {session}\n"),
    )
        .into_response()
}

async fn whoami(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SessionAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(cookie) = login_cookie(&headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let Some(session) = peer.session_id() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "a login cookie over plain TCP is refused",
        );
    };
    let Some((user, _)) = cookie.split_once('.') else {
        return refuse(StatusCode::BAD_REQUEST, "malformed login cookie");
    };
    let expected = service.cookie(session, user);
    if bool::from(cookie.as_bytes().ct_eq(expected.as_bytes())) {
        format!("{user}\n").into_response()
    } else {
        refuse(
            StatusCode::FORBIDDEN,
            "this login cookie was issued on another connection: refused",
        )
    }
}

/// The value of the `login` cookie, if the request carries one.
fn login_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("login=").map(str::to_owned))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let service = Arc::new(Service {
        key,
        password: std::env::var("LOGIN_PASSWORD").unwrap_or_else(|_| "wonderland".into()),
    });
    let listener = TcpcryptListener::bind(addr, &Arc::new(Config::default())).await?;
    println!("listening on {}", listener.local_addr());
    let app = Router::new()
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .with_state(service);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SessionAddr>(),
    )
    .await
}

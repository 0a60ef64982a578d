//! Runs every example program as a user would and checks what it prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tcpcrypt_tokio::{Config, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running example server; killed on drop.
struct Server {
    child: Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(bin: &str, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("prints its address");
        let addr = first
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Server { child, addr, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line")
    }
}

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn session_id_in(text: &str) -> String {
    let at = text.find("session ID ").expect("a session ID") + "session ID ".len();
    text[at..at + 66].to_string()
}

#[test]
fn echo_server_and_client() {
    let server = Server::start(env!("CARGO_BIN_EXE_echo-server"), &["127.0.0.1:0"]);
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_echo-client"),
        &[&server.addr, "hello tcpcrypt"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("echo: hello tcpcrypt"), "{out}");
    let client_id = session_id_in(&out);
    let server_line = server.next_line();
    assert_eq!(
        session_id_in(&server_line),
        client_id,
        "both ends print the same session ID"
    );
}

#[tokio::test]
async fn http_session_id_reports_the_clients_session() {
    let server = Server::start(env!("CARGO_BIN_EXE_http-session-id"), &["127.0.0.1:0"]);
    let mut stream = TcpcryptStream::connect(&server.addr, &Arc::new(Config::default()))
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("encrypted: yes"));
    let id = stream.session_id().unwrap().to_string();
    assert!(
        response.contains(&format!("session-id: {id}")),
        "{response}"
    );
    // A plain client is told so.
    let mut plain = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = String::new();
    plain.read_to_string(&mut response).await.unwrap();
    assert!(response.contains("encrypted: no"), "{response}");
}

#[test]
fn pake_login_right_and_wrong_password() {
    let server = Server::start(
        env!("CARGO_BIN_EXE_pake-login"),
        &["server", "127.0.0.1:0", "s3cret"],
    );
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_pake-login"),
        &["client", &server.addr, "s3cret"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("login ok"));
    assert!(server.next_line().contains("login ok"));
    let (ok, out) = run(
        env!("CARGO_BIN_EXE_pake-login"),
        &["client", &server.addr, "guess"],
    );
    assert!(!ok, "a wrong password must fail: {out}");
    assert!(out.contains("login rejected"), "{out}");
    assert!(server.next_line().contains("login rejected"));
}

#[test]
fn mitm_demo_detects_the_attacker() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_mitm-demo"), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("ATTACK DETECTED"), "{out}");
    assert!(out.contains("login succeeded"), "{out}");
}

/// libtcpcrypt.so and the `tcpcrypt` executable that runs its daemon,
/// built with the same cargo and profile as this test.
fn shim() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "-p",
        "tcpcrypt-preload",
        "--lib",
        "-p",
        "tcpcrypt-cli",
        "--bin",
        "tcpcrypt",
    ]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building libtcpcrypt.so");
    dir.join("libtcpcrypt.so")
}

/// A daemon directory of these tests' own; its daemon exits 2 s after its
/// last connection.
fn daemon_env() -> [(&'static str, std::ffi::OsString); 2] {
    let dir = std::env::temp_dir().join(format!("tcpcrypt-examples-{}", std::process::id()));
    [
        ("TCPCRYPT_RUNTIME_DIR", dir.into()),
        ("TCPCRYPT_DAEMON_IDLE_EXIT", "2s".into()),
    ]
}

#[test]
fn python_reads_the_session_id_through_the_shim() {
    let server = Server::start(env!("CARGO_BIN_EXE_http-session-id"), &["127.0.0.1:0"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/sessid.py");
    let out = Command::new("python3")
        .args([script, &server.addr])
        .env("LD_PRELOAD", shim())
        .envs(daemon_env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let mine = lines[0].strip_prefix("client session ID: ").unwrap();
    let theirs = lines[1].strip_prefix("server session ID: ").unwrap();
    assert_eq!(mine.len(), 66);
    assert_eq!(mine, theirs);
    assert_eq!(lines[2], "match");
}

#[test]
fn http_session_id_with_shimmed_curl() {
    let server = Server::start(env!("CARGO_BIN_EXE_http-session-id"), &["127.0.0.1:0"]);
    let out = Command::new("curl")
        .args(["-sS", &format!("http://{}/", server.addr)])
        .env("LD_PRELOAD", shim())
        .envs(daemon_env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("encrypted: yes") && text.contains("session-id: "),
        "{text}"
    );
}

#[test]
fn axum_login_with_the_hyper_client_refuses_a_replayed_cookie() {
    let server = Server::start(env!("CARGO_BIN_EXE_axum-session-id"), &["127.0.0.1:0"]);
    for http2 in [false, true] {
        let url = format!("http://{}", server.addr);
        let mut args = vec![url.as_str()];
        if http2 {
            args.insert(0, "--http2");
        }
        let (ok, out) = run(env!("CARGO_BIN_EXE_hyper-login"), &args);
        assert!(ok, "http2 {http2}: {out}");
        assert!(out.contains("whoami: 200 alice"), "{out}");
        assert!(out.contains("same connection, same session: yes"), "{out}");
        // The login and the whoami came over one session, the replay over another.
        let sessions: Vec<&str> = out
            .lines()
            .filter_map(|l| l.rsplit_once("(session ID ").map(|(_, id)| id))
            .collect();
        assert_eq!(sessions.len(), 3, "{out}");
        assert_eq!(sessions[0], sessions[1]);
        assert_ne!(sessions[1], sessions[2]);
        assert!(
            out.contains("replayed: 403 this login cookie was issued on another connection"),
            "{out}"
        );
    }
}

#[test]
fn axum_login_with_shimmed_curl_refuses_a_replayed_cookie() {
    let server = Server::start(env!("CARGO_BIN_EXE_axum-session-id"), &["127.0.0.1:0"]);
    let dir = std::env::temp_dir().join(format!("tcpcrypt-axum-login-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jar = dir.join("cookies");
    let jar = jar.to_str().unwrap();
    let login = format!("http://{}/login", server.addr);
    let whoami = format!("http://{}/whoami", server.addr);
    let curl = |args: &[&str], shimmed: bool| {
        let mut cmd = Command::new("curl");
        cmd.arg("-sS").args(args);
        if shimmed {
            cmd.env("LD_PRELOAD", shim()).envs(daemon_env());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let credentials = "user=alice&password=wonderland";
    // One curl run: the login and the whoami share one encrypted connection.
    let out = curl(
        &[
            "-c",
            jar,
            "-d",
            credentials,
            &login,
            "--next",
            "-b",
            jar,
            &whoami,
        ],
        true,
    );
    assert!(out.starts_with("logged in as alice on session "), "{out}");
    assert!(out.ends_with("\nalice\n"), "{out}");
    // Another run replays the cookie on a new connection: refused.
    let out = curl(&["-b", jar, "-w", "%{http_code}", &whoami], true);
    assert!(
        out.contains("issued on another connection") && out.ends_with("403"),
        "{out}"
    );
    // Without the shim there is no session to log in on.
    let out = curl(&["-d", credentials, "-w", "%{http_code}", &login], false);
    assert!(
        out.contains("needs a tcpcrypt connection") && out.ends_with("403"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

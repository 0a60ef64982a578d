//! What the shim's tests share: building the shim and the daemon, the
//! environment of a shimmed program, servers on the library, recording
//! relays, Python under the shim.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpcrypt_tokio::{Config, SessionId, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// libtcpcrypt.so, beside this test's executable, with the `tcpcrypt`
/// executable that runs the daemon beside it. `cargo test` builds the
/// library only as an rlib for the tests, so both are built here, once,
/// with the same cargo and profile.
pub fn shim() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let so = dir.join("libtcpcrypt.so");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
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
        if dir.file_name().is_some_and(|d| d == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo");
        assert!(
            status.success(),
            "building libtcpcrypt.so and tcpcrypt failed"
        );
    });
    assert!(so.exists(), "{} not built", so.display());
    so
}

/// The daemon directory of this test run: its own, so that the tests
/// neither use nor disturb the user's daemon. The daemons the tests start
/// exit by themselves 3 s after their last connection.
pub fn daemon_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tcpcrypt-shim-tests-{}", std::process::id()))
}

/// The environment of a shimmed program in these tests.
pub fn shim_env() -> [(&'static str, std::ffi::OsString); 3] {
    [
        ("LD_PRELOAD", shim().into()),
        ("TCPCRYPT_RUNTIME_DIR", daemon_dir().into()),
        ("TCPCRYPT_DAEMON_IDLE_EXIT", "3s".into()),
    ]
}

pub fn curl(shimmed: bool, url: &str) -> (i32, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", url]);
    if shimmed {
        cmd.envs(shim_env());
    }
    let out = cmd.output().expect("curl");
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// A server configuration for tests whose clients either speak tcpcrypt or
/// speak first: a long wait for the hello keeps a loaded machine from
/// mistaking a slow tcpcrypt client for a plain one.
pub fn patient_server() -> Config {
    Config::builder()
        .client_hello_wait(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A server on the tcpcrypt library at `bind`, on a thread of its own:
/// each accepted stream goes to `handle`, in a task of its own.
pub fn tcpcrypt_server<F, Fut>(bind: &'static str, handle: F) -> SocketAddr
where
    F: Fn(TcpcryptStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut l = TcpcryptListener::bind(bind, &Arc::new(patient_server()))
                .await
                .unwrap();
            tx.send(l.local_addr()).unwrap();
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(handle(s));
            }
        });
    });
    rx.recv().unwrap()
}

/// An HTTP server on the tcpcrypt library that answers `body` and reports
/// each connection's session ID (None for plain clients).
pub fn tcpcrypt_http(body: Vec<u8>) -> (SocketAddr, Arc<Mutex<Vec<Option<SessionId>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let body = Arc::new(body);
    let addr = tcpcrypt_server("127.0.0.1:0", move |mut s| {
        seen2.lock().unwrap().push(s.session_id());
        let body = body.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(header.as_bytes()).await;
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, seen)
}

/// A relay that records the bytes going to the client.
pub fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Arc::new(Mutex::new(Vec::new()));
    let rec2 = rec.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Ok(mut s) = TcpStream::connect(target) else {
                return;
            };
            let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            let rec = rec2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, rec)
}

pub struct Py(pub Child, pub u16);

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` serving `dir`, shimmed or not.
pub fn python_server(dir: &std::path::Path, shimmed: bool) -> Py {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ])
    .current_dir(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if shimmed {
        cmd.envs(shim_env());
    }
    let child = cmd.spawn().unwrap();
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Py(child, port)
}

/// A shimmed Python server: `script` listens on a port of its choosing and
/// prints it first. The shim waits long for client hellos (every client
/// here speaks tcpcrypt or speaks first).
pub fn shimmed_python_server(script: &str) -> Py {
    shimmed_python_server_with(script, &[]).0
}

/// `shimmed_python_server` with more environment, and the rest of what the
/// script prints.
pub fn shimmed_python_server_with(
    script: &str,
    env: &[(&str, &str)],
) -> (Py, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .envs(shim_env())
        .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines.next().unwrap().unwrap().trim().parse().unwrap();
    (Py(child, port), lines)
}

pub fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Runs a Python script under the shim; returns its stdout lines.
pub fn python_shimmed(script: &str) -> Vec<String> {
    python_shimmed_with(script, &[])
}

/// `python_shimmed` with more environment.
pub fn python_shimmed_with(script: &str, env: &[(&str, &str)]) -> Vec<String> {
    // Every server these scripts reach answers at once or speaks tcpcrypt:
    // a long wait for its hello keeps a loaded machine from taking a slow
    // tcpcrypt server for a legacy one.
    let out = Command::new("python3")
        .args(["-c", script])
        .envs(shim_env())
        .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "30000")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// The `tcpcrypt` executable built beside the shim.
pub fn tcpcrypt_bin() -> PathBuf {
    shim().parent().unwrap().join("tcpcrypt")
}

pub fn which(name: &str) -> Result<PathBuf, ()> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

/// A loopback port nobody listens on.
pub fn closed_port() -> u16 {
    free_port()
}

/// A free loopback port for a server that takes a port number. Taken from
/// below the kernel's ephemeral range, each at most once per run: a port
/// the kernel hands out for `bind(0)` can be handed out again, to another
/// test's server, before this one binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 8_000) as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_000, "out of ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A plain server that records everything it receives.
pub fn recording_server() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let got = got2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, got)
}

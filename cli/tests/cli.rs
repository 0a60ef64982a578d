//! The `tcpcrypt` command run as a user would, against real processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tcpcrypt_tokio::{Config, TcpcryptListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{BIN, build_shim};

/// Its clients speak tcpcrypt or speak first: a long wait for the hello
/// keeps a loaded machine from mistaking a slow client for a plain one.
fn patient() -> Config {
    Config::builder()
        .client_hello_wait(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

fn tcpcrypt(args: &[&str]) -> std::process::Output {
    build_shim();
    Command::new(BIN).args(args).output().unwrap()
}

/// `tcpcrypt status | head`: a reader that has seen enough ends the
/// listing quietly (exit 0), never with a panic.
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let dir = std::env::temp_dir().join(format!("tcpcrypt-cli-pipe-{}", std::process::id()));
    for json in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = Command::new(BIN);
        cmd.arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .env("TCPCRYPT_RUNTIME_DIR", &dir)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_end_to_end() {
    let out = tcpcrypt(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id_of = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {label} in {text}"))
    };
    let (server, client) = (id_of("server session ID: "), id_of("client session ID: "));
    assert_eq!(server.len(), 66);
    assert_eq!(server, client);
    assert!(
        text.contains("0000  e5 45 4e 4f 01"),
        "hex dump of the hello: {text}"
    );
    assert!(text.contains("fell back to plain TCP"));
    assert!(text.trim_end().ends_with("demo: OK"));
}

#[test]
fn demo_fails_without_the_shim() {
    let out = Command::new(BIN)
        .arg("demo")
        .env("TCPCRYPT_LIB", "/nonexistent/libtcpcrypt.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn run_passes_the_exit_status_and_the_environment() {
    let out = tcpcrypt(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo \"$LD_PRELOAD|$TCPCRYPT_POLICY|$TCPCRYPT_EXCLUDE\"; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let line = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert!(
        parts[0].starts_with('/') && parts[0].ends_with("libtcpcrypt.so"),
        "absolute path: {line}"
    );
    // No flag: the shim's default (opportunistic), or the environment's.
    assert_eq!(parts[1], "");
    assert_eq!(parts[2], "");
    for (flag, env, want) in [
        (None, "mandatory", "mandatory"),
        (Some("--off"), "mandatory", "off"),
        (Some("--mandatory"), "off", "mandatory"),
    ] {
        let out = Command::new(BIN)
            .arg("run")
            .args(flag)
            .args(["--", "sh", "-c", "echo \"$TCPCRYPT_POLICY\""])
            .env("TCPCRYPT_POLICY", env)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{flag:?} with TCPCRYPT_POLICY={env}"
        );
    }
    // Appends to an existing LD_PRELOAD; options reach the environment.
    build_shim();
    let out = Command::new(BIN)
        .args([
            "run",
            "--mandatory",
            "--exclude",
            ":22",
            "--exclude",
            "10.0.0.0/8",
            "--include",
            "192.168.0.0/16",
            "--",
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$TCPCRYPT_POLICY|$TCPCRYPT_EXCLUDE|$TCPCRYPT_INCLUDE\"",
        ])
        .env("LD_PRELOAD", "libfirst.so")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert!(parts[0].starts_with("libfirst.so /"), "{line}");
    assert_eq!(parts[1], "mandatory");
    assert_eq!(parts[2], ":22,10.0.0.0/8");
    assert_eq!(parts[3], "192.168.0.0/16");
    // A missing command, by name or by path: 127, as a shell says; one
    // that cannot be started: 126.
    for missing in ["no-such-command-here", "/nonexistent/command"] {
        assert_eq!(tcpcrypt(&["run", "--", missing]).status.code(), Some(127));
    }
    let not_executable =
        std::env::temp_dir().join(format!("tcpcrypt-noexec-{}", std::process::id()));
    std::fs::write(&not_executable, "not a program\n").unwrap();
    let out = tcpcrypt(&["run", "--", not_executable.to_str().unwrap()]);
    std::fs::remove_file(&not_executable).unwrap();
    assert_eq!(out.status.code(), Some(126));
    // A rule the shim would not understand is a usage error, before
    // anything runs.
    for bad in ["10.0.0.0/33", "bogus", "10.0.0.5:22", ":22,nonsense"] {
        for option in ["--exclude", "--include"] {
            let out = tcpcrypt(&["run", option, bad, "--", "sh", "-c", "echo ran"]);
            assert_eq!(out.status.code(), Some(2), "{option} {bad}");
            assert!(out.stdout.is_empty(), "{option} {bad}: the program ran");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("is not a rule"),
                "{option} {bad}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_destination_without_a_port_is_a_usage_error() {
    for command in ["check", "connect"] {
        for bad in ["127.0.0.1", "example.net", "::1:7777", "host:http"] {
            let out = tcpcrypt(&[command, bad]);
            assert_eq!(out.status.code(), Some(2), "{command} {bad}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"),
                "{command} {bad}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn run_warns_about_programs_it_cannot_reach() {
    let Some(stat) = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        return;
    };
    let out = tcpcrypt(&["run", "--", stat, "--version"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("statically linked"), "{err}");
}

// Multi-threaded: the test blocks on child processes while the server's
// tasks must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_curl_to_a_tcpcrypt_server_and_status_lists_live_connections() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &Arc::new(patient()))
        .await
        .unwrap();
    let addr = listener.local_addr();
    // A daemon of this test's own, gone 2 s after its last connection.
    let status_dir =
        std::env::temp_dir().join(format!("tcpcrypt-cli-status-{}", std::process::id()));
    let daemon_env = [
        ("TCPCRYPT_RUNTIME_DIR", status_dir.as_os_str()),
        ("TCPCRYPT_DAEMON_IDLE_EXIT", std::ffi::OsStr::new("2s")),
    ];
    let server = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            ids.push(s.session_id());
            let mut buf = vec![0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let _ = s.shutdown().await;
        }
        ids
    });
    build_shim();
    let out = tokio::process::Command::new(BIN)
        .args(["run", "--", "curl", "-sS", &format!("http://{addr}/")])
        .envs(daemon_env)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"ok");
    // A client holding a connection open, to be listed.
    let script = format!(
        "import socket,sys,time\ns=socket.create_connection(('127.0.0.1',{}))\nprint('up',flush=True)\nsys.stdin.readline()\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\ns.recv(100)\n",
        addr.port()
    );
    let mut holder = std::process::Command::new(BIN)
        .args(["run", "--", "python3", "-c", &script])
        .envs(daemon_env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut listed = String::new();
    for _ in 0..200 {
        let out = Command::new(BIN)
            .args(["status", "--json"])
            .envs(daemon_env)
            .output()
            .unwrap();
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if listed.contains("session_id\":\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let table = Command::new(BIN)
        .arg("status")
        .envs(daemon_env)
        .output()
        .unwrap();
    use std::io::Write;
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(holder.wait().unwrap().success());
    let ids = server.await.unwrap();
    assert!(
        ids.iter().all(|i| i.is_some()),
        "both connections encrypted"
    );
    let id = ids[1].unwrap().to_string();
    assert!(
        listed.starts_with('[') && listed.contains(&format!("\"session_id\":\"{id}\"")),
        "{listed}"
    );
    assert!(listed.contains("\"program\":\"python3\""), "{listed}");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&id) && table.contains("PID"), "{table}");
    let _ = std::fs::remove_dir_all(&status_dir);
}

#[test]
fn run_shell_starts_the_users_shell_preloaded() {
    build_shim();
    let mut child = Command::new(BIN)
        .args(["run", "--shell"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo \"$LD_PRELOAD|$TCPCRYPT_SHELL|$TCPCRYPT_POLICY\"; exit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "the shell's status");
    let line = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert!(parts[0].ends_with("libtcpcrypt.so"), "{line}");
    // No policy flag: the environment's (here none: the shim's default).
    assert_eq!(parts[1..], ["1", ""]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting /bin/sh"));
}

#[test]
fn run_passes_signals_on_and_exits_with_the_programs_status() {
    build_shim();
    let script = r#"
import signal, sys, time
def on(sig, _):
    print("got", signal.Signals(sig).name, flush=True)
    sys.exit(7)
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGQUIT):
    signal.signal(s, on)
print("ready", flush=True)
time.sleep(30)
print("not signalled", flush=True)
"#;
    for (sig, want, code) in [
        (nix::sys::signal::Signal::SIGTERM, "got SIGTERM", Some(7)),
        (nix::sys::signal::Signal::SIGUSR1, "got SIGUSR1", Some(7)),
        (nix::sys::signal::Signal::SIGUSR2, "got SIGUSR2", Some(7)),
        (nix::sys::signal::Signal::SIGINT, "got SIGINT", Some(7)),
        (nix::sys::signal::Signal::SIGQUIT, "got SIGQUIT", Some(7)),
        // Not handled: the program dies of it, and the launcher says so.
        (nix::sys::signal::Signal::SIGHUP, "", Some(128 + 1)),
    ] {
        let mut child = Command::new(BIN)
            .args(["run", "--", "python3", "-c", script])
            .env(
                "TCPCRYPT_RUNTIME_DIR",
                std::env::temp_dir().join("tcpcrypt-cli-signals"),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
        assert_eq!(rest.join(""), want, "{sig}");
        assert_eq!(child.wait().unwrap().code(), code, "{sig}");
    }
}

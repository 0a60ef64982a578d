//! Real programs under the shim, each four ways: shimmed to shimmed
//! (encrypted: a tap on the wire sees the hello and no plaintext), shimmed
//! to plain, plain to shimmed, and a closed port (the same exit status and
//! message as without the shim). `scripts/test` installs the programs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A server process in a process group of its own, killed with the whole
/// group (`git daemon` runs a `git-daemon` child) and reaped when dropped.
struct Server(Child);

impl Server {
    fn spawn(cmd: &mut Command) -> Server {
        use std::os::unix::process::CommandExt;
        Server(cmd.process_group(0).spawn().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Waits until a socket listens on `port`, as the kernel's tables show
/// it: no probe connection, which a one-shot server would take for its
/// only client.
fn wait_listening(port: u16) {
    let port = format!(":{port:04X}");
    let listens = || {
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
                })
        })
    };
    let start = Instant::now();
    while !listens() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits at most 20 s for a server to end (one whose client failed
/// may never see a connection; dropping it kills it).
fn wait_ended(server: &mut Server) {
    let start = Instant::now();
    while server.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts `cmd` (shimmed or not) as a server on `port`, and waits until it
/// listens.
fn serve(mut cmd: Command, shimmed: bool, port: u16) -> Server {
    if shimmed {
        cmd.envs(shim_env())
            .envs(daemon_log_env())
            .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000");
    }
    let server = Server::spawn(cmd.stdin(Stdio::null()));
    wait_listening(port);
    server
}

/// Runs a client command line under `sh -c`, shimmed or not.
fn client(shimmed: bool, line: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line]).stdin(Stdio::null());
    if shimmed {
        cmd.envs(shim_env())
            .envs(daemon_log_env())
            .env("TCPCRYPT_SERVER_HELLO_TIMEOUT_MS", "3000");
    }
    cmd.output().unwrap()
}

/// The daemon these programs start logs its negotiations (programs that
/// do not read RUST_LOG themselves): a failure's message can quote them.
fn daemon_log_env() -> [(&'static str, std::ffi::OsString); 2] {
    [
        ("TCPCRYPT_DAEMON_LOG", daemon_log().into()),
        ("RUST_LOG", "debug".into()),
    ]
}

fn daemon_log() -> std::path::PathBuf {
    daemon_dir().join("daemon.log")
}

/// The last lines of the daemon's log, for a failure's message.
fn daemon_log_tail() -> String {
    let log = std::fs::read_to_string(daemon_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tap between clients and `target` that records both directions.
fn tap(target: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let wire2 = wire.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(s) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            for (mut from, mut to) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)] {
                let wire = wire2.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        wire.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, wire)
}

/// Asserts that the tap saw tcpcrypt hellos and none of `secrets`.
fn assert_encrypted(wire: &Mutex<Vec<u8>>, secrets: &[&[u8]]) {
    let wire = wire.lock().unwrap();
    assert!(wire.starts_with(b"\xE5ENO\x01"), "no hello on the wire");
    for s in secrets {
        assert!(
            !wire.windows(s.len()).any(|w| w == *s),
            "plaintext on the wire: {}",
            String::from_utf8_lossy(s)
        );
    }
}

/// A closed port gets the same exit status and messages with the shim as
/// without.
fn assert_closed_port_alike(line: &str) {
    let line = line.replace("CLOSED", &closed_port().to_string());
    let (with, without) = (client(true, &line), client(false, &line));
    assert_eq!(with.status.code(), without.status.code(), "{line}");
    assert_ne!(with.status.code(), Some(0), "{line}");
    assert_eq!(
        String::from_utf8_lossy(&with.stderr),
        String::from_utf8_lossy(&without.stderr),
        "{line}"
    );
    assert_eq!(text(&with), text(&without), "{line}");
}

/// One program test at a time: each starts servers, and under the load of
/// all of them at once on two cores a connection can miss a deadline.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn require(program: &str) {
    which(program)
        .unwrap_or_else(|_| panic!("{program} is not installed (scripts/test installs it)"));
}

#[test]
fn redis() {
    let _serial = one_at_a_time();
    require("redis-server");
    require("redis-cli");
    let redis = |shimmed: bool| {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null());
        (serve(cmd, shimmed, port), port)
    };
    let set_get = |shimmed: bool, port: u16| {
        let out = client(
            shimmed,
            &format!("redis-cli -p {port} SET k secret-redis-value && redis-cli -p {port} GET k"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text(&out), "OK\nsecret-redis-value\n");
    };
    let (_server, port) = redis(true);
    let (tapped, wire) = tap(port);
    set_get(true, tapped);
    assert_encrypted(&wire, &[b"secret-redis-value", b"SET"]);
    set_get(false, port);
    let (_plain, plain_port) = redis(false);
    set_get(true, plain_port);
    assert_closed_port_alike("redis-cli -p CLOSED ping");
}

#[test]
fn openbsd_netcat() {
    let _serial = one_at_a_time();
    require("nc");
    let listen = |shimmed: bool| {
        let port = free_port();
        let mut cmd = Command::new("nc");
        // -k: one listener for all the clients below.
        cmd.args(["-k", "-l", "127.0.0.1", &port.to_string()])
            .stdout(Stdio::piped());
        (serve(cmd, shimmed, port), port)
    };
    let send = |shimmed: bool, port: u16, what: &str| {
        let out = client(shimmed, &format!("printf {what} | nc -N 127.0.0.1 {port}"));
        assert!(out.status.success());
    };
    let received = |server: &mut Server, want: &str| {
        let mut out = server.0.stdout.take().unwrap();
        let mut got = vec![0u8; want.len()];
        out.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    };
    let (mut server, port) = listen(true);
    let (tapped, wire) = tap(port);
    send(true, tapped, "secret-nc-1");
    received(&mut server, "secret-nc-1");
    assert_encrypted(&wire, &[b"secret-nc-1"]);
    let (mut server, port) = listen(true);
    send(false, port, "plain-client");
    received(&mut server, "plain-client");
    // A plain server gets the in-band hello first, on a connection of its
    // own (docs/SHIM.md), then the data on the plain reconnect.
    let (mut server, port) = listen(false);
    send(true, port, "plain-server");
    let mut out = server.0.stdout.take().unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while !got.ends_with(b"plain-server") {
        assert!(start.elapsed() < Duration::from_secs(20), "{got:?}");
        let mut buf = [0u8; 256];
        let n = out.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_closed_port_alike("nc -v 127.0.0.1 CLOSED </dev/null");
}

/// `socat -u` with a one-shot server: the cases that lost every byte when
/// the relay lived in the program (a shimmed writer that exits at once, a
/// shimmed one-shot server that sends a file and exits).
#[test]
fn socat_one_way_with_one_shot_servers() {
    let _serial = one_at_a_time();
    require("socat");
    let dir = scratch("socat");
    let payload: Vec<u8> = body(300_000);
    std::fs::write(dir.join("in"), &payload).unwrap();
    let out_file = dir.join("out");
    let one_shot = |shimmed: bool, port: u16, from: String, to: String| {
        let mut cmd = Command::new("socat");
        cmd.args(["-u", &from, &to]);
        if shimmed {
            cmd.envs(shim_env())
                .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000");
        }
        let server = Server::spawn(&mut cmd);
        wait_listening(port);
        server
    };
    for (server_shimmed, client_shimmed) in [(true, true), (true, false)] {
        let port = free_port();
        let mut server = one_shot(
            server_shimmed,
            port,
            format!("OPEN:{}", dir.join("in").display()),
            format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
        );
        let out = client(
            client_shimmed,
            &format!(
                "socat -u TCP:127.0.0.1:{port},retry=50,interval=0.1 CREATE:{}",
                out_file.display()
            ),
        );
        assert!(out.status.success());
        wait_ended(&mut server);
        assert!(
            std::fs::read(&out_file).unwrap() == payload,
            "a server that sends a file and exits; client shimmed {client_shimmed}"
        );
    }
    for (server_shimmed, client_shimmed) in [(true, true), (false, true)] {
        let port = free_port();
        // A plain one-shot server would spend its only connection on the
        // in-band hello (docs/SHIM.md): this one forks.
        let listen = if server_shimmed {
            format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr")
        } else {
            format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork")
        };
        let _ = std::fs::remove_file(&out_file);
        let _server = one_shot(
            server_shimmed,
            port,
            listen,
            format!("OPEN:{},creat,append", out_file.display()),
        );
        // Shimmed to shimmed through a tap: encrypted on the wire.
        let tapped = (server_shimmed && client_shimmed).then(|| tap(port));
        let to = tapped.as_ref().map_or(port, |(p, _)| *p);
        let out = client(
            client_shimmed,
            &format!("echo secret-socat | socat -u - TCP:127.0.0.1:{to},retry=50,interval=0.1"),
        );
        assert!(out.status.success());
        let start = Instant::now();
        while !std::fs::read(&out_file)
            .unwrap_or_default()
            .ends_with(b"secret-socat\n")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "a writer that exits at once; server shimmed {server_shimmed}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some((_, wire)) = tapped {
            assert_encrypted(&wire, &[b"secret-socat"]);
        }
    }
    // A closed port: the same exit status and error, with and without the
    // shim (socat's messages start with the time and its pid).
    let line = format!("echo x | socat -u - TCP:127.0.0.1:{}", closed_port());
    let (with, without) = (client(true, &line), client(false, &line));
    assert_eq!(with.status.code(), without.status.code());
    assert_ne!(with.status.code(), Some(0));
    let error = |o: &Output| {
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        text.split_once(" E ")
            .map(|(_, e)| e.to_owned())
            .unwrap_or(text)
    };
    assert_eq!(error(&with), error(&without));
    assert!(
        error(&with).contains("Connection refused"),
        "{}",
        error(&with)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program that writes to a plain one-shot `nc -l` and ends (`nc -N`)
/// either delivers exactly its bytes or fails: never exit 0 with them
/// lost. `nc -l` stays silent, so its only connection takes the hello;
/// the plain reconnect is then refused once it has ended, rather than
/// left in its queue with the program's bytes (docs/PROTOCOL.md, "A
/// silent server").
#[test]
fn a_plain_one_shot_nc_listener_gets_the_bytes_or_the_writer_fails() {
    let _serial = one_at_a_time();
    require("nc");
    let dir = scratch("nc-one-shot");
    let payload = body(1 << 20);
    std::fs::write(dir.join("in"), &payload).unwrap();
    let port = free_port();
    let mut server = Server::spawn(
        Command::new("nc")
            .args(["-l", "127.0.0.1", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("out")).unwrap()),
    );
    wait_listening(port);
    let out = client(
        true,
        &format!("nc -N 127.0.0.1 {port} < {}", dir.join("in").display()),
    );
    wait_ended(&mut server);
    let got = std::fs::read(dir.join("out")).unwrap();
    assert!(
        !out.status.success() || got == payload,
        "exit 0 with {} of {} bytes delivered",
        got.len(),
        payload.len()
    );
    assert!(
        !out.status.success(),
        "the hello took nc's only connection: {}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcpcrypt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn wget_and_a_python_http_server() {
    let _serial = one_at_a_time();
    require("wget");
    let dir = scratch("wget");
    std::fs::write(dir.join("page"), "secret-wget-page\n").unwrap();
    let get = |shimmed: bool, port: u16| {
        let out = client(
            shimmed,
            &format!("wget -q -O - http://127.0.0.1:{port}/page"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text(&out), "secret-wget-page\n");
    };
    let server = python_server(&dir, true);
    let (tapped, wire) = tap(server.1);
    get(true, tapped);
    assert_encrypted(&wire, &[b"secret-wget-page", b"GET /page"]);
    get(false, server.1);
    let plain = python_server(&dir, false);
    get(true, plain.1);
    assert_closed_port_alike("wget -q -O - http://127.0.0.1:CLOSED/");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_http_server_and_client() {
    let _serial = one_at_a_time();
    require("node");
    let serve_node = |shimmed: bool| {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.args([
            "-e",
            &format!(
                "require('http').createServer((q, r) => r.end('secret-node-' + q.url)).listen({port}, '127.0.0.1')"
            ),
        ]);
        (serve(cmd, shimmed, port), port)
    };
    let get = |shimmed: bool, port: u16| {
        let out = client(
            shimmed,
            &format!(
                "node -e \"require('http').get('http://127.0.0.1:{port}/x', r => {{ let d = ''; r.on('data', c => d += c); r.on('end', () => console.log(d)); }})\""
            ),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text(&out), "secret-node-/x\n");
    };
    let (_s, port) = serve_node(true);
    let (tapped, wire) = tap(port);
    get(true, tapped);
    assert_encrypted(&wire, &[b"secret-node", b"GET /x"]);
    get(false, port);
    let (_p, plain_port) = serve_node(false);
    get(true, plain_port);
    assert_closed_port_alike(
        "node -e \"require('http').get('http://127.0.0.1:CLOSED/').on('error', e => { console.error(e.code); process.exit(3) })\"",
    );
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn git_daemon_and_git_clone() {
    let _serial = one_at_a_time();
    require("git");
    let dir = scratch("git");
    let repo = dir.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("file"), "secret-git-content\n").unwrap();
    git(&repo, &["add", "file"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let daemon = |shimmed: bool| {
        let port = free_port();
        let mut cmd = Command::new("git");
        cmd.args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", dir.display()),
        ])
        .arg(&dir);
        (serve(cmd, shimmed, port), port)
    };
    let clone = |shimmed: bool, port: u16, into: &str| {
        let dest = dir.join(into);
        let out = client(
            shimmed,
            &format!(
                "git clone -q git://127.0.0.1:{port}/repo {}",
                dest.display()
            ),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("file")).unwrap(),
            "secret-git-content\n"
        );
    };
    let (_d, port) = daemon(true);
    let (tapped, wire) = tap(port);
    clone(true, tapped, "a");
    assert_encrypted(&wire, &[b"git-upload-pack", b"refs/heads/main"]);
    clone(false, port, "b");
    let (_p, plain_port) = daemon(false);
    clone(true, plain_port, "c");
    assert_closed_port_alike("git ls-remote git://127.0.0.1:CLOSED/repo");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn openssh_server_and_client() {
    let _serial = one_at_a_time();
    require("ssh");
    require("ssh-keygen");
    let sshd = which("sshd").expect("sshd is not installed (scripts/test installs it)");
    let dir = scratch("ssh");
    let keygen = |name: &str| {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    keygen("host");
    keygen("id");
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
    // Privilege separation wants its empty directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let start = |shimmed: bool| {
        let port = free_port();
        let config = dir.join(format!("sshd_config_{port}"));
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd_{port}.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(&sshd);
        cmd.args(["-D", "-E"])
            .arg(dir.join(format!("sshd_{port}.log")))
            .arg("-f")
            .arg(&config);
        (serve(cmd, shimmed, port), port)
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let ssh = |port: &str| {
        format!(
            "ssh -F none -i {}/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p {port} {user}@127.0.0.1",
            dir.display()
        )
    };
    let run = |shimmed: bool, port: u16| {
        let out = client(
            shimmed,
            &format!("{} echo secret-ssh", ssh(&port.to_string())),
        );
        let logs: String = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(
            out.status.success(),
            "client shimmed {shimmed}, port {port}: {}\nsshd logs: {logs}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon_log_tail()
        );
        assert_eq!(text(&out), "secret-ssh\n");
    };
    let (_s, port) = start(true);
    let (tapped, wire) = tap(port);
    run(true, tapped);
    // SSH is encrypted itself; its version banner is not.
    assert_encrypted(&wire, &[b"SSH-2.0"]);
    run(false, port);
    let (_p, plain_port) = start(false);
    run(true, plain_port);
    assert_closed_port_alike(&format!("{} true", ssh("CLOSED")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PostgreSQL server programs of the distribution's newest version.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs it)")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions.last().unwrap().join("bin").join(name)
}

/// A PostgreSQL server as user `postgres`, stopped with a fast shutdown.
struct Postgres(Child);

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.0.wait();
    }
}

#[test]
fn postgresql_over_tcp_and_its_unix_socket_with_pgbench() {
    let _serial = one_at_a_time();
    require("psql");
    require("pgbench");
    let dir = scratch("pg");
    let chown = |p: &Path| {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    let (uid, gid) = {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("user postgres (made by the postgresql package)");
        (user.uid.as_raw(), user.gid.as_raw())
    };
    // As user postgres, the program itself the child (so that signals
    // reach it).
    let as_postgres = |args: &[&std::ffi::OsStr]| {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]).uid(uid).gid(gid).current_dir(&dir);
        cmd
    };
    chown(&dir);
    let data = dir.join("data");
    let out = as_postgres(&[
        pg_bin("initdb").as_os_str(),
        "--no-sync".as_ref(),
        "-A".as_ref(),
        "trust".as_ref(),
        "-U".as_ref(),
        "postgres".as_ref(),
        "-D".as_ref(),
        data.as_os_str(),
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = |shimmed: bool| {
        let port = free_port();
        let sockets = dir.join(format!("sock{port}"));
        std::fs::create_dir_all(&sockets).unwrap();
        chown(&sockets);
        let mut cmd = as_postgres(&[
            pg_bin("postgres").as_os_str(),
            "-D".as_ref(),
            data.as_os_str(),
            "-p".as_ref(),
            port.to_string().as_ref(),
            "-k".as_ref(),
            sockets.as_os_str(),
            "-c".as_ref(),
            "listen_addresses=127.0.0.1".as_ref(),
            "-c".as_ref(),
            "log_min_messages=fatal".as_ref(),
        ]);
        if shimmed {
            // The server's daemon is user postgres's, in a directory of
            // its own.
            cmd.envs(shim_env())
                .env("TCPCRYPT_RUNTIME_DIR", dir.join(format!("daemon{port}")))
                .env("TCPCRYPT_CLIENT_HELLO_WAIT_MS", "10000");
        }
        let server = Postgres(cmd.stderr(Stdio::null()).spawn().unwrap());
        wait_listening(port);
        (server, port, sockets)
    };
    let psql = |shimmed: bool, host: &str, port: u16, sql: &str| {
        let run = || {
            client(
                shimmed,
                &format!("psql -X -A -t -h {host} -p {port} -U postgres -d postgres -c \"{sql}\""),
            )
        };
        // The server listens before it takes logins: a loaded machine
        // sees "the database system is starting up" (bounded: 10 s).
        let mut out = run();
        for _ in 0..100 {
            if out.status.success()
                || !String::from_utf8_lossy(&out.stderr).contains("is starting up")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = run();
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out)
    };
    let (_server, port, sockets) = start(true);
    let (tapped, wire) = tap(port);
    assert_eq!(
        psql(true, "127.0.0.1", tapped, "select 'secret-' || 'pg'"),
        "secret-pg\n"
    );
    assert_encrypted(&wire, &[b"secret-", b"postgres"]);
    assert_eq!(psql(false, "127.0.0.1", port, "select 1"), "1\n");
    let unix = sockets.to_str().unwrap();
    assert_eq!(
        psql(true, unix, port, "select 2"),
        "2\n",
        "login over the Unix socket"
    );
    assert_eq!(psql(false, unix, port, "select 3"), "3\n");
    // pgbench, shimmed on both ends: every backend goes when its client
    // does.
    let bench = |args: &str| {
        let out = client(
            true,
            &format!("pgbench -h 127.0.0.1 -p {port} -U postgres {args} postgres"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bench("-q -i -s 1");
    bench("-S -c 4 -T 2");
    let backends = "select count(*) from pg_stat_activity where backend_type = 'client backend'";
    let start_wait = Instant::now();
    while psql(false, unix, port, backends) != "1\n" {
        assert!(
            start_wait.elapsed() < Duration::from_secs(10),
            "pgbench's backends stay: {}",
            psql(false, unix, port, backends)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same data directory, served plain: one server at a time.
    drop(_server);
    let (plain, plain_port, _) = start(false);
    assert_eq!(psql(true, "127.0.0.1", plain_port, "select 4"), "4\n");
    drop(plain);
    assert_closed_port_alike("psql -X -h 127.0.0.1 -p CLOSED -U postgres -c 'select 1'");
    let _ = std::fs::remove_dir_all(&dir);
}

//! The kernel carriage on this machine: `tcpcrypt kernel enable` on a
//! cgroup of the test's own, processes in it, in a network namespace of
//! the test's own, and the segments checked on a packet capture. Needs
//! root and BPF; without them it says why and checks nothing else.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, next_json};
use serde_json::Value;
use tcpcrypt_kernel::{Outcome, Sockets};

/// A cgroup v2 directory with the ENO program attached, and a network
/// namespace; both removed on drop.
struct Setup {
    cgroup: PathBuf,
    netns: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["kernel", "disable", "--cgroup"])
            .arg(&self.cgroup)
            .status();
        // Processes still in it would keep it: they are ours and gone.
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.starts_with("cgroup2 ")).then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
    })
}

fn setup() -> Result<Setup, String> {
    if !nix_is_root() {
        return Err("not root".into());
    }
    let netns = format!("tck-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &netns]).status();
    if !ok.is_ok_and(|s| s.success()) {
        return Err("cannot create a network namespace".into());
    }
    let _ = Command::new("ip")
        .args(["-n", &netns, "link", "set", "lo", "up"])
        .status();
    // Enabling mounts a cgroup v2 hierarchy when none is.
    let first = Command::new(BIN)
        .args(["kernel", "status", "--json"])
        .output()
        .unwrap();
    let _ = first;
    let root = match cgroup2_root() {
        Some(r) => r,
        None => {
            let out = Command::new(BIN)
                .args(["kernel", "enable"])
                .output()
                .unwrap();
            let _ = Command::new(BIN).args(["kernel", "disable"]).output();
            cgroup2_root().ok_or(format!(
                "no cgroup v2 hierarchy: {}",
                String::from_utf8_lossy(&out.stderr)
            ))?
        }
    };
    let cgroup = root.join(format!("tcpcrypt-test-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let setup = Setup { cgroup, netns };
    let out = Command::new(BIN)
        .args(["kernel", "enable", "--cgroup"])
        .arg(&setup.cgroup)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "tcpcrypt kernel enable failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(setup)
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// This test process in the test's cgroup, until dropped: sockets it
/// makes then belong to the cgroup.
struct InCgroup(PathBuf);

impl Drop for InCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.procs"), std::process::id().to_string());
    }
}

impl Setup {
    /// Moves this process into the cgroup; back where it was on drop.
    fn enter_cgroup(&self) -> InCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 membership");
        let root = self.cgroup.parent().unwrap();
        let back = InCgroup(root.join(path.trim_start_matches('/')));
        std::fs::write(
            self.cgroup.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap();
        back
    }

    /// `program args` in the namespace, and in the cgroup when `inside`.
    fn command(&self, inside: bool, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["sh", "-c"]);
        if inside {
            cmd.arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                .arg(&self.cgroup);
        } else {
            cmd.arg(r#"exec "$@""#).arg("sh");
        }
        cmd.arg(program).args(args);
        cmd
    }

    /// `tcpcrypt SUBCOMMAND --json EXTRA 127.0.0.1:PORT` with `input` on
    /// its standard input (closed after it).
    fn tcpcrypt(&self, inside: bool, sub: &str, extra: &[&str], port: u16, input: &[u8]) -> Child {
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![sub, "--json"];
        args.extend_from_slice(extra);
        args.push(&addr);
        let mut child = self
            .command(inside, BIN, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child
    }

    /// `tcpcrypt listen` on ADDR:PORT, answering with `answer`.
    fn listen_on(&self, inside: bool, addr: &str, answer: &[u8]) -> Server {
        let mut child = self
            .command(inside, BIN, &["listen", "--json", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(answer).unwrap();
        Self::listening(child)
    }

    /// `tcpcrypt listen` answering with `answer`.
    fn listen(&self, inside: bool, port: u16, extra: &[&str], answer: &[u8]) -> Server {
        let child = self.tcpcrypt(inside, "listen", extra, port, answer);
        Self::listening(child)
    }

    fn listening(mut child: Child) -> Server {
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let listening = next_json(&mut err);
        assert!(listening["listening"].is_string(), "{listening}");
        Server { child, err }
    }

    /// `tcpcrypt connect` sending `data`: its report and what it received.
    fn connect(&self, inside: bool, port: u16, extra: &[&str], data: &[u8]) -> (Value, Vec<u8>) {
        let out = self
            .tcpcrypt(inside, "connect", extra, port, data)
            .wait_with_output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(Value::is_object)
            })
            .unwrap_or_else(|| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
        (report, out.stdout)
    }

    /// A plain server that accepts one connection and reads it to its
    /// end; listening when this returns.
    fn one_shot_plain_server(&self, inside: bool, port: u16) -> OneShot {
        let program = format!(
            "import socket,sys\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('127.0.0.1',{port})); l.listen(1)\nprint('ready',flush=True)\nc,_=l.accept(); d=b''\nwhile True:\n    b=c.recv(65536)\n    if not b: break\n    d+=b\nsys.stdout.buffer.write(d)"
        );
        let mut child = self
            .command(inside, "python3", &["-c", &program])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .unwrap();
        OneShot(child)
    }

    /// Adds (`-A`) or deletes (`-D`) a rule of the namespace's OUTPUT
    /// chain dropping TCP segments from `port` that match `matches`.
    fn iptables_output(&self, op: &str, port: u16, matches: &[&str]) -> bool {
        let port = port.to_string();
        let mut args = vec![op, "OUTPUT", "-p", "tcp", "--sport", &port];
        args.extend_from_slice(matches);
        args.extend(["-j", "DROP"]);
        self.command(false, "iptables", &args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A packet capture on the namespace's loopback.
    fn capture(&self, port: u16) -> Capture {
        let file = std::env::temp_dir().join(format!("tck-{}-{port}.pcap", std::process::id()));
        let mut child = self
            .command(
                false,
                "tcpdump",
                &[
                    "-i",
                    "lo",
                    "-U",
                    "--immediate-mode",
                    "-n",
                    "-s",
                    "256",
                    "-w",
                ],
            )
            .arg(&file)
            .arg(format!("tcp port {port}"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let _ = err.read_line(&mut line); // "listening on lo ..."
        assert!(line.contains("listening"), "tcpdump: {line}");
        Capture { child, file }
    }
}

struct OneShot(Child);

impl OneShot {
    /// Everything the connection brought.
    fn received(mut self) -> Vec<u8> {
        let mut got = Vec::new();
        self.0.stdout.take().unwrap().read_to_end(&mut got).unwrap();
        let _ = self.0.wait();
        got
    }
}

impl Drop for OneShot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Shimmed programs (`tcpcrypt run`) in the test's cgroup and namespace,
/// with a runtime directory of their own; their relay daemon is stopped
/// on drop, so that the cgroup empties.
struct ShimDaemon<'a> {
    setup: &'a Setup,
    dir: PathBuf,
}

impl<'a> ShimDaemon<'a> {
    fn new(setup: &'a Setup) -> Self {
        let dir = std::env::temp_dir().join(format!("tck-shim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        ShimDaemon { setup, dir }
    }

    fn env(&self) -> Vec<String> {
        vec![
            format!("TCPCRYPT_RUNTIME_DIR={}", self.dir.join("run").display()),
            "TCPCRYPT_DAEMON_IDLE_EXIT=60s".into(),
        ]
    }

    /// `program` under the shim with `--carriage carriage`, in the
    /// cgroup.
    fn shimmed(&self, carriage: &str, program: &[&str]) -> Command {
        let mut args = self.env();
        args.extend([BIN.to_string(), "run".into(), "--carriage".into()]);
        args.extend([carriage.to_string(), "--".into()]);
        args.extend(program.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.setup.command(true, "env", &args)
    }

    /// `tcpcrypt status --json`: the daemon's live connections.
    fn status(&self) -> Vec<Value> {
        let mut args = self.env();
        args.extend([BIN.to_string(), "status".into(), "--json".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.setup.command(false, "env", &args).output().unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for ShimDaemon<'_> {
    fn drop(&mut self) {
        let mut args = self.env();
        args.extend([BIN.to_string(), "daemon".into(), "--stop".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = self.setup.command(false, "env", &args).status();
        // Until the daemon has left the cgroup.
        let procs = self.setup.cgroup.join("cgroup.procs");
        for _ in 0..100 {
            if std::fs::read_to_string(&procs).is_ok_and(|p| p.trim().is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Server {
    child: Child,
    err: BufReader<std::process::ChildStderr>,
}

impl Server {
    /// Its report of the connection, and what it received.
    fn finish(mut self) -> (Value, Vec<u8>) {
        let report = next_json(&mut self.err);
        let mut got = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        let _ = self.child.wait();
        (report, got)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Capture {
    child: Child,
    file: PathBuf,
}

/// One TCP segment: its flags, its options and its payload.
#[derive(Debug)]
struct Segment {
    flags: u8,
    options: Vec<(u8, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Segment {
    fn eno(&self) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(k, _)| *k == 69)
            .map(|(_, v)| v.as_slice())
    }
}

impl Drop for Capture {
    /// A test that failed midway stops its capture too (the cgroup and
    /// the namespace can only go once it has).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Capture {
    /// Stops the capture and parses it (pcap, Ethernet framing on lo).
    fn segments(mut self) -> Vec<Segment> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let data = std::fs::read(&self.file).unwrap();
        let mut segments = Vec::new();
        let mut at = 24;
        while at + 16 <= data.len() {
            let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
            let frame = &data[at + 16..(at + 16 + caplen).min(data.len())];
            at += 16 + caplen;
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let tcp = &ip[ihl..];
            let doff = usize::from(tcp[12] >> 4) * 4;
            let options = tcp_options(&tcp[20..doff]);
            let payload_end = (total - ihl).min(tcp.len());
            segments.push(Segment {
                flags: tcp[13],
                options,
                payload: tcp[doff.min(payload_end)..payload_end].to_vec(),
            });
        }
        segments
    }
}

/// TCP options as (kind, the whole option).
fn tcp_options(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(bytes.get(i + 1).copied().unwrap_or(0));
                let Some(option) = bytes.get(i..i + len) else {
                    break;
                };
                options.push((kind, option.to_vec()));
                i += len.max(2);
            }
        }
    }
    options
}

/// A counter of `tcpcrypt kernel status`.
fn kernel_counter(name: &str) -> u64 {
    let out = Command::new(BIN)
        .args(["kernel", "status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {status}"))
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) {
    let ns = std::fs::File::open(path).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Two connections with TCP_FASTOPEN_CONNECT to a plain listener on port
/// 7013, each socket offering `offer` in its SYN: their outcomes.
fn fast_open(offer: &[u8]) -> Vec<Outcome> {
    use nix::sys::socket::{setsockopt, sockopt::TcpFastOpenConnect};
    let sockets = Sockets::open().unwrap();
    let mut outcomes = Vec::new();
    for data in [&b"first"[..], b"second"] {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sockets.offer(&sock, offer).unwrap();
        setsockopt(&sock, TcpFastOpenConnect, &true).unwrap();
        sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], 7013)).into())
            .unwrap();
        let mut stream = std::net::TcpStream::from(sock);
        stream.write_all(data).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        outcomes.push(sockets.outcome(&stream));
    }
    outcomes
}

/// Two sockets on ports 7101 and 7102, both offering `offer`, connecting
/// to each other at once (the caller holds their first SYNs back): their
/// outcomes once connected.
fn simultaneous_open(offer: &[u8]) -> Vec<Outcome> {
    let sockets = Sockets::open().unwrap();
    let ends: Vec<_> = [(7101u16, 7102u16), (7102, 7101)]
        .iter()
        .map(|&(from, to)| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_reuse_address(true).unwrap();
            let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p)).into();
            sock.bind(&addr(from)).unwrap();
            sockets.offer(&sock, offer).unwrap();
            sock.set_nonblocking(true).unwrap();
            match sock.connect(&addr(to)) {
                Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
                other => panic!("connect: {other:?}"),
            }
            sock
        })
        .collect();
    for sock in &ends {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if sock.peer_addr().is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no simultaneous open");
            assert_eq!(sock.take_error().unwrap().map(|e| e.to_string()), None);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    ends.iter().map(|s| sockets.outcome(s)).collect()
}

fn libc_einprogress() -> i32 {
    nix::errno::Errno::EINPROGRESS as i32
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[test]
fn the_kernel_carriage_negotiates_eno_in_the_syn() {
    let setup = match setup() {
        Ok(s) => s,
        // scripts/test requires it where it runs as root: our machines
        // have BPF, and a skip there would hide a failure.
        Err(why) if std::env::var_os("TCPCRYPT_REQUIRE_KERNEL_TESTS").is_some() => {
            panic!("the kernel carriage cannot be tried: {why}")
        }
        Err(why) => {
            println!("SKIPPED: the kernel carriage cannot be tried here: {why}");
            return;
        }
    };
    let started = Instant::now();

    // 1. Both ends in the cgroup: ENO in the SYNs, Init1 first.
    let capture = setup.capture(7001);
    let server = setup.listen(true, 7001, &[], b"from the server\n");
    let (client, got) = setup.connect(true, 7001, &[], b"from the client\n");
    let (server, server_got) = server.finish();
    let segments = capture.segments();
    assert_eq!(client["carriage"], "kernel", "{client}");
    assert_eq!(server["carriage"], "kernel", "{server}");
    assert_eq!(client["session_id"], server["session_id"]);
    assert!(client["session_id"].is_string());
    assert_eq!(got, b"from the server\n");
    assert_eq!(server_got, b"from the client\n");
    let syn = segments
        .iter()
        .find(|s| s.flags & (SYN | ACK) == SYN)
        .unwrap();
    let synack = segments
        .iter()
        .find(|s| s.flags & (SYN | ACK) == SYN | ACK)
        .unwrap();
    let third = segments.iter().find(|s| s.flags & SYN == 0).unwrap();
    let syn_eno = syn.eno().expect("ENO in the SYN").to_vec();
    assert!(
        syn_eno[1] as usize == syn_eno.len() && syn_eno.len() <= 20,
        "{syn_eno:02x?}"
    );
    let synack_eno = synack.eno().expect("ENO in the SYN-ACK").to_vec();
    // B's global suboption (b = 1) and one TEP that A offered.
    assert_eq!(synack_eno.len(), 4, "{synack_eno:02x?}");
    assert_eq!(synack_eno[2] & 0x01, 0x01);
    assert!(syn_eno[2..].contains(&synack_eno[3]));
    // A's third segment: the non-SYN form (RFC 8547 4.3).
    assert_eq!(third.eno(), Some(&[69u8, 2][..]), "{third:?}");
    let first_data = segments.iter().find(|s| !s.payload.is_empty()).unwrap();
    assert_eq!(
        first_data.payload[..4],
        [0x15, 0x10, 0x1a, 0x0e],
        "Init1 first, no hello"
    );
    assert!(
        segments
            .iter()
            .all(|s| !s.payload.starts_with(&[0xe5, b'E', b'N', b'O']))
    );

    // 2. A client outside the cgroup: a legacy SYN gets a legacy SYN-ACK,
    // and the in-band hello works as ever.
    let capture = setup.capture(7002);
    let server = setup.listen(true, 7002, &[], b"s");
    let (client, _) = setup.connect(false, 7002, &[], b"c");
    let (server, _) = server.finish();
    let segments = capture.segments();
    assert_eq!(client["carriage"], "in-band", "{client}");
    assert_eq!(server["carriage"], "in-band", "{server}");
    assert!(
        segments.iter().all(|s| s.eno().is_none()),
        "no ENO option anywhere"
    );

    // 3. A client in the cgroup, a server outside: the SYN-ACK carries no
    // ENO, and Auto tries the in-band hello on the same connection.
    let capture = setup.capture(7003);
    let server = setup.listen(false, 7003, &[], b"s");
    let (client, _) = setup.connect(true, 7003, &[], b"c");
    let (server, _) = server.finish();
    let segments = capture.segments();
    assert_eq!(client["carriage"], "in-band", "{client}");
    assert_eq!(server["encrypted"], true, "{server}");
    let syns = segments
        .iter()
        .filter(|s| s.flags & (SYN | ACK) == SYN)
        .count();
    assert_eq!(syns, 1, "one connection, no reconnect");

    // 4. --carriage kernel against a plain one-shot server: not one byte
    // of ours, only the application's, and no second connection.
    let plain = setup.one_shot_plain_server(true, 7004);
    let (client, _) = setup.connect(
        true,
        7004,
        &["--carriage", "kernel"],
        b"exactly these bytes",
    );
    let received = plain.received();
    assert_eq!(client["encrypted"], false, "{client}");
    assert!(
        client["reason"].as_str().unwrap().contains("SYN-ACK"),
        "{client}"
    );
    assert_eq!(received, b"exactly these bytes");

    // 5. SYN cookies forced: the cookie SYN-ACK carries no ENO and both
    // ends fall back cleanly to the in-band hello.
    let sysctl = |v: &str| {
        setup
            .command(
                false,
                "sysctl",
                &["-qw", &format!("net.ipv4.tcp_syncookies={v}")],
            )
            .status()
            .unwrap()
    };
    assert!(sysctl("2").success());
    let server = setup.listen(true, 7005, &[], b"s");
    let (client, got) = setup.connect(true, 7005, &[], b"c");
    let (server, _) = server.finish();
    assert!(sysctl("1").success());
    assert_eq!(client["encrypted"], true, "{client}");
    assert_eq!(client["carriage"], "in-band", "{client}");
    assert_eq!(server["session_id"], client["session_id"]);
    assert_eq!(got, b"s");

    // 6. A dual-stack listener ([::]) and an IPv4 client: the answer is
    // found for the accepted socket, whose addresses are IPv4-mapped.
    let server = setup.listen_on(true, "[::]:7006", b"s");
    let (client, _) = setup.connect(true, 7006, &[], b"c");
    let (server, _) = server.finish();
    assert_eq!(client["carriage"], "kernel", "{client}");
    assert_eq!(server["carriage"], "kernel", "{server}");
    assert_eq!(server["session_id"], client["session_id"]);

    // 7. The first SYN-ACK lost: the retransmitted one carries the same
    // answer (RFC 8547 4.6), though the SYN is no longer at hand.
    let drop_first_synack = |op: &str| {
        setup.iptables_output(
            op,
            7007,
            &[
                "--tcp-flags",
                "SYN,ACK",
                "SYN,ACK",
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                "1000",
                "--packet",
                "0",
            ],
        )
    };
    assert!(drop_first_synack("-A"));
    let capture = setup.capture(7007);
    let server = setup.listen(true, 7007, &[], b"s");
    let (client, _) = setup.connect(true, 7007, &[], b"c");
    let (server, _) = server.finish();
    let segments = capture.segments();
    assert!(drop_first_synack("-D"));
    assert_eq!(client["carriage"], "kernel", "{client}");
    assert_eq!(server["session_id"], client["session_id"]);
    let synacks: Vec<_> = segments
        .iter()
        .filter(|s| s.flags & (SYN | ACK) == SYN | ACK)
        .collect();
    assert!(
        synacks.len() >= 2,
        "the first SYN-ACK was retransmitted: {synacks:?}"
    );
    let answers: Vec<_> = synacks.iter().map(|s| s.eno()).collect();
    assert!(
        answers.iter().all(|a| *a == answers[0] && a.is_some()),
        "{answers:?}"
    );

    // 8. Ordinary users: the per-socket records are theirs to use.
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", BIN];
    let mut listen_args = nobody.to_vec();
    listen_args.extend(["listen", "--json", "127.0.0.1:7008"]);
    let mut child = setup
        .command(true, "setpriv", &listen_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s").unwrap();
    let server = Setup::listening(child);
    let mut connect_args = nobody.to_vec();
    connect_args.extend([
        "connect",
        "--json",
        "--carriage",
        "kernel",
        "127.0.0.1:7008",
    ]);
    let mut child = setup
        .command(true, "setpriv", &connect_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"c").unwrap();
    let out = child.wait_with_output().unwrap();
    let (server, _) = server.finish();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#""carriage":"kernel""#), "{err}");
    assert_eq!(server["carriage"], "kernel", "{server}");

    // 8b. `tcpcrypt check` probes through the kernel carriage where it
    // can, and says so.
    let server = setup.listen(true, 7014, &[], b"");
    let out = setup
        .command(true, BIN, &["check", "--json", "127.0.0.1:7014"])
        .output()
        .unwrap();
    drop(server);
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["encrypted"], true, "{probe}");
    assert_eq!(probe["carriage"], "kernel", "{probe}");

    // 9. Unmodified programs under the shim, through the relay daemon: a
    // shimmed HTTP server and shimmed curl negotiate in the SYNs.
    common::build_shim();
    let daemon = ShimDaemon::new(&setup);
    let site = daemon.dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let page: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(site.join("page"), &page).unwrap();
    let capture = setup.capture(7009);
    let mut http = daemon
        .shimmed(
            "auto",
            &[
                "python3",
                "-u",
                "-m",
                "http.server",
                "7009",
                "--bind",
                "127.0.0.1",
            ],
        )
        .current_dir(&site)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(http.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("Serving HTTP"), "{line}");
    // A connection held open while `tcpcrypt status` asks the daemon.
    let mut held = daemon
        .shimmed(
            "auto",
            &[
                "python3",
                "-c",
                "import socket,sys\ns=socket.create_connection(('127.0.0.1',7009))\nprint('up',flush=True)\nsys.stdin.read()",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    held.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
    let status = daemon.status();
    drop(held.stdin.take());
    let _ = held.wait();
    let curl = daemon
        .shimmed("auto", &["curl", "-sS", "http://127.0.0.1:7009/page"])
        .output()
        .unwrap();
    // `tcpcrypt run` passes SIGTERM on to the server.
    let _ = Command::new("kill")
        .args(["-TERM", &http.id().to_string()])
        .status();
    let http_out = http.wait_with_output().unwrap();
    let segments = capture.segments();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(curl.stdout == page, "curl received the page, every byte");
    let log = String::from_utf8_lossy(&http_out.stderr);
    assert!(log.contains("\"GET /page HTTP/1.1\" 200"), "{log}");
    assert!(!log.contains(" 400 "), "no hello reached the server: {log}");
    for role in ["A", "B"] {
        assert!(
            status
                .iter()
                .any(|c| c["role"] == role && c["carriage"] == "kernel" && c["encrypted"] == true),
            "{role}: {status:?}"
        );
    }
    let syns: Vec<_> = segments.iter().filter(|s| s.flags & SYN != 0).collect();
    assert!(syns.len() >= 4, "{syns:?}");
    assert!(
        syns.iter().all(|s| s.eno().is_some()),
        "ENO in every SYN and SYN-ACK"
    );
    assert!(
        segments
            .iter()
            .all(|s| !s.payload.starts_with(&[0xe5, b'E', b'N', b'O'])
                && !s.payload.windows(9).any(|w| w == b"GET /page")),
        "no hello, no plaintext request"
    );
    // curl, a new process, resumed the held connection's session in its
    // SYN (the daemon keeps the ticket and the offer): the SYN and SYN-ACK
    // name it (v = 1), and only the first connection carried an Init1.
    let opening: Vec<_> = syns.iter().filter(|s| s.flags & ACK == 0).collect();
    let answers: Vec<_> = syns.iter().filter(|s| s.flags & ACK != 0).collect();
    assert_eq!((opening.len(), answers.len()), (2, 2), "{syns:?}");
    let (syn, synack) = (opening[1].eno().unwrap(), answers[1].eno().unwrap());
    assert!(syn[2..].iter().any(|b| *b >= 0xa0), "{syn:02x?}");
    assert!(synack.len() == 20 && synack[3] >= 0xa0, "{synack:02x?}");
    let init1s = segments
        .iter()
        .filter(|s| s.payload.starts_with(&[0x15, 0x10, 0x1a, 0x0e]))
        .count();
    assert_eq!(init1s, 1, "curl's connection resumed without Init messages");

    // 10. --carriage kernel: a shimmed client against a plain
    // one-shot server sends it exactly the program's bytes, and ends as
    // it would without the shim.
    let plain = setup.one_shot_plain_server(false, 7010);
    let sent = daemon
        .shimmed(
            "kernel",
            &[
                "python3",
                "-c",
                "import socket,os\ns=socket.create_connection(('127.0.0.1',7010))\ns.sendall(bytes(range(256))*4096)\ns.close()\nos._exit(0)",
            ],
        )
        .status()
        .unwrap();
    let received = plain.received();
    assert!(sent.success());
    assert!(
        received == (0..=255u8).collect::<Vec<_>>().repeat(4096),
        "the plain server received {} bytes, not the program's 1 MiB",
        received.len()
    );
    // 10b. An IPv6-only listener answering in its SYN-ACKs does not
    // answer for an IPv4 listener of the same port, a plain one.
    let mut v6 = daemon
        .shimmed(
            "auto",
            &[
                "python3",
                "-c",
                "import socket,sys\nl=socket.socket(socket.AF_INET6)\nl.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\nl.bind(('::',7015)); l.listen(1)\nprint('ready',flush=True)\nsys.stdin.read()",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    v6.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    let plain = setup.one_shot_plain_server(false, 7015);
    let (client, _) = setup.connect(true, 7015, &["--carriage", "kernel"], b"to the IPv4 one");
    let received = plain.received();
    drop(v6.stdin.take());
    let _ = v6.wait();
    assert_eq!(client["encrypted"], false, "{client}");
    assert_eq!(received, b"to the IPv4 one");
    drop(daemon);

    // 11. A SYN, or a SYN-ACK, with two ENO options counts as one with
    // none (RFC 8547 4.1): hand-made segments.
    let raw_tcp = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/raw_tcp.py");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let duplicates = kernel_counter("duplicate_eno_left_plain");
    let server = setup.listen(true, 7011, &[], b"");
    let synack_options = |options: Vec<u8>| {
        let out = setup
            .command(false, "python3", &[raw_tcp, "syn", "7011", &hex(&options)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let bytes: Vec<u8> = (0..text.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).unwrap())
            .collect();
        tcp_options(&bytes)
    };
    let once = synack_options(syn_eno.clone());
    assert!(once.iter().any(|(k, _)| *k == 69), "answered: {once:?}");
    let twice = synack_options([syn_eno.clone(), syn_eno.clone()].concat());
    assert!(
        twice.iter().all(|(k, _)| *k != 69),
        "not answered: {twice:?}"
    );
    drop(server);
    let drop_resets = |op: &str| setup.iptables_output(op, 7012, &["--tcp-flags", "RST", "RST"]);
    assert!(drop_resets("-A"));
    let doubled = [synack_eno.clone(), synack_eno.clone()].concat();
    let mut fake = setup
        .command(
            false,
            "python3",
            &[raw_tcp, "synack", "7012", &hex(&doubled)],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut fake_out = BufReader::new(fake.stdout.take().unwrap());
    let mut line = String::new();
    fake_out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let (client, _) = setup.connect(true, 7012, &["--carriage", "kernel"], b"plain bytes");
    line.clear();
    fake_out.read_line(&mut line).unwrap();
    let _ = fake.wait();
    assert!(drop_resets("-D"));
    assert_eq!(client["encrypted"], false, "{client}");
    assert!(
        client["reason"].as_str().unwrap().contains("SYN-ACK"),
        "{client}"
    );
    assert_eq!(
        line.trim(),
        hex(b"plain bytes"),
        "the application's bytes, in plain"
    );
    assert_eq!(kernel_counter("duplicate_eno_left_plain"), duplicates + 2);

    // 12 and 13: sockets of this test's own, offering ENO, in the cgroup
    // and the namespace.
    let simultaneous = kernel_counter("simultaneous_open_left_plain");
    let fast_open_syns = {
        let _inside = setup.enter_cgroup();
        assert!(
            setup
                .command(false, "sysctl", &["-qw", "net.ipv4.tcp_fastopen=3"])
                .status()
                .unwrap()
                .success()
        );
        let capture = setup.capture(7013);
        // A plain listener that takes data in SYNs (TCP_FASTOPEN).
        let mut server = setup
            .command(
                false,
                "python3",
                &[
                    "-c",
                    "import socket\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('127.0.0.1',7013))\nl.setsockopt(socket.IPPROTO_TCP,socket.TCP_FASTOPEN,16)\nl.listen(4)\nprint('ready',flush=True)\nfor _ in range(2):\n    c,_=l.accept(); d=b''\n    while True:\n        b=c.recv(65536)\n        if not b: break\n        d+=b\n    print(d.decode(),flush=True); c.close()",
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let netns = format!("/run/netns/{}", setup.netns);
        let offer = syn_eno.clone();
        let outcomes = std::thread::spawn(move || {
            enter_netns(&netns);
            fast_open(&offer)
        })
        .join()
        .unwrap();
        let received: Vec<String> = lines.map(|l| l.unwrap()).collect();
        let _ = server.wait();
        // 12. TCP Fast Open: the first connection asks for a cookie (no
        // data in its SYN: ENO goes, and a plain listener answers none);
        // the second sends data in its SYN, and ENO is left out.
        assert!(
            matches!(outcomes[..], [Outcome::PeerSentNone, Outcome::FastOpen]),
            "{outcomes:?}"
        );
        assert_eq!(received, ["first", "second"]);
        let syns: Vec<_> = capture
            .segments()
            .into_iter()
            .filter(|s| s.flags & (SYN | ACK) == SYN)
            .collect();
        assert!(syns.iter().any(|s| !s.payload.is_empty()), "{syns:?}");
        assert!(
            syns.iter()
                .all(|s| s.payload.is_empty() || s.eno().is_none()),
            "ENO and SYN data never meet: {syns:?}"
        );

        // 13. A simultaneous open of two sockets that both offer ENO (b =
        // 0 at both ends): plain TCP at both ends (RFC 8547 3.1).
        let drop_syns = |op: &str| {
            [7101, 7102]
                .iter()
                .all(|&p| setup.iptables_output(op, p, &["--tcp-flags", "SYN,ACK", "SYN"]))
        };
        assert!(drop_syns("-A"));
        let netns = format!("/run/netns/{}", setup.netns);
        let offer = syn_eno.clone();
        let opening = std::thread::spawn(move || {
            enter_netns(&netns);
            simultaneous_open(&offer)
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(drop_syns("-D"));
        let outcomes = opening.join().unwrap();
        assert!(
            matches!(outcomes[..], [Outcome::PeerSentNone, Outcome::PeerSentNone]),
            "{outcomes:?}"
        );
        syns.len()
    };
    assert!(fast_open_syns >= 2);
    assert_eq!(
        kernel_counter("simultaneous_open_left_plain"),
        simultaneous + 2
    );

    // 13b. A listener that ignores resumption requests (RFC 8548's
    // "resumption requests will be ignored") gives the kernel no
    // identifier to answer: a client that offers its ticket in the SYN
    // gets a fresh exchange, on the same connection.
    {
        let _inside = setup.enter_cgroup();
        let netns = format!("/run/netns/{}", setup.netns);
        let seen = std::thread::spawn(move || {
            enter_netns(&netns);
            resumption_ignored(7013)
        })
        .join()
        .unwrap();
        assert_eq!(
            seen,
            [(true, false, 1), (true, false, 1)],
            "(kernel carriage, resumed, connections accepted) of each"
        );
    }

    // 13c. A process outside the cgroup while the carriage is enabled
    // (its map pinned, the program attached elsewhere): its SYNs carry no
    // ENO, and a resumed connection still sends its first bytes as 0-RTT
    // data with the in-band hello.
    {
        let netns = format!("/run/netns/{}", setup.netns);
        let seen = std::thread::spawn(move || {
            enter_netns(&netns);
            zero_rtt_outside(7016)
        })
        .join()
        .unwrap();
        assert_eq!(
            seen,
            [(false, false), (false, true), (false, true)],
            "(kernel carriage, 0-RTT) of each connection"
        );
    }

    // 13d. The program's table of listeners is shared by the machine:
    // once full (here, of listeners in the cgroup), a new listener
    // learns it. Under --carriage kernel binding it is an error, under
    // Auto it negotiates in band; once the others close, it answers ENO
    // again.
    {
        let _inside = setup.enter_cgroup();
        let netns = format!("/run/netns/{}", setup.netns);
        let (filled, kernel_full, auto_full, kernel_after) = std::thread::spawn(move || {
            enter_netns(&netns);
            full_listener_table()
        })
        .join()
        .unwrap();
        assert!(
            filled > 1000,
            "{filled} listeners before the table was full"
        );
        assert!(
            kernel_full.contains("table of listeners is full"),
            "{kernel_full}"
        );
        assert!(auto_full, "an Auto listener binds all the same");
        assert!(kernel_after, "a kernel listener binds once there is room");
    }

    // 13e. A path that strips ENO from the client's segments after its
    // SYN: the server, its acknowledgement without ENO, disables ENO (RFC
    // 8547 4.6) while the client believes it on and sends Init1. The
    // server never hands Init1 over as data: it resets, and the client
    // connects again in band, encrypted.
    {
        let iptables = |op: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &setup.netns,
                    "iptables",
                    "-t",
                    "mangle",
                    op,
                ])
                .args([
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    "7017",
                    "--tcp-flags",
                    "SYN",
                    "NONE",
                ])
                .args(["-j", "TCPOPTSTRIP", "--strip-options", "69"])
                .status()
                .unwrap()
        };
        assert!(iptables("-A").success(), "TCPOPTSTRIP");
        let _inside = setup.enter_cgroup();
        let netns = format!("/run/netns/{}", setup.netns);
        let seen = std::thread::spawn(move || {
            enter_netns(&netns);
            stripped_ack(7017)
        })
        .join()
        .unwrap();
        iptables("-D");
        assert_eq!(
            seen,
            (
                Some("in-band".to_string()),
                vec!["refused".to_string(), "encrypted ping".to_string()]
            ),
            "(the client's carriage, what the server's application saw)"
        );
    }

    // 13f. The in-band carriage (outside the cgroup) over a path that
    // comes to drop every segment carrying a hello: to a destination that
    // negotiated before, the first connection waits the handshake's
    // deadline once (the hello never acknowledged: no second try on the
    // same path) and goes plain; the next ones go plain at once.
    {
        let netns = format!("/run/netns/{}", setup.netns);
        let setup_netns = setup.netns.clone();
        let seen = std::thread::spawn(move || {
            enter_netns(&netns);
            hello_dropped(7018, &setup_netns)
        })
        .join()
        .unwrap();
        let [first, second, third] = &seen[..] else {
            panic!("{seen:?}")
        };
        assert_eq!(first.0, "encrypted", "{seen:?}");
        assert_eq!(
            second.0, "the path dropped the tcpcrypt hello (never acknowledged)",
            "{seen:?}"
        );
        assert!(
            second.1 < Duration::from_millis(4500),
            "one deadline: {seen:?}"
        );
        assert_eq!(
            third.0, "the server is known not to speak tcpcrypt",
            "{seen:?}"
        );
        assert!(third.1 < Duration::from_millis(500), "at once: {seen:?}");
    }

    // 13g. `ip netns exec` mounts a /sys of its own, without the BPF file
    // system: the pins cannot be seen from there, and status says so
    // instead of "not enabled".
    let status = Command::new("ip")
        .args(["netns", "exec", &setup.netns, BIN, "kernel", "status"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("no BPF file system") && said.contains("nsenter"),
        "{said}"
    );

    // 14. Resumption in the SYN (RFC 8548 3.5): a library client and
    // listener in the cgroup, one process. The second and third
    // connections name the previous session's identifier in their SYN,
    // the SYN-ACK answers with B's half, and no Init message crosses; a
    // forged entry in the kernel's map (B's half altered) never makes a
    // connection plain: A connects again with a fresh exchange.
    let resumed_before = kernel_counter("passive_resumed");
    let (clients, servers, segments) = {
        let _inside = setup.enter_cgroup();
        let capture = setup.capture(7014);
        let netns = format!("/run/netns/{}", setup.netns);
        let (clients, servers) = std::thread::spawn(move || {
            enter_netns(&netns);
            resumption_in_the_syn(7014)
        })
        .join()
        .unwrap();
        (clients, servers, capture.segments())
    };
    assert_eq!(clients, servers, "each end saw the same sessions");
    let kinds: Vec<(&str, bool)> = clients
        .iter()
        .map(|(_, carriage, resumed)| (carriage.as_str(), *resumed))
        .collect();
    assert_eq!(
        kinds,
        [
            ("kernel", false),
            ("kernel", true),
            ("kernel", true),
            ("in-band", false)
        ],
        "{clients:?}"
    );
    assert_eq!(kernel_counter("passive_resumed"), resumed_before + 3);
    let syns: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.flags & (SYN | ACK) == SYN)
        .collect();
    let synacks: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.flags & (SYN | ACK) == SYN | ACK)
        .collect();
    // Five SYNs: three connections, the forged one, and its fresh retry.
    assert_eq!((syns.len(), synacks.len()), (5, 5), "{segments:?}");
    for i in 1..4 {
        let (syn, synack) = (syns[i].eno().unwrap(), synacks[i].eno().unwrap());
        // A: the TEP with v = 1, its half and an 8-byte nonce (20 bytes);
        // B: b = 1, the TEP with v = 1, its half and a 7-byte nonce.
        assert_eq!(syn.len(), 20, "{syn:02x?}");
        assert!(syn[2] >= 0xa0, "{syn:02x?}");
        assert_eq!(synack.len(), 20, "{synack:02x?}");
        assert_eq!((synack[2] & 1, synack[3]), (1, syn[2]), "{synack:02x?}");
    }
    // Init1 crossed once, on the first connection; never on a resumed one.
    let init1s = segments
        .iter()
        .filter(|s| s.payload.starts_with(&[0x15, 0x10, 0x1a, 0x0e]))
        .count();
    assert_eq!(init1s, 1, "one Init1, for the first connection only");
    // The forged answer's connection carried no byte of the application.
    assert!(
        syns[4].eno().is_none(),
        "the retry offers nothing in its SYN"
    );

    // The counters saw it all.
    let status = Command::new(BIN)
        .args(["kernel", "status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let counters = &status["counters"];
    assert!(
        counters["syn_sent_with_eno"].as_u64().unwrap() >= 4,
        "{status}"
    );
    assert!(
        counters["synack_sent_with_eno"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        counters["syn_cookie_left_plain"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["attached"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| Path::new(a.as_str().unwrap()) == setup.cgroup),
        "{status}"
    );

    // `check --carriage kernel` from a cgroup the program is not attached
    // to (this process's): a fault of this host, said as one (exit 2),
    // not a finding about the destination.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--carriage", "kernel"])
        .arg(listener.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not attached"),
        "{out:?}"
    );
    drop(listener);

    // A cgroup removed while enabled: the kernel detached the program
    // with it and only the pin is left; `status` says so and `disable`
    // clears it, by the removed directory's name too. The test's own
    // cgroup keeps its attachment throughout.
    let gone = setup.cgroup.with_extension("removed");
    std::fs::create_dir(&gone).unwrap();
    let kernel = |args: &[&str]| Command::new(BIN).arg("kernel").args(args).output().unwrap();
    let enabled = kernel(&["enable", "--cgroup", gone.to_str().unwrap()]);
    assert!(enabled.status.success(), "{enabled:?}");
    std::fs::remove_dir(&gone).unwrap();
    let attached = || -> Vec<String> {
        let status: Value = serde_json::from_slice(&kernel(&["status", "--json"]).stdout).unwrap();
        status["attached"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let listed = attached();
    assert!(listed.iter().any(|a| a.contains("removed")), "{listed:?}");
    let disabled = kernel(&["disable", "--cgroup", gone.to_str().unwrap()]);
    assert!(disabled.status.success(), "{disabled:?}");
    let listed = attached();
    assert!(!listed.iter().any(|a| a.contains("removed")), "{listed:?}");
    assert!(
        listed.iter().any(|a| Path::new(a) == setup.cgroup),
        "{listed:?}"
    );
    println!("kernel carriage scenarios took {:?}", started.elapsed());
}

/// A session as one end saw it: its ID, its carriage, whether resumed.
type Seen = (String, String, bool);

/// Four connections from one library client to one library listener on
/// `port` (this thread in the test's namespace, the process in its
/// cgroup), the server greeting first, then echoing five bytes: the first fresh, the next two
/// resuming in the SYN, and the fourth after the kernel's entry for it was
/// forged (B's half altered), which A must not take for plain. Returns
/// (session ID, carriage, resumed) as the clients saw them and as the
/// server did.
fn resumption_in_the_syn(port: u16) -> (Vec<Seen>, Vec<Seen>) {
    use tcpcrypt_tokio::{Carriage, TcpcryptStream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn seen(stream: &TcpcryptStream<tokio::net::TcpStream>) -> Seen {
        let info = stream.session().expect("encrypted");
        let carriage = match stream.carriage() {
            Some(Carriage::Kernel) => "kernel",
            _ => "in-band",
        };
        (info.session_id.to_string(), carriage.into(), info.resumed)
    }
    block_on(async move {
        let (config, addr, mut listener) = default_listener(port).await;
        let server = tokio::spawn(async move {
            let mut seen_here = Vec::new();
            while seen_here.len() < 4 {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue; // the forged answer's connection, refused
                };
                // The server speaks first: a resumed connection is ready
                // at both ends without a byte from A.
                s.write_all(b"hi").await.unwrap();
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_err() {
                    continue;
                }
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
                seen_here.push(seen(&s));
            }
            seen_here
        });
        let mut clients = Vec::new();
        for i in 0..4 {
            if i == 3 {
                forge_resumption_entries();
            }
            let mut c = TcpcryptStream::connect(addr.as_str(), &config)
                .await
                .unwrap();
            let mut hi = [0u8; 2];
            c.read_exact(&mut hi).await.unwrap();
            assert_eq!(&hi, b"hi");
            c.write_all(b"hello").await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"hello");
            clients.push(seen(&c));
        }
        (clients, server.await.unwrap())
    })
}

/// A library listener with the default configuration on 127.0.0.1:`port`,
/// the configuration and the address.
async fn default_listener(
    port: u16,
) -> (
    std::sync::Arc<tcpcrypt_tokio::Config>,
    String,
    tcpcrypt_tokio::TcpcryptListener,
) {
    let config = std::sync::Arc::new(tcpcrypt_tokio::Config::default());
    let addr = format!("127.0.0.1:{port}");
    let listener = tcpcrypt_tokio::TcpcryptListener::bind(addr.as_str(), &config)
        .await
        .unwrap();
    (config, addr, listener)
}

/// Runs `f` on a runtime of this thread (in the namespace it entered).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Three connections from an in-band library client (3 s handshake
/// deadline) to an in-band library listener on `port` that waits for its
/// clients to speak, the second and
/// third while `iptables` in namespace `netns` drops every segment to the
/// port that carries a hello: how each ended ("encrypted" or why it is
/// plain) and how long it took to connect.
fn hello_dropped(port: u16, netns: &str) -> Vec<(String, Duration)> {
    use std::sync::Arc;
    use tcpcrypt_tokio::{Carriage, Config, TcpcryptListener, TcpcryptStream};
    use tokio::io::AsyncReadExt;
    let rule = |op: &str| {
        let port = port.to_string();
        Command::new("ip")
            .args([
                "netns", "exec", netns, "iptables", op, "OUTPUT", "-p", "tcp",
            ])
            .args(["--dport", &port, "-m", "string", "--algo", "bm"])
            .args(["--hex-string", "|e5454e4f01|", "-j", "DROP"])
            .status()
            .unwrap()
    };
    let seen = block_on(async move {
        let in_band = |b: tcpcrypt_tokio::ConfigBuilder| {
            Arc::new(b.carriage(Carriage::InBand).build().unwrap())
        };
        let server = in_band(Config::builder());
        let client = in_band(Config::builder().handshake_timeout(Duration::from_secs(3)));
        let addr = format!("127.0.0.1:{port}");
        let mut listener = TcpcryptListener::bind(addr.as_str(), &server)
            .await
            .unwrap();
        tokio::spawn(async move {
            // A server that waits for its client's request, as most do.
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move { s.read_to_end(&mut Vec::new()).await });
            }
        });
        let mut seen = Vec::new();
        for i in 0..3 {
            if i == 1 {
                assert!(rule("-A").success(), "iptables string match");
            }
            let t = Instant::now();
            let s = TcpcryptStream::connect(addr.as_str(), &client)
                .await
                .unwrap();
            let how = match s.fallback_reason() {
                None => "encrypted".to_string(),
                Some(r) => r.to_string(),
            };
            seen.push((how, t.elapsed()));
        }
        seen
    });
    rule("-D");
    seen
}

/// A library client and listener (default configuration) on `port`: the
/// client's carriage, and for each connection the listener saw, "refused"
/// or whether it was encrypted and what it read.
fn stripped_ack(port: u16) -> (Option<String>, Vec<String>) {
    use tcpcrypt_tokio::{Carriage, TcpcryptStream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    block_on(async move {
        let (config, addr, mut listener) = default_listener(port).await;
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 2 {
                match listener.accept_attempt().await.unwrap() {
                    (_, Err(_)) => seen.push("refused".to_string()),
                    (_, Ok(mut s)) => {
                        let mut req = [0u8; 5];
                        s.read_exact(&mut req).await.unwrap();
                        s.write_all(&req).await.unwrap();
                        s.shutdown().await.unwrap();
                        let how = if s.is_encrypted() {
                            "encrypted"
                        } else {
                            "plain"
                        };
                        seen.push(format!("{how} {}", String::from_utf8_lossy(&req).trim()));
                    }
                }
            }
            seen
        });
        let mut c = TcpcryptStream::connect_with_data(addr.as_str(), &config, b"ping\n")
            .await
            .unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping\n");
        let carriage = c.carriage().map(|k| match k {
            Carriage::Kernel => "kernel".to_string(),
            _ => "in-band".to_string(),
        });
        (carriage, server.await.unwrap())
    })
}

/// Fills the program's table of listeners with listeners on 127.0.0.1
/// that give it a template, until one finds it full (`Sockets::listening`);
/// then binds library listeners while it is full and after the others
/// closed. Returns how many were listening, the error of a
/// `Carriage::Kernel` listener while full, whether an `Auto` one bound,
/// and whether a `Carriage::Kernel` one bound afterwards.
fn full_listener_table() -> (usize, String, bool, bool) {
    use std::sync::Arc;
    use tcpcrypt_kernel::Listening;
    use tcpcrypt_tokio::{Carriage, Config, TcpcryptListener};
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        limit.1.max(16384),
        limit.1.max(16384),
    )
    .unwrap();
    let sockets = Sockets::open().unwrap();
    let mut held = Vec::new();
    // Bounded: the table holds 4096.
    for _ in 0..6000 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sockets.listen(&s, 0x01, &[0x23]).unwrap();
        s.listen(1).unwrap();
        let full = sockets.listening(&s) == Listening::TableFull;
        held.push(s);
        if full {
            break;
        }
    }
    let filled = held.len() - 1;
    let result = block_on(async {
        let kernel = Arc::new(
            Config::builder()
                .carriage(Carriage::Kernel)
                .build()
                .unwrap(),
        );
        let auto = Arc::new(Config::default());
        let kernel_full = TcpcryptListener::bind("127.0.0.1:0", &kernel)
            .await
            .map(|_| "bound".to_string())
            .unwrap_or_else(|e| e.to_string());
        let auto_full = TcpcryptListener::bind("127.0.0.1:0", &auto).await.is_ok();
        drop(held);
        let kernel_after = TcpcryptListener::bind("127.0.0.1:0", &kernel).await.is_ok();
        (kernel_full, auto_full, kernel_after)
    });
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        limit.0,
        limit.1,
    )
    .unwrap();
    (filled, result.0, result.1, result.2)
}

/// Three connections with `connect_with_data` from a library client to a
/// library listener on `port`, both with the default configuration: for
/// each, whether the kernel carried it and whether the request went as
/// 0-RTT data (the listener checks that each request arrived whole).
fn zero_rtt_outside(port: u16) -> Vec<(bool, bool)> {
    use tcpcrypt_tokio::{Carriage, TcpcryptStream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    block_on(async move {
        let (config, addr, mut listener) = default_listener(port).await;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 5];
                s.read_exact(&mut req).await.unwrap();
                s.write_all(&req).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        let mut seen = Vec::new();
        for req in [b"one\n\n", b"two\n\n", b"six\n\n"] {
            let mut c = TcpcryptStream::connect_with_data(addr.as_str(), &config, req)
                .await
                .unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(&back, req);
            let info = c.session().expect("encrypted");
            seen.push((c.carriage() == Some(Carriage::Kernel), info.zero_rtt));
        }
        seen
    })
}

/// Two connections from a client that resumes to a listener on `port`
/// that does not (this thread in the test's namespace, the process in its
/// cgroup): for each, whether the kernel carried it, whether it was
/// resumed, and how many connections the listener accepted for it.
fn resumption_ignored(port: u16) -> Vec<(bool, bool, usize)> {
    use std::sync::Arc;
    use tcpcrypt_tokio::{Carriage, Config, TcpcryptListener, TcpcryptStream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    block_on(async move {
        let client = Arc::new(Config::default());
        let server = Arc::new(Config::builder().resumption(false).build().unwrap());
        let addr = format!("127.0.0.1:{port}");
        let mut listener = TcpcryptListener::bind(addr.as_str(), &server)
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let connecting = tokio::spawn({
                let (addr, client) = (addr.clone(), client.clone());
                async move {
                    let mut c = TcpcryptStream::connect(addr.as_str(), &client)
                        .await
                        .unwrap();
                    let mut b = [0u8; 2];
                    c.read_exact(&mut b).await.unwrap();
                    (
                        c.carriage() == Some(Carriage::Kernel),
                        c.session().unwrap().resumed,
                    )
                }
            });
            let mut accepted = 0;
            let (mut s, _) = listener.accept().await.unwrap();
            accepted += 1;
            s.write_all(b"hi").await.unwrap();
            let (kernel, resumed) = connecting.await.unwrap();
            assert_eq!(s.session().unwrap().resumed, resumed);
            seen.push((kernel, resumed, accepted));
        }
        seen
    })
}

/// Gives every identifier in the kernel's resumption map another B half,
/// as any local user may (the pin is world-writable).
fn forge_resumption_entries() {
    use aya::maps::{HashMap, Map, MapData};
    let data = MapData::from_pin(Path::new(tcpcrypt_kernel::PIN_DIR).join("resume")).unwrap();
    let mut map: HashMap<MapData, [u8; 16], [u8; 40]> =
        Map::from_map_data(data).unwrap().try_into().unwrap();
    let keys: Vec<[u8; 16]> = map.keys().map(Result::unwrap).collect();
    assert!(
        !keys.is_empty(),
        "the listener gave the kernel its identifier"
    );
    for k in keys {
        let mut v = map.get(&k, 0).unwrap();
        v[17] ^= 0xff; // the first byte of B's half
        map.insert(k, v, 0).unwrap();
    }
}

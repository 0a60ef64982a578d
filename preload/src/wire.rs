//! What the shim and the relay daemon say to each other, and where they
//! meet. The shim (`libtcpcrypt.so`) and the daemon (`tcpcrypt daemon`)
//! both compile this one file: the shim as its module `wire`, the daemon
//! through a `#[path]` include, so the format has a single definition and
//! neither side links the other.
//!
//! One request per Unix stream connection to the daemon's socket, one
//! reply. A request is a single `sendmsg`: a little-endian length, then the
//! body, with the descriptors it hands over (`SCM_RIGHTS`) attached. Every
//! length read is bounded by `MAX_MESSAGE`. Only std and libc are used
//! here, and `nix` for the effective user.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The kernel carriage's per-socket map, pinned by `tcpcrypt kernel
/// enable` (`tcpcrypt_kernel::PIN_DIR`): while it is absent no socket can
/// negotiate in the SYN, and the shim asks the daemon nothing about it.
pub const KERNEL_SOCKET_MAP: &str = "/sys/fs/bpf/tcpcrypt/sk";

/// The largest message either side sends or accepts, length included.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The most descriptors one request carries.
pub const MAX_FDS: usize = 3;

/// A socket option the application set, as `(level, name, value)`.
pub type Setting = (i32, i32, Vec<u8>);

/// The connection policy of the program that hands a socket over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WirePolicy {
    Opportunistic,
    Mandatory,
}

/// How a program's connections negotiate: where ENO travels
/// (`TCPCRYPT_CARRIAGE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WireCarriage {
    /// In the SYN where the kernel carriage is enabled, else in band.
    #[default]
    Auto,
    /// In the SYN only: a SYN-ACK without ENO means plain TCP at once.
    Kernel,
    /// The in-band hello only.
    InBand,
}

/// The library deadlines a program asked for (milliseconds; 0: default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Deadlines {
    pub handshake_ms: u32,
    pub server_hello_ms: u32,
    pub client_hello_wait_ms: u32,
}

/// A connect the application must not see done yet (its TCP handshake or
/// its negotiation still under way): the application's socket was filled
/// with `filler` bytes and its `TCP_NOTSENT_LOWAT` set to 1 so that it
/// polls not writable; the daemon puts `lowat` back and discards the
/// filler once the connection can carry the application's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub filler: u64,
    pub lowat: i32,
}

/// What a program asks of the daemon for its connections: one library
/// configuration per distinct profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Profile {
    pub policy: WirePolicy,
    pub deadlines: Deadlines,
    pub carriage: WireCarriage,
}

/// A connection handed to the daemon. Descriptors attached: the daemon's
/// end of the loopback connection to the application's socket, the real
/// connection, and (for a pending connect) a copy of the application's
/// socket, for restoring its `TCP_NOTSENT_LOWAT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The application's socket's identity: its inode number.
    pub id: u64,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub profile: Profile,
    pub pending: Option<Pending>,
    /// Options for the real connection (again after a fallback reconnect).
    pub settings: Vec<Setting>,
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Before the real connect to `peer` (the real socket attached): offer
    /// ENO in its SYN, through the kernel carriage, with the resumption
    /// ticket the daemon holds for `peer`.
    Offer { profile: Profile, peer: SocketAddr },
    /// Before the application's `listen` (its bound socket attached):
    /// answer ENO in its SYN-ACKs, through the kernel carriage.
    Listen(Profile),
    /// The application connected: negotiate as the client.
    Connect(Handover),
    /// The application accepted: negotiate as the server.
    Accept(Handover),
    /// What is known of the connection of application socket `id`.
    Query { id: u64 },
    /// The real errno of a failed non-blocking connect, once.
    TakeError { id: u64 },
    /// An option the application set after connecting.
    SetOption { id: u64, setting: Setting },
    /// The application closed a socket whose connect is under way.
    Abandon { id: u64 },
    /// The live connections from the `from`th on, as JSON lines
    /// (`tcpcrypt status`): as many as one message holds; the caller asks
    /// again from where the reply stopped.
    Status { from: u32 },
    /// Stop now (tests, `tcpcrypt daemon --stop`).
    Shutdown,
    /// Whether the daemon answers (`Reply::Ok`), asked before a
    /// connection is handed over: a stopped or hung one is as good as none.
    Ping,
    /// The path to `peer` breaks tcpcrypt while plain TCP gets through
    /// (`tcpcrypt check --path --remember`): connect to it without a hello
    /// for as long as a legacy verdict lasts.
    SkipHello { peer: SocketAddr },
}

/// The negotiated session, as the `tcpcrypt.h` options report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    pub session_id: Vec<u8>,
    pub tep: u8,
    pub role: u8,
    /// The AEAD algorithm's identifier (RFC 8548 section 7).
    pub aead: u16,
    pub peer_global: u8,
    pub self_name: Vec<u8>,
    pub peer_name: Vec<u8>,
    pub transcript: Vec<u8>,
}

/// The state of a relayed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// The real TCP handshake of a non-blocking connect is under way.
    Connecting,
    /// That handshake failed with this errno (reported or not).
    Failed(i32),
    /// The tcpcrypt negotiation is running.
    Negotiating,
    Encrypted(SessionFacts),
    Plain,
    /// The relay ended before the negotiation did.
    Closed,
}

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// The daemon will not carry this connection.
    Refused(String),
    /// The answer to `Query`: the real addresses and the state, or none
    /// (`Unknown`) for a socket the daemon does not relay.
    Known {
        local: SocketAddr,
        peer: SocketAddr,
        state: ConnState,
    },
    Unknown,
    /// The answer to `TakeError`.
    Error(Option<i32>),
    /// The answer to `Status`: JSON lines, cut at a line to fit a
    /// message, and how many connections there are in all.
    Status {
        text: String,
        total: u32,
    },
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("daemon message: {what}"),
    )
}

/// Appends primitive values.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn addr(&mut self, a: SocketAddr) {
        match a {
            SocketAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.ip().octets());
                self.0.extend_from_slice(&a.port().to_le_bytes());
            }
            SocketAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.ip().octets());
                self.0.extend_from_slice(&a.port().to_le_bytes());
                self.u32(a.flowinfo());
                self.u32(a.scope_id());
            }
        }
    }
}

/// Reads primitive values; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u32()? as usize;
        if n > MAX_MESSAGE {
            return Err(bad("length out of bounds"));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn addr(&mut self) -> io::Result<SocketAddr> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = u16::from_le_bytes(self.array()?);
                Ok(SocketAddr::new(IpAddr::V4(ip), port))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = u16::from_le_bytes(self.array()?);
                let (flow, scope) = (self.u32()?, self.u32()?);
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
            }
            _ => Err(bad("unknown address family")),
        }
    }
    fn end(&self) -> io::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

fn put_setting(w: &mut Writer, s: &Setting) {
    w.i32(s.0);
    w.i32(s.1);
    w.bytes(&s.2);
}

fn get_setting(r: &mut Reader) -> io::Result<Setting> {
    Ok((r.i32()?, r.i32()?, r.bytes()?))
}

/// At most this many options in one handover (the shim mirrors nine).
const MAX_SETTINGS: u32 = 32;

impl Profile {
    fn put(&self, w: &mut Writer) {
        w.u8(match self.policy {
            WirePolicy::Opportunistic => 0,
            WirePolicy::Mandatory => 1,
        });
        w.u32(self.deadlines.handshake_ms);
        w.u32(self.deadlines.server_hello_ms);
        w.u32(self.deadlines.client_hello_wait_ms);
        w.u8(match self.carriage {
            WireCarriage::Auto => 0,
            WireCarriage::Kernel => 1,
            WireCarriage::InBand => 2,
        });
    }

    fn get(r: &mut Reader) -> io::Result<Profile> {
        let policy = match r.u8()? {
            0 => WirePolicy::Opportunistic,
            1 => WirePolicy::Mandatory,
            _ => return Err(bad("unknown policy")),
        };
        let deadlines = Deadlines {
            handshake_ms: r.u32()?,
            server_hello_ms: r.u32()?,
            client_hello_wait_ms: r.u32()?,
        };
        let carriage = match r.u8()? {
            0 => WireCarriage::Auto,
            1 => WireCarriage::Kernel,
            2 => WireCarriage::InBand,
            _ => return Err(bad("unknown carriage")),
        };
        Ok(Profile {
            policy,
            deadlines,
            carriage,
        })
    }
}

impl Handover {
    fn put(&self, w: &mut Writer) {
        w.u64(self.id);
        w.addr(self.local);
        w.addr(self.peer);
        self.profile.put(w);
        match self.pending {
            None => w.u8(0),
            Some(p) => {
                w.u8(1);
                w.u64(p.filler);
                w.i32(p.lowat);
            }
        }
        w.u32(self.settings.len() as u32);
        for s in &self.settings {
            put_setting(w, s);
        }
    }

    fn get(r: &mut Reader) -> io::Result<Handover> {
        let id = r.u64()?;
        let local = r.addr()?;
        let peer = r.addr()?;
        let profile = Profile::get(r)?;
        let pending = match r.u8()? {
            0 => None,
            1 => Some(Pending {
                filler: r.u64()?,
                lowat: r.i32()?,
            }),
            _ => return Err(bad("bad pending flag")),
        };
        let n = r.u32()?;
        if n > MAX_SETTINGS {
            return Err(bad("too many options"));
        }
        let settings = (0..n).map(|_| get_setting(r)).collect::<io::Result<_>>()?;
        Ok(Handover {
            id,
            local,
            peer,
            profile,
            pending,
            settings,
        })
    }
}

/// Prefixes a body with its length.
fn framed(w: Writer) -> Vec<u8> {
    let mut out = (w.0.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&w.0);
    out
}

/// The body of a framed message: `Ok(None)` while incomplete.
pub fn unframe(buf: &[u8]) -> io::Result<Option<&[u8]>> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
    if len + 4 > MAX_MESSAGE {
        return Err(bad("message too long"));
    }
    Ok(buf.get(4..4 + len))
}

impl Request {
    /// The request as sent: length, then body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Request::Connect(h) => {
                w.u8(1);
                h.put(&mut w);
            }
            Request::Accept(h) => {
                w.u8(2);
                h.put(&mut w);
            }
            Request::Query { id } => {
                w.u8(3);
                w.u64(*id);
            }
            Request::TakeError { id } => {
                w.u8(4);
                w.u64(*id);
            }
            Request::SetOption { id, setting } => {
                w.u8(5);
                w.u64(*id);
                put_setting(&mut w, setting);
            }
            Request::Abandon { id } => {
                w.u8(6);
                w.u64(*id);
            }
            Request::Status { from } => {
                w.u8(7);
                w.u32(*from);
            }
            Request::Shutdown => w.u8(8),
            Request::SkipHello { peer } => {
                w.u8(9);
                w.addr(*peer);
            }
            Request::Offer { profile, peer } => {
                w.u8(10);
                profile.put(&mut w);
                w.addr(*peer);
            }
            Request::Listen(p) => {
                w.u8(11);
                p.put(&mut w);
            }
            Request::Ping => w.u8(12),
        }
        framed(w)
    }

    /// A request's body (without its length).
    pub fn decode(body: &[u8]) -> io::Result<Request> {
        let mut r = Reader(body);
        let req = match r.u8()? {
            1 => Request::Connect(Handover::get(&mut r)?),
            2 => Request::Accept(Handover::get(&mut r)?),
            3 => Request::Query { id: r.u64()? },
            4 => Request::TakeError { id: r.u64()? },
            5 => Request::SetOption {
                id: r.u64()?,
                setting: get_setting(&mut r)?,
            },
            6 => Request::Abandon { id: r.u64()? },
            7 => Request::Status { from: r.u32()? },
            8 => Request::Shutdown,
            9 => Request::SkipHello { peer: r.addr()? },
            10 => Request::Offer {
                profile: Profile::get(&mut r)?,
                peer: r.addr()?,
            },
            11 => Request::Listen(Profile::get(&mut r)?),
            12 => Request::Ping,
            _ => return Err(bad("unknown request")),
        };
        r.end()?;
        Ok(req)
    }

    /// How many descriptors come with this request.
    pub fn fds(&self) -> usize {
        match self {
            Request::Connect(h) | Request::Accept(h) => 2 + usize::from(h.pending.is_some()),
            Request::Offer { .. } | Request::Listen(_) => 1,
            _ => 0,
        }
    }
}

impl ConnState {
    fn put(&self, w: &mut Writer) {
        match self {
            ConnState::Connecting => w.u8(1),
            ConnState::Failed(e) => {
                w.u8(2);
                w.i32(*e);
            }
            ConnState::Negotiating => w.u8(3),
            ConnState::Encrypted(s) => {
                w.u8(4);
                w.bytes(&s.session_id);
                for b in [s.tep, s.role, s.peer_global] {
                    w.u8(b);
                }
                w.u32(u32::from(s.aead));
                w.bytes(&s.self_name);
                w.bytes(&s.peer_name);
                w.bytes(&s.transcript);
            }
            ConnState::Plain => w.u8(5),
            ConnState::Closed => w.u8(6),
        }
    }

    fn get(r: &mut Reader) -> io::Result<ConnState> {
        Ok(match r.u8()? {
            1 => ConnState::Connecting,
            2 => ConnState::Failed(r.i32()?),
            3 => ConnState::Negotiating,
            4 => ConnState::Encrypted(SessionFacts {
                session_id: r.bytes()?,
                tep: r.u8()?,
                role: r.u8()?,
                peer_global: r.u8()?,
                aead: u16::try_from(r.u32()?).map_err(|_| bad("AEAD out of range"))?,
                self_name: r.bytes()?,
                peer_name: r.bytes()?,
                transcript: r.bytes()?,
            }),
            5 => ConnState::Plain,
            6 => ConnState::Closed,
            _ => return Err(bad("unknown state")),
        })
    }
}

impl Reply {
    /// The reply as sent: length, then body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Reply::Ok => w.u8(1),
            Reply::Refused(why) => {
                w.u8(2);
                w.bytes(why.as_bytes());
            }
            Reply::Known { local, peer, state } => {
                w.u8(3);
                w.addr(*local);
                w.addr(*peer);
                state.put(&mut w);
            }
            Reply::Unknown => w.u8(4),
            Reply::Error(e) => {
                w.u8(5);
                match e {
                    None => w.u8(0),
                    Some(e) => {
                        w.u8(1);
                        w.i32(*e);
                    }
                }
            }
            Reply::Status { text, total } => {
                w.u8(6);
                w.u32(*total);
                // A status longer than a message is cut at a line.
                let room = MAX_MESSAGE - 16;
                let text = if text.len() > room {
                    let cut = text.as_bytes()[..room]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    &text[..cut]
                } else {
                    text
                };
                w.bytes(text.as_bytes());
            }
        }
        framed(w)
    }

    /// A reply's body (without its length).
    pub fn decode(body: &[u8]) -> io::Result<Reply> {
        let mut r = Reader(body);
        let reply = match r.u8()? {
            1 => Reply::Ok,
            2 => Reply::Refused(String::from_utf8_lossy(&r.bytes()?).into_owned()),
            3 => Reply::Known {
                local: r.addr()?,
                peer: r.addr()?,
                state: ConnState::get(&mut r)?,
            },
            4 => Reply::Unknown,
            5 => Reply::Error(match r.u8()? {
                0 => None,
                1 => Some(r.i32()?),
                _ => return Err(bad("bad error flag")),
            }),
            6 => {
                let total = r.u32()?;
                let text = String::from_utf8_lossy(&r.bytes()?).into_owned();
                Reply::Status { text, total }
            }
            _ => return Err(bad("unknown reply")),
        };
        r.end()?;
        Ok(reply)
    }
}

/// This process's effective user. (Not the owner of `/proc/self`: that is
/// root for a process that dropped its privileges without an `exec`.)
pub fn current_uid() -> io::Result<u32> {
    Ok(nix::unistd::geteuid().as_raw())
}

/// The daemon's directory for the calling user, created (mode 0700) if
/// missing: `TCPCRYPT_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/tcpcrypt`, else
/// `$HOME/.tcpcrypt`, else `/tmp/tcpcrypt-UID` (see
/// `choose_runtime_dir`). A directory that is a symbolic link, belongs to
/// someone else or lets anyone else in is refused: whoever controls it
/// could stand in for the daemon and receive the user's connections.
pub fn runtime_dir() -> io::Result<PathBuf> {
    let dir = runtime_dir_path()?;
    private_dir(&dir)?;
    Ok(dir)
}

/// The daemon's directory if it exists and passes the same checks as in
/// [`runtime_dir`], without making it: for questions, which must leave
/// nothing behind (a program run as another user asks too).
pub fn existing_runtime_dir() -> io::Result<PathBuf> {
    let dir = runtime_dir_path()?;
    private_to(&dir, current_uid()?, true)?;
    Ok(dir)
}

/// The environment variables that say where the daemon lives and how it
/// runs.
const DAEMON_ENVIRONMENT: [&str; 8] = [
    "TCPCRYPT_RUNTIME_DIR",
    "XDG_RUNTIME_DIR",
    "HOME",
    "TCPCRYPT_DAEMON",
    "TCPCRYPT_DAEMON_IDLE_EXIT",
    "TCPCRYPT_DAEMON_LOG",
    "TCPCRYPT_ZERO_RTT",
    "RUST_LOG",
];

static REMEMBERED: std::sync::OnceLock<Vec<(&'static str, std::ffi::OsString)>> =
    std::sync::OnceLock::new();

/// Takes note of the daemon's environment variables as they are now. The
/// shim does this when it loads: a program may clear its environment
/// later (nginx does, for its workers), and the workers' connections must
/// still go to the daemon the user configured.
pub fn remember_environment() {
    REMEMBERED.get_or_init(|| {
        DAEMON_ENVIRONMENT
            .iter()
            .filter_map(|&n| Some((n, std::env::var_os(n)?)))
            .collect()
    });
}

/// One of the daemon's environment variables: as remembered, if it was,
/// else as it is now.
pub fn env_var(name: &str) -> Option<std::ffi::OsString> {
    match REMEMBERED.get() {
        Some(vars) => vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone()),
        None => std::env::var_os(name),
    }
}

/// The daemon's environment variables that are set (as `env_var` says).
pub fn daemon_environment() -> Vec<(&'static str, std::ffi::OsString)> {
    DAEMON_ENVIRONMENT
        .iter()
        .filter_map(|&n| Some((n, env_var(n)?)))
        .collect()
}

fn runtime_dir_path() -> io::Result<PathBuf> {
    Ok(choose_runtime_dir(
        current_uid()?,
        env_var("TCPCRYPT_RUNTIME_DIR"),
        env_var("XDG_RUNTIME_DIR"),
        env_var("HOME"),
    ))
}

/// The first of: `TCPCRYPT_RUNTIME_DIR`; `$XDG_RUNTIME_DIR/tcpcrypt` when
/// that directory is the user's; `$HOME/.tcpcrypt` when the home
/// directory is usable ([`home_is_usable`]); `/tmp/tcpcrypt-UID`. Only the
/// last is within other users' reach: one of them may make it first, and
/// it is then refused (the shim goes plain, or fails under `mandatory`),
/// which is why it comes last.
fn choose_runtime_dir(
    uid: u32,
    runtime: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(d) = runtime.filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(base) = xdg.filter(|d| !d.is_empty())
        && private_to(Path::new(&base), uid, false).is_ok()
    {
        return PathBuf::from(base).join("tcpcrypt");
    }
    if let Some(home) = home.map(PathBuf::from)
        && home_is_usable(&home, uid)
    {
        return home.join(".tcpcrypt");
    }
    PathBuf::from(format!("/tmp/tcpcrypt-{uid}"))
}

/// Whether `home` may hold the daemon's directory: an absolute path to a
/// directory of the user's that no one else may write to, on a local file
/// system (a home shared over the network would be shared by the daemons
/// of several machines), and short enough for a socket's path.
fn home_is_usable(home: &Path, uid: u32) -> bool {
    /// NFS, SMB, CIFS and SMB2 (statfs's `f_type`).
    const NETWORK_FILE_SYSTEMS: [u64; 4] = [0x6969, 0x517b, 0xff53_4d42, 0xfe53_4d42];
    /// A socket's path is at most 107 bytes.
    const MAX_SOCKET_PATH: usize = 107;
    if !home.is_absolute() {
        return false;
    }
    let Ok(meta) = std::fs::metadata(home) else {
        return false;
    };
    let Ok(fs) = nix::sys::statfs::statfs(home) else {
        return false;
    };
    let fs_type = fs.filesystem_type().0 as u64 & 0xffff_ffff;
    meta.is_dir()
        && meta.uid() == uid
        && meta.mode() & 0o022 == 0
        && !NETWORK_FILE_SYSTEMS.contains(&fs_type)
        && socket_path(&home.join(".tcpcrypt")).as_os_str().len() <= MAX_SOCKET_PATH
}

/// Creates `dir` with mode 0700 if missing, and checks that it is private
/// to the calling user (see `runtime_dir`).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    private_to(dir, current_uid()?, true)
}

/// Checks that `dir` is a real directory (not a symbolic link) owned by
/// `uid`, and, when `strict`, that no one else may enter or change it.
fn private_to(dir: &Path, uid: u32, strict: bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}; refused", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("not a directory (or a symbolic link)");
    }
    if meta.uid() != uid {
        return refuse("owned by another user");
    }
    if strict && meta.mode() & 0o077 != 0 {
        return refuse("open to other users (mode is not 0700)");
    }
    Ok(())
}

/// The calling process's network namespace, as its `/proc` link names it
/// (`net:[4026531840]` gives `4026531840`), or `host` if it cannot be read.
/// One daemon serves each namespace: the connections it makes itself (a
/// plain reconnect after a fallback) must leave from the program's own.
pub fn network_namespace() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            let id = l.strip_prefix("net:[")?.strip_suffix(']')?.to_string();
            id.bytes().all(|b| b.is_ascii_digit()).then_some(id)
        })
        .unwrap_or_else(|| "host".into())
}

/// The version of this format, in the daemon's socket name: a library of
/// another version never talks to a daemon that would misread it (after
/// an upgrade, it starts a daemon of its own version beside the old one).
pub const VERSION: u32 = 5;

/// The socket of the daemon in `dir` for the caller's network namespace.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(format!("daemon.v{VERSION}.{}.sock", network_namespace()))
}

/// The lock file that elects that daemon.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(format!("daemon.v{VERSION}.{}.lock", network_namespace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_directory_is_out_of_other_users_reach_where_it_can_be() {
        use std::os::unix::fs::PermissionsExt;
        let uid = current_uid().unwrap();
        let home = std::env::temp_dir().join(format!("tcpcrypt-home-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let some = |p: &Path| Some(p.as_os_str().to_owned());
        let tmp = PathBuf::from(format!("/tmp/tcpcrypt-{uid}"));
        // Explicit, then XDG_RUNTIME_DIR (the user's), then the home.
        assert_eq!(
            choose_runtime_dir(uid, some(Path::new("/x")), some(&home), some(&home)),
            Path::new("/x")
        );
        assert_eq!(
            choose_runtime_dir(uid, None, some(&home), some(&home)),
            home.join("tcpcrypt")
        );
        assert_eq!(
            choose_runtime_dir(uid, None, None, some(&home)),
            home.join(".tcpcrypt")
        );
        // A home others may write to, a relative one, one of another
        // user's, none: /tmp.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(choose_runtime_dir(uid, None, None, some(&home)), tmp);
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            choose_runtime_dir(uid, None, None, some(Path::new("rel"))),
            tmp
        );
        assert_eq!(choose_runtime_dir(uid, None, None, None), tmp);
        assert_eq!(
            choose_runtime_dir(uid + 1, None, None, some(&home)),
            PathBuf::from(format!("/tmp/tcpcrypt-{}", uid + 1))
        );
        // Too long for a socket's path.
        let deep = home.join("d".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(choose_runtime_dir(uid, None, None, some(&deep)), tmp);
        std::fs::remove_dir_all(&home).unwrap();
    }

    fn handover() -> Handover {
        Handover {
            id: 77,
            local: "10.0.0.1:4000".parse().unwrap(),
            peer: SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 3, 9)),
            profile: profile(),
            pending: Some(Pending {
                filler: 160_000,
                lowat: -1,
            }),
            settings: vec![(1, 9, vec![1, 0, 0, 0]), (6, 13, b"cubic".to_vec())],
        }
    }

    fn profile() -> Profile {
        Profile {
            policy: WirePolicy::Mandatory,
            deadlines: Deadlines {
                handshake_ms: 1,
                server_hello_ms: 2,
                client_hello_wait_ms: 3,
            },
            carriage: WireCarriage::Kernel,
        }
    }

    fn body(framed: &[u8]) -> &[u8] {
        unframe(framed).unwrap().unwrap()
    }

    #[test]
    fn requests_round_trip_scope_ids_included() {
        for req in [
            Request::Connect(handover()),
            Request::Accept(Handover {
                pending: None,
                ..handover()
            }),
            Request::Query { id: 5 },
            Request::TakeError { id: 6 },
            Request::Offer {
                profile: profile(),
                peer: "[fe80::1%3]:443".parse().unwrap(),
            },
            Request::Listen(Profile {
                carriage: WireCarriage::InBand,
                ..profile()
            }),
            Request::SetOption {
                id: 7,
                setting: (6, 18, vec![0, 1, 0, 0]),
            },
            Request::Abandon { id: 8 },
            Request::Status { from: 3 },
            Request::Shutdown,
            Request::Ping,
            Request::SkipHello {
                peer: "[2001:db8::1]:443".parse().unwrap(),
            },
        ] {
            assert_eq!(Request::decode(body(&req.encode())).unwrap(), req);
        }
    }

    #[test]
    fn replies_round_trip() {
        let facts = SessionFacts {
            session_id: vec![0x21; 33],
            tep: 0x21,
            role: 1,
            aead: 1,
            peer_global: 0,
            self_name: vec![1; 34],
            peer_name: vec![2; 34],
            transcript: vec![3; 10],
        };
        for reply in [
            Reply::Ok,
            Reply::Refused("no".into()),
            Reply::Known {
                local: "127.0.0.1:1".parse().unwrap(),
                peer: "[::1]:2".parse().unwrap(),
                state: ConnState::Encrypted(facts),
            },
            Reply::Known {
                local: "127.0.0.1:1".parse().unwrap(),
                peer: "[::1]:2".parse().unwrap(),
                state: ConnState::Failed(111),
            },
            Reply::Unknown,
            Reply::Error(Some(111)),
            Reply::Error(None),
            Reply::Status {
                text: "{}\n".into(),
                total: 9,
            },
        ] {
            assert_eq!(Reply::decode(body(&reply.encode())).unwrap(), reply);
        }
    }

    #[test]
    fn every_truncation_and_bad_length_is_an_error() {
        let full = Request::Connect(handover()).encode();
        let b = body(&full);
        for n in 0..b.len() {
            assert!(Request::decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut trailing = b.to_vec();
        trailing.push(0);
        assert!(Request::decode(&trailing).is_err());
        let huge = (MAX_MESSAGE as u32).to_le_bytes();
        assert!(unframe(&huge).is_err());
        assert_eq!(unframe(&[1, 0]).unwrap(), None);
    }

    #[test]
    fn a_long_status_is_cut_at_a_line() {
        let text = "é".repeat(50) + "\n";
        let long = text.repeat(MAX_MESSAGE / 50);
        let reply = Reply::Status {
            text: long,
            total: 7,
        };
        let Reply::Status { text: cut, .. } = Reply::decode(body(&reply.encode())).unwrap() else {
            panic!("not a status");
        };
        assert!(cut.len() < MAX_MESSAGE && cut.ends_with('\n'));
    }

    #[test]
    fn a_directory_of_another_user_or_open_to_others_is_refused() {
        let base = std::env::temp_dir().join(format!("tcpcrypt-wire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&base)
            .unwrap();
        let uid = current_uid().unwrap();
        assert!(private_to(&base, uid, true).is_err(), "mode 0755 accepted");
        assert!(
            private_to(&base, uid + 1, false).is_err(),
            "owner not checked"
        );
        let link = base.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(private_to(&link, uid, false).is_err(), "symlink followed");
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        assert!(private_to(&base, uid, true).is_ok());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}

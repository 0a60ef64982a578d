//! `tcpcrypt daemon`: the per-user relay daemon. It owns the real
//! connections of every shimmed program of its user: the shim hands it
//! each connected (or accepted) socket and the daemon's end of a loopback
//! connection to the application's socket, over a Unix socket in a
//! directory only the user can enter (`SCM_RIGHTS`). Because the daemon
//! outlives the programs, bytes they write before exiting are delivered;
//! because it is shared, legacy-server verdicts and resumption tickets
//! serve every process of the user. Design: `docs/SHIM.md`.

mod conns;
mod control;
mod relay;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpcrypt_tokio::{Carriage, Config, Policy, SynOffer};
use tokio::net::UnixListener;

use crate::wire::{self, ConnState, Handover, Profile, Reply, Request, WireCarriage, WirePolicy};
use conns::{Conn, Conns};

pub use control::{ask, stopped};

#[derive(clap::Args)]
pub struct Args {
    /// Stay in the foreground (for systemd and tests); without it the
    /// daemon detaches and this command returns once it answers.
    #[arg(long)]
    foreground: bool,
    /// Exit after this long with no connection and no request (0: never).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        env = "TCPCRYPT_DAEMON_IDLE_EXIT",
        value_parser = humantime::parse_duration
    )]
    idle_exit: Duration,
    /// Stop the running daemon of this user (its relayed connections are
    /// reset).
    #[arg(long, conflicts_with = "foreground")]
    stop: bool,
    /// Set by the detaching command for the daemon it starts: a session of
    /// its own (no terminal), and `/` as working directory.
    #[arg(long, hide = true, requires = "foreground")]
    detached: bool,
    /// Send a resuming program's first bytes with the hello, as 0-RTT data
    /// (`docs/SHIM.md`). Off by default: a connection that fails before the
    /// server answers (two losses of the first segment in a row, say) must
    /// then be reset, since the bytes may have been taken, where plain TCP
    /// would have carried on.
    #[arg(
        long,
        env = "TCPCRYPT_ZERO_RTT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    zero_rtt: bool,
}

pub fn daemon(args: Args) -> i32 {
    close_inherited();
    let dir = match wire::runtime_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tcpcrypt daemon: {e}");
            return 2;
        }
    };
    if args.stop {
        let mut asked = control::ask(&dir, &Request::Shutdown);
        if let Some(pid) = asked.as_ref().err().and_then(control::stopped) {
            // Asked to stop, a stopped daemon is let go on to do so.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
            asked = control::ask(&dir, &Request::Shutdown);
        }
        return match asked {
            Ok(_) => 0,
            Err(e) => {
                eprintln!(
                    "tcpcrypt daemon: no daemon answers in {}: {e}",
                    dir.display()
                );
                1
            }
        };
    }
    if !args.foreground {
        return detach(&dir, &args);
    }
    if args.detached {
        // Nothing of the starting program's session or working directory.
        let _ = nix::unistd::setsid();
        let _ = std::env::set_current_dir("/");
    }
    raise_descriptor_limit();
    let lock = match elect(&dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => return 0, // another daemon serves this user
        Err(e) => {
            eprintln!("tcpcrypt daemon: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tcpcrypt-daemon")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcpcrypt daemon: cannot start the runtime: {e}");
            return 2;
        }
    };
    let code = rt.block_on(serve(dir, args.idle_exit, args.zero_rtt));
    drop(lock);
    code
}

/// Closes every descriptor but the standard three. The shim starts the
/// daemon from inside an arbitrary program, whose descriptors without
/// close-on-exec (its sockets, its pipes) would otherwise stay open as
/// long as the daemon lives: a socket the program closed would never end,
/// a pipe its parent reads would never reach end of file.
fn close_inherited() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // The directory's own descriptor is among them, closed already.
        let _ = nix::unistd::close(fd);
    }
}

/// Raises the soft limit on descriptors to the hard one: the daemon holds
/// two per relayed connection, for every program of its user, and would
/// otherwise keep the limit of whichever program started it.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Starts a daemon in the background (a new process group, standard
/// streams on /dev/null) unless one answers already, and returns once one
/// answers: the caller can hand it connections at once.
fn detach(dir: &Path, args: &Args) -> i32 {
    match control::ask(dir, &Request::Status { from: 0 }) {
        Ok(_) => {
            // Its settings stay as they are: this command's are not taken.
            eprintln!(
                "tcpcrypt daemon: already running for this user ({}); `tcpcrypt daemon --stop` first to start one with other settings",
                dir.display()
            );
            return 0;
        }
        // It holds the lock: another would not start.
        Err(e) if control::stopped(&e).is_some() => {
            eprintln!("tcpcrypt daemon: {e}");
            return 1;
        }
        Err(_) => {}
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tcpcrypt daemon: {e}");
            return 2;
        }
    };
    // Its log: TCPCRYPT_DAEMON_LOG (see `log_file`), at the level of
    // RUST_LOG or -v; else nowhere.
    let log = std::env::var_os("TCPCRYPT_DAEMON_LOG")
        .and_then(|path| match crate::log_file::open(Path::new(&path)) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("tcpcrypt daemon: TCPCRYPT_DAEMON_LOG: {e}; not logging");
                None
            }
        })
        .map_or_else(std::process::Stdio::null, std::process::Stdio::from);
    let spawned = std::process::Command::new(exe)
        .args(["daemon", "--foreground", "--detached", "--idle-exit"])
        .arg(humantime::format_duration(args.idle_exit).to_string())
        .args(args.zero_rtt.then_some("--zero-rtt"))
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("tcpcrypt daemon: cannot start: {e}");
        return 2;
    }
    // Bounded: 5 s in steps of 2 ms.
    for _ in 0..2500 {
        if control::ask(dir, &Request::Status { from: 0 }).is_ok() {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "tcpcrypt daemon: started, but does not answer in {}",
        dir.display()
    );
    1
}

use std::os::unix::process::CommandExt;

/// Takes the lock that makes this the one daemon of `dir`: `None` when
/// another holds it. The lock file is opened without following a symbolic
/// link (the directory is the user's own, checked, but this costs nothing).
fn elect(dir: &Path) -> io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(wire::lock_path(dir))?;
    match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// The daemon's shared state.
struct Daemon {
    uid: u32,
    conns: Conns,
    /// One library configuration per policy and set of deadlines the
    /// programs asked for; each holds its verdict cache and resumption
    /// tickets, shared by every process that asks for the same. At most
    /// `MAX_PROFILES`, with when each was last asked for.
    configs: Mutex<HashMap<Profile, (Arc<Config>, std::time::Instant)>>,
    /// Destinations whose path breaks tcpcrypt (`check --path --remember`),
    /// for configurations made later; bounded like the caches.
    broken_paths: Mutex<HashMap<SocketAddr, std::time::Instant>>,
    /// ENO offered in the SYN of a program's socket (`Offer`), by the
    /// socket's inode, until the connected socket is handed over: only that
    /// handshake can go on from a SYN that named a resumption ticket.
    offers: Mutex<HashMap<u64, (SynOffer, std::time::Instant)>>,
    /// Resuming clients' first bytes go as 0-RTT data (`--zero-rtt`).
    zero_rtt: bool,
    shutdown: tokio::sync::Notify,
}

/// Most configurations kept: programs ask for a few (a policy, a
/// carriage, deadlines from their environment); a client that asks for
/// ever new deadlines evicts the least recently used instead of growing
/// the daemon without end.
const MAX_PROFILES: usize = 64;

/// Most offers kept for sockets not handed over yet, and how long one is
/// kept (a connect that never completes, a program that died).
const MAX_OFFERS: usize = 4096;
const OFFER_KEPT: Duration = Duration::from_secs(120);

/// A socket's inode: its identity across descriptors and processes.
fn inode(fd: &OwnedFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

impl Daemon {
    fn config(&self, profile: Profile) -> io::Result<Arc<Config>> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, used)) = configs.get_mut(&profile) {
            *used = std::time::Instant::now();
            return Ok(c.clone());
        }
        let d = profile.deadlines;
        let mut b = Config::builder()
            .policy(match profile.policy {
                WirePolicy::Opportunistic => Policy::Opportunistic,
                WirePolicy::Mandatory => Policy::Mandatory,
            })
            .carriage(match profile.carriage {
                WireCarriage::Auto => Carriage::Auto,
                WireCarriage::Kernel => Carriage::Kernel,
                WireCarriage::InBand => Carriage::InBand,
            });
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        if d.handshake_ms != 0 {
            b = b.handshake_timeout(ms(d.handshake_ms));
        }
        if d.server_hello_ms != 0 {
            b = b.server_hello_timeout(ms(d.server_hello_ms));
        }
        if d.client_hello_wait_ms != 0 {
            b = b.client_hello_wait(ms(d.client_hello_wait_ms));
        }
        let config = Arc::new(b.build().map_err(io::Error::other)?);
        let broken = self.broken_paths.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, at) in broken.iter() {
            if at.elapsed() < BROKEN_PATH_TTL {
                config.client_cache().mark_path_broken(*peer);
            }
        }
        if configs.len() >= MAX_PROFILES
            && let Some(oldest) = configs
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| *p)
        {
            configs.remove(&oldest);
        }
        configs.insert(profile, (config.clone(), std::time::Instant::now()));
        Ok(config)
    }

    /// Connections to `peer` skip the hello from now on, in every
    /// configuration.
    fn skip_hello(&self, peer: SocketAddr) {
        let mut broken = self.broken_paths.lock().unwrap_or_else(|p| p.into_inner());
        broken.retain(|_, at| at.elapsed() < BROKEN_PATH_TTL);
        if broken.len() >= MAX_BROKEN_PATHS {
            return;
        }
        broken.insert(peer, std::time::Instant::now());
        drop(broken);
        let configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        for (config, _) in configs.values() {
            config.client_cache().mark_path_broken(peer);
        }
    }
}

/// How long a broken path is remembered: a legacy verdict's lifetime.
const BROKEN_PATH_TTL: Duration = Duration::from_secs(600);
/// Most broken paths remembered at once.
const MAX_BROKEN_PATHS: usize = 4096;

async fn serve(dir: PathBuf, idle_exit: Duration, zero_rtt: bool) -> i32 {
    let path = wire::socket_path(&dir);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt daemon: {}: {e}", path.display());
            return 2;
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let ino = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
    let uid = match wire::current_uid() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("tcpcrypt daemon: {e}");
            return 2;
        }
    };
    let daemon = Arc::new(Daemon {
        uid,
        conns: Conns::default(),
        configs: Mutex::default(),
        broken_paths: Mutex::default(),
        offers: Mutex::default(),
        zero_rtt,
        shutdown: tokio::sync::Notify::new(),
    });
    daemon.conns.touch();
    tracing::info!(socket = %path.display(), "tcpcrypt daemon serving");
    let check_every = if idle_exit.is_zero() {
        Duration::from_secs(3600)
    } else {
        (idle_exit / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    };
    let mut ticks = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    tokio::spawn(async move { control::serve_one(stream, daemon).await });
                }
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = ticks.tick() => {
                if !idle_exit.is_zero() && daemon.conns.idle_for(idle_exit) {
                    tracing::info!("idle: exiting");
                    break;
                }
            }
            _ = daemon.shutdown.notified() => break,
        }
    }
    // The socket goes first (only if it is still ours), so that a new
    // daemon can take over at once.
    if std::fs::symlink_metadata(&path).map(|m| m.ino()).ok() == ino {
        let _ = std::fs::remove_file(&path);
    }
    0
}

/// Starts relaying a handed-over connection.
fn start(
    daemon: &Arc<Daemon>,
    h: Handover,
    fds: Vec<OwnedFd>,
    server: bool,
    pid: u32,
) -> io::Result<()> {
    let config = daemon.config(h.profile)?;
    let mut fds = fds.into_iter();
    let (Some(app), Some(real)) = (fds.next(), fds.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors missing",
        ));
    };
    let app_socket = fds.next();
    let offer = if server {
        None
    } else {
        inode(&real).and_then(|ino| daemon.take_offer(ino))
    };
    let app = relay::app_end(app)?;
    let real = relay::real(real)?;
    let state = if h.pending.is_some() {
        ConnState::Connecting
    } else {
        ConnState::Negotiating
    };
    let conn = Arc::new(Conn::new(
        h.id, pid, server, h.local, h.peer, state, h.settings,
    ));
    if let Some(p) = &h.pending {
        conn.hold_lowat(p.lowat);
    }
    daemon.conns.insert(conn.clone());
    let start = relay::ClientStart {
        offer,
        zero_rtt: daemon.zero_rtt,
    };
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let result = match (server, h.pending, app_socket) {
            (true, _, _) => relay::inbound(app, real, &config, &conn).await,
            (false, Some(p), Some(socket)) => {
                relay::connecting(app, real, p, socket, start, &config, &conn).await
            }
            (false, _, _) => relay::outbound(app, real, start, &config, &conn).await,
        };
        if let Err(e) = result {
            tracing::debug!(peer = %conn.peer, error = %e, "relay ended with an error");
        }
        daemon.conns.ended(&conn);
    });
    Ok(())
}

impl Daemon {
    /// Keeps the offer made for the socket of inode `ino`, dropping those
    /// kept too long (and the oldest, beyond the bound).
    fn keep_offer(&self, ino: u64, offer: SynOffer) {
        let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        offers.retain(|_, (_, at)| at.elapsed() < OFFER_KEPT);
        if offers.len() >= MAX_OFFERS {
            if let Some(oldest) = offers
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
            {
                offers.remove(&oldest);
            }
        }
        offers.insert(ino, (offer, std::time::Instant::now()));
    }

    /// The offer made for the socket of inode `ino`, if any.
    fn take_offer(&self, ino: u64) -> Option<SynOffer> {
        let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        offers.remove(&ino).map(|(offer, _)| offer)
    }

    /// The kernel carriage for a program's socket: ENO offered in its SYN
    /// (before the program connects it), or answered in its SYN-ACKs (a
    /// bound socket, before the program listens on it). `Ok` only when the
    /// kernel will carry it.
    fn prepare(&self, profile: Profile, fds: &[OwnedFd], peer: Option<SocketAddr>) -> Reply {
        let Some(socket) = fds.first() else {
            return Reply::Refused("descriptor missing".into());
        };
        let prepared = self.config(profile).and_then(|config| match peer {
            None => tcpcrypt_tokio::answer_in_synack(socket, &config),
            Some(peer) => {
                let offer = tcpcrypt_tokio::offer_in_syn_to(socket, &config, peer)?;
                let Some(offer) = offer else {
                    return Ok(false);
                };
                let ino = inode(socket).ok_or_else(io::Error::last_os_error)?;
                self.keep_offer(ino, offer);
                Ok(true)
            }
        });
        match prepared {
            Ok(true) => Reply::Ok,
            Ok(false) => Reply::Refused("the kernel carriage is not available".into()),
            Err(e) => Reply::Refused(e.to_string()),
        }
    }

    /// Answers one request from a process of this user.
    fn handle(self: &Arc<Self>, req: Request, fds: Vec<OwnedFd>, pid: u32) -> Reply {
        self.conns.touch();
        let handover = |h: Handover, fds, server: bool| match start(self, h, fds, server, pid) {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::Refused(e.to_string()),
        };
        match req {
            Request::Offer { profile, peer } => self.prepare(profile, &fds, Some(peer)),
            Request::Listen(profile) => self.prepare(profile, &fds, None),
            Request::Connect(h) => handover(h, fds, false),
            Request::Accept(h) => handover(h, fds, true),
            Request::Query { id } => match self.conns.get(id) {
                Some(c) => Reply::Known {
                    local: c.local(),
                    peer: c.peer,
                    state: c.state(),
                },
                None => Reply::Unknown,
            },
            Request::TakeError { id } => {
                Reply::Error(self.conns.get(id).and_then(|c| c.take_error()))
            }
            Request::SetOption { id, setting } => {
                let Some(c) = self.conns.get(id) else {
                    return Reply::Ok;
                };
                if (setting.0, setting.1) == (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) {
                    // The application's own socket, held until released.
                    let value = setting.2.first_chunk().map(|b| i32::from_ne_bytes(*b));
                    return match value {
                        Some(v) if c.replace_held_lowat(v) => Reply::Ok,
                        _ => Reply::Unknown,
                    };
                }
                c.set_option(setting);
                Reply::Ok
            }
            Request::Abandon { id } => {
                if let Some(c) = self.conns.get(id) {
                    c.cancel.notify_one();
                }
                Reply::Ok
            }
            Request::Status { from } => {
                let (text, total) = self.conns.status(from);
                Reply::Status { text, total }
            }
            Request::Ping => Reply::Ok,
            Request::Shutdown => {
                self.shutdown.notify_one();
                Reply::Ok
            }
            Request::SkipHello { peer } => {
                self.skip_hello(peer);
                Reply::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that asks for ever new deadlines keeps at most
    /// `MAX_PROFILES` configurations in the daemon; one in use stays.
    #[test]
    fn configurations_are_bounded_and_the_one_in_use_is_kept() {
        let daemon = Daemon {
            uid: 0,
            conns: Conns::default(),
            configs: Mutex::default(),
            broken_paths: Mutex::default(),
            offers: Mutex::default(),
            zero_rtt: false,
            shutdown: tokio::sync::Notify::new(),
        };
        let profile = |ms: u32| Profile {
            policy: WirePolicy::Opportunistic,
            deadlines: wire::Deadlines {
                handshake_ms: ms,
                ..Default::default()
            },
            carriage: WireCarriage::Auto,
        };
        let kept = daemon.config(profile(1)).unwrap();
        for ms in 2..1000 {
            daemon.config(profile(ms)).unwrap();
            // The first one, in use all along.
            daemon.config(profile(1)).unwrap();
        }
        assert_eq!(daemon.configs.lock().unwrap().len(), MAX_PROFILES);
        assert!(Arc::ptr_eq(&kept, &daemon.config(profile(1)).unwrap()));
    }

    /// The shim looks for the kernel carriage where `tcpcrypt kernel
    /// enable` pins it.
    #[test]
    fn the_shim_looks_for_the_map_the_kernel_carriage_pins() {
        let pinned = std::path::Path::new(tcpcrypt_kernel::PIN_DIR).join("sk");
        assert_eq!(std::path::Path::new(super::wire::KERNEL_SOCKET_MAP), pinned);
    }
}

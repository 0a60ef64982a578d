//! The daemon's record of every connection it relays: its state for the
//! shim's queries and `tcpcrypt status`, and the socket options the
//! application set for the real connection.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tcpcrypt_tokio::{Carriage, SessionInfo};

use crate::wire::{ConnState, SessionFacts, Setting};

/// Ended connections stay queryable (the session ID belongs to the
/// application's socket, which may outlive the relay) among this many of
/// the most recent.
const ENDED_KEPT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One relayed connection.
pub struct Conn {
    /// The application's socket's identity (inode).
    pub id: u64,
    pub pid: u32,
    pub program: String,
    pub server: bool,
    pub peer: SocketAddr,
    local: Mutex<SocketAddr>,
    state: Mutex<ConnState>,
    resumed: AtomicBool,
    /// Whether the client's first bytes went as 0-RTT data.
    zero_rtt: AtomicBool,
    /// Whether ENO travelled in the SYNs (the kernel carriage).
    kernel_carried: AtomicBool,
    aead_name: Mutex<&'static str>,
    /// Whether a failed connect's errno has been reported.
    reported: AtomicBool,
    /// Options for the real socket, and that socket while the relay
    /// carries bytes on it (cleared, under the same lock, before it closes).
    options: Mutex<(Vec<Setting>, Option<RawFd>)>,
    /// The application's `TCP_NOTSENT_LOWAT`, put back on its socket when
    /// a held connect is released (the shim holds it at 1 until then);
    /// `None` once released, or never held.
    held_lowat: Mutex<Option<i32>>,
    /// Wakes a pending connect the application gave up on.
    pub cancel: tokio::sync::Notify,
    pub started: Instant,
}

impl Conn {
    pub fn new(
        id: u64,
        pid: u32,
        server: bool,
        local: SocketAddr,
        peer: SocketAddr,
        state: ConnState,
        settings: Vec<Setting>,
    ) -> Conn {
        Conn {
            id,
            pid,
            program: program_of(pid),
            server,
            peer,
            local: Mutex::new(local),
            state: Mutex::new(state),
            resumed: AtomicBool::new(false),
            zero_rtt: AtomicBool::new(false),
            kernel_carried: AtomicBool::new(false),
            aead_name: Mutex::new(""),
            reported: AtomicBool::new(false),
            options: Mutex::new((settings, None)),
            held_lowat: Mutex::new(None),
            cancel: tokio::sync::Notify::new(),
            started: Instant::now(),
        }
    }

    pub fn state(&self) -> ConnState {
        lock(&self.state).clone()
    }

    pub fn local(&self) -> SocketAddr {
        *lock(&self.local)
    }

    pub fn set_state(&self, s: ConnState) {
        *lock(&self.state) = s;
    }

    /// Records the negotiation's outcome (`None`: plain TCP) and how it
    /// travelled.
    pub fn negotiated(
        &self,
        info: Option<&SessionInfo>,
        carriage: Option<Carriage>,
        local: SocketAddr,
    ) {
        *lock(&self.local) = local;
        self.kernel_carried
            .store(carriage == Some(Carriage::Kernel), Ordering::Relaxed);
        let state = match info {
            Some(i) => {
                self.resumed.store(i.resumed, Ordering::Relaxed);
                self.zero_rtt.store(i.zero_rtt, Ordering::Relaxed);
                *lock(&self.aead_name) = i.aead.name();
                ConnState::Encrypted(facts(i))
            }
            None => ConnState::Plain,
        };
        self.set_state(state);
    }

    /// The errno of a failed connect, the first time it is asked for.
    pub fn take_error(&self) -> Option<i32> {
        match self.state() {
            ConnState::Failed(e) if !self.reported.swap(true, Ordering::AcqRel) => Some(e),
            _ => None,
        }
    }

    /// Records an option the application set, and applies it to the real
    /// socket if the relay holds one.
    pub fn set_option(&self, setting: Setting) {
        let mut o = lock(&self.options);
        if let Some(fd) = o.1 {
            crate::sockopt::apply(fd, &setting);
        }
        o.0.retain(|(l, n, _)| (*l, *n) != (setting.0, setting.1));
        o.0.push(setting);
    }

    /// The application's socket is held with its `TCP_NOTSENT_LOWAT` at 1;
    /// `lowat` is the application's own.
    pub fn hold_lowat(&self, lowat: i32) {
        *lock(&self.held_lowat) = Some(lowat);
    }

    /// The application set its `TCP_NOTSENT_LOWAT` while held: kept for the
    /// release (`true`), or `false` when released already (the shim then
    /// sets it itself).
    pub fn replace_held_lowat(&self, lowat: i32) -> bool {
        match &mut *lock(&self.held_lowat) {
            Some(v) => {
                *v = lowat;
                true
            }
            None => false,
        }
    }

    /// Releases the application's socket: `restore` puts its own
    /// `TCP_NOTSENT_LOWAT` back (`at_connect` unless it set another since),
    /// under the lock that [`Conn::replace_held_lowat`] takes, so that no
    /// value set meanwhile is lost.
    pub fn release_lowat(&self, at_connect: i32, restore: impl FnOnce(i32)) {
        let mut held = lock(&self.held_lowat);
        restore(held.take().unwrap_or(at_connect));
    }

    /// Applies the recorded options to `fd`, the real socket the relay is
    /// about to carry bytes on, and keeps it for later ones until
    /// [`Conn::detach`].
    pub fn attach(&self, fd: RawFd) {
        let mut o = lock(&self.options);
        for s in &o.0 {
            crate::sockopt::apply(fd, s);
        }
        o.1 = Some(fd);
    }

    pub fn detach(&self) {
        lock(&self.options).1 = None;
    }

    /// One JSON line for `tcpcrypt status`.
    pub fn status_line(&self) -> String {
        let state = self.state();
        let (encrypted, tep, aead, sid) = match &state {
            ConnState::Encrypted(f) => (
                true,
                // The TEP's identifier: the suboption byte's v bit
                // (0x80) is the `resumed` field.
                serde_json::json!(f.tep & 0x7f),
                serde_json::json!(*lock(&self.aead_name)),
                serde_json::json!(hex(&f.session_id)),
            ),
            _ => (
                false,
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null,
            ),
        };
        let line = serde_json::json!({
            "pid": self.pid,
            "program": self.program,
            "local": self.local().to_string(),
            "peer": self.peer.to_string(),
            "role": if self.server { "B" } else { "A" },
            "state": state_name(&state),
            "encrypted": encrypted,
            "resumed": self.resumed.load(Ordering::Relaxed),
            "zero_rtt": self.zero_rtt.load(Ordering::Relaxed),
            "carriage": match (encrypted, self.kernel_carried.load(Ordering::Relaxed)) {
                (false, _) => serde_json::Value::Null,
                (true, true) => serde_json::json!("kernel"),
                (true, false) => serde_json::json!("in-band"),
            },
            "tep": tep,
            "aead": aead,
            "session_id": sid,
            "age_ms": self.started.elapsed().as_millis() as u64,
        });
        format!("{line}\n")
    }
}

fn state_name(s: &ConnState) -> &'static str {
    match s {
        ConnState::Connecting => "connecting",
        ConnState::Failed(_) => "failed",
        ConnState::Negotiating => "negotiating",
        ConnState::Encrypted(_) => "encrypted",
        ConnState::Plain => "plain",
        ConnState::Closed => "closed",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the shim reports of a session (`tcpcrypt.h`).
pub fn facts(i: &SessionInfo) -> SessionFacts {
    SessionFacts {
        session_id: i.session_id.as_bytes().to_vec(),
        tep: i.tep_byte,
        role: i.role.as_u8(),
        aead: i.aead.id(),
        peer_global: i.peer_global,
        self_name: i.self_name(),
        peer_name: i.peer_name(),
        transcript: i.transcript.clone(),
    }
}

/// The command name of process `pid` (`/proc/PID/comm`).
fn program_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// Every connection, live or recently ended, by application socket.
#[derive(Default)]
pub struct Conns {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    live: HashMap<u64, Arc<Conn>>,
    ended: HashMap<u64, Arc<Conn>>,
    ended_order: VecDeque<u64>,
    last_activity: Option<Instant>,
}

impl Conns {
    pub fn insert(&self, conn: Arc<Conn>) {
        let mut t = lock(&self.inner);
        t.ended.remove(&conn.id);
        t.live.insert(conn.id, conn);
        t.last_activity = Some(Instant::now());
    }

    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        let t = lock(&self.inner);
        t.live.get(&id).or_else(|| t.ended.get(&id)).cloned()
    }

    /// Moves a connection whose relay ended among the ended ones; the
    /// state of a negotiation that never finished becomes `Closed`.
    pub fn ended(&self, conn: &Arc<Conn>) {
        {
            let mut s = lock(&conn.state);
            if matches!(*s, ConnState::Connecting | ConnState::Negotiating) {
                *s = ConnState::Closed;
            }
        }
        let mut t = lock(&self.inner);
        if t.live.remove(&conn.id).is_none() {
            return;
        }
        t.last_activity = Some(Instant::now());
        t.ended.insert(conn.id, conn.clone());
        t.ended_order.push_back(conn.id);
        while t.ended_order.len() > ENDED_KEPT {
            if let Some(old) = t.ended_order.pop_front() {
                // Only if it was not handed over again since.
                if t.ended
                    .get(&old)
                    .is_some_and(|c| !t.live.contains_key(&c.id))
                {
                    t.ended.remove(&old);
                }
            }
        }
    }

    pub fn touch(&self) {
        lock(&self.inner).last_activity = Some(Instant::now());
    }

    /// Whether nothing is relayed and nothing has happened for `idle`.
    pub fn idle_for(&self, idle: std::time::Duration) -> bool {
        let t = lock(&self.inner);
        t.live.is_empty() && t.last_activity.is_none_or(|a| a.elapsed() >= idle)
    }

    #[cfg(test)]
    pub fn live_count(&self) -> usize {
        lock(&self.inner).live.len()
    }

    /// The live connections, one JSON line each, oldest first.
    /// The status lines of the live connections from the `from`th on
    /// (oldest first), and how many there are in all.
    pub fn status(&self, from: u32) -> (String, u32) {
        let mut conns: Vec<_> = lock(&self.inner).live.values().cloned().collect();
        // The id breaks ties, so that pages asked for one after the
        // other never repeat or skip a connection started in the same tick.
        conns.sort_by_key(|c| (c.started, c.id));
        let total = u32::try_from(conns.len()).unwrap_or(u32::MAX);
        let lines = conns
            .iter()
            .skip(from as usize)
            .map(|c| c.status_line())
            .collect();
        (lines, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64) -> Arc<Conn> {
        Arc::new(Conn::new(
            id,
            std::process::id(),
            false,
            SocketAddr::from(([127, 0, 0, 1], 1000 + id as u16)),
            "127.0.0.1:2".parse().unwrap(),
            ConnState::Connecting,
            Vec::new(),
        ))
    }

    #[test]
    fn a_failed_connect_is_reported_once() {
        let c = conn(1);
        assert_eq!(c.take_error(), None);
        c.set_state(ConnState::Failed(111));
        assert_eq!(c.take_error(), Some(111));
        assert_eq!(c.take_error(), None);
    }

    #[test]
    fn ended_connections_stay_queryable_within_a_bound() {
        let conns = Conns::default();
        for id in 0..(ENDED_KEPT as u64 + 10) {
            let c = conn(id);
            conns.insert(c.clone());
            conns.ended(&c);
        }
        assert!(conns.get(0).is_none(), "the oldest is forgotten");
        let last = conns.get(ENDED_KEPT as u64 + 9).expect("recent kept");
        assert_eq!(last.state(), ConnState::Closed);
        assert_eq!(conns.live_count(), 0);
        assert_eq!(conns.status(0), (String::new(), 0));
    }

    #[test]
    fn status_pages_start_where_the_caller_asks() {
        let conns = Conns::default();
        for id in 0..5 {
            conns.insert(conn(id));
        }
        // Each line names its connection by its local port; `age_ms` may
        // move between two calls, so lines are compared by that name.
        let locals = |page: &str| -> Vec<String> {
            page.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["local"].to_string())
                .collect()
        };
        let (all, total) = conns.status(0);
        assert_eq!((all.lines().count(), total), (5, 5));
        let (rest, total) = conns.status(3);
        assert_eq!((rest.lines().count(), total), (2, 5));
        assert_eq!(locals(&rest), locals(&all)[3..]);
        assert_eq!(conns.status(9), (String::new(), 5));
    }

    #[test]
    fn the_status_line_names_the_process() {
        let c = conn(3);
        let v: serde_json::Value = serde_json::from_str(&c.status_line()).unwrap();
        assert_eq!(v["pid"], std::process::id());
        assert!(!v["program"].as_str().unwrap().is_empty());
        assert_eq!(v["state"], "connecting");
        assert_eq!(v["encrypted"], false);
    }
}

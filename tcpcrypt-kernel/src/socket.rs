//! Per-socket access for the library: the offer a connecting socket makes,
//! the answer template of a listening one, and what the kernel negotiated,
//! through the pinned per-socket map. Any user may do this for the sockets
//! it holds.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{Map, MapData, SkStorage};
use nix::sys::socket::{getsockopt, sockopt::Ipv6V6Only};

use crate::record::{self, LEN, Listening, MAX_SYN_OPTION, MAX_TEMPLATE, Outcome};
use crate::{Error, PIN_DIR};

/// The pinned per-socket map, opened once.
pub struct Sockets {
    map: Mutex<SkStorage<MapData, [u8; LEN]>>,
    /// The pin's inode when opened: a disable and enable make a new map.
    pin_inode: u64,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets").finish_non_exhaustive()
    }
}

impl Sockets {
    /// Opens the map `tcpcrypt kernel enable` pinned. `Error::NotEnabled`
    /// when it is not there.
    pub fn open() -> Result<Self, Error> {
        let pin = Path::new(PIN_DIR).join("sk");
        // Missing means not enabled; a permission error is reported as one.
        let pin_inode = match std::fs::symlink_metadata(&pin) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(crate::missing_pin()),
            Err(e) => {
                return Err(Error::Io {
                    path: pin,
                    source: e,
                });
            }
            Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
        };
        let data = MapData::from_pin(&pin).map_err(Error::bpf)?;
        let map: SkStorage<MapData, [u8; LEN]> = Map::from_map_data(data)
            .map_err(Error::bpf)?
            .try_into()
            .map_err(Error::bpf)?;
        Ok(Sockets {
            map: Mutex::new(map),
            pin_inode,
        })
    }

    /// Whether this is still the pinned map (not one that a `tcpcrypt
    /// kernel disable` unpinned, and an `enable` replaced): a long-running
    /// process opens it again when not.
    pub fn is_current(&self) -> bool {
        std::fs::symlink_metadata(Path::new(PIN_DIR).join("sk"))
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == self.pin_inode)
    }

    fn put(&self, socket: &impl AsRawFd, r: [u8; LEN]) -> Result<(), Error> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(socket, r, 0).map_err(Error::bpf)
    }

    /// Before `connect`: the SYN-form ENO option this socket offers.
    pub fn offer(&self, socket: &impl AsRawFd, syn_option: &[u8]) -> Result<(), Error> {
        if syn_option.len() < 2 || syn_option.len() > MAX_SYN_OPTION {
            return Err(Error::OptionTooLong(syn_option.len()));
        }
        self.put(socket, record::offer(syn_option))
    }

    /// Between `bind` and `listen`: how this listener answers a SYN with
    /// ENO (its global suboption byte, its TEPs most preferred first).
    pub fn listen(
        &self,
        socket: &(impl AsRawFd + AsFd),
        global: u8,
        teps: &[u8],
    ) -> Result<(), Error> {
        if teps.is_empty() || 1 + teps.len() > MAX_TEMPLATE {
            return Err(Error::OptionTooLong(1 + teps.len()));
        }
        // An IPv4 socket has no such option: it answers for IPv4 only.
        let dual_stack = matches!(getsockopt(socket, Ipv6V6Only), Ok(false));
        self.put(socket, record::listen(global, teps, dual_stack))
    }

    /// Whether the program answers this listening socket's SYNs (after
    /// [`listen`](Self::listen) and the socket's `listen`).
    pub fn listening(&self, socket: &impl AsRawFd) -> Listening {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(socket, 0) {
            Ok(r) => record::listening(&r),
            Err(_) => Listening::NotSeen,
        }
    }

    /// What the kernel negotiated for this socket; `Pending` when the
    /// program has not seen it (it has no record, or the program is not
    /// attached to its cgroup).
    pub fn outcome(&self, socket: &impl AsRawFd) -> Outcome {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(socket, 0) {
            Ok(r) => record::outcome(&r),
            Err(_) => Outcome::Pending,
        }
    }
}

/// The resumption identifiers listeners answer to in the SYN-ACK (RFC 8548
/// 3.5 in the SYN): user space gives the program, for each secret its
/// server cache holds, A's identifier half (the key), the listener's socket
/// cookie, the TEP, B's half and nonce, and an expiry; the program answers
/// a SYN naming one with B's resumption suboption and deletes the entry.
/// The entry must leave when the secret leaves the cache: a kernel answer
/// without the secret behind it costs the connection.
pub struct Resumptions {
    map: Mutex<aya::maps::HashMap<MapData, [u8; RESUME_KEY], [u8; RESUME_VAL]>>,
}

/// B's nonce in the SYN-ACK: what its 20 bytes of room leave beside the
/// global suboption, the TEP and the identifier half.
pub const RESUME_NONCE: usize = 7;
const RESUME_KEY: usize = 16;
const RESUME_VAL: usize = 40;

/// One identifier the program may answer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeEntry {
    /// A's identifier half: what its SYN names.
    pub peer_half: [u8; 9],
    /// The listener's socket cookie (`Outcome::Negotiated::listener` of a
    /// connection it accepted): only that listener answers.
    pub listener: u64,
    /// The TEP identifier (v = 0).
    pub tep: u8,
    /// B's identifier half.
    pub own_half: [u8; 9],
    /// B's resumption nonce, drawn from the OS's randomness.
    pub nonce: [u8; RESUME_NONCE],
    /// How long from now the program answers to it.
    pub ttl: std::time::Duration,
}

impl std::fmt::Debug for Resumptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumptions").finish_non_exhaustive()
    }
}

fn resume_key(half: &[u8; 9]) -> [u8; RESUME_KEY] {
    let mut k = [0u8; RESUME_KEY];
    k[..9].copy_from_slice(half);
    k
}

impl Resumptions {
    /// Opens the map `tcpcrypt kernel enable` pinned.
    pub fn open() -> Result<Self, Error> {
        let pin = Path::new(PIN_DIR).join("resume");
        match std::fs::symlink_metadata(&pin) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(crate::missing_pin()),
            Err(e) => {
                return Err(Error::Io {
                    path: pin,
                    source: e,
                });
            }
            Ok(_) => {}
        }
        let data = MapData::from_pin(&pin).map_err(Error::bpf)?;
        let map = Map::from_map_data(data)
            .map_err(Error::bpf)?
            .try_into()
            .map_err(Error::bpf)?;
        Ok(Resumptions {
            map: Mutex::new(map),
        })
    }

    /// Adds (or replaces) an entry.
    pub fn insert(&self, e: &ResumeEntry) -> Result<(), Error> {
        let mut v = [0u8; RESUME_VAL];
        v[..8].copy_from_slice(&e.listener.to_ne_bytes());
        // The program compares with bpf_ktime_get_ns: CLOCK_MONOTONIC.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(|e| {
            Error::Io {
                path: Path::new(PIN_DIR).join("resume"),
                source: e.into(),
            }
        })?;
        let expires =
            u64::try_from((std::time::Duration::from(now) + e.ttl).as_nanos()).unwrap_or(u64::MAX);
        v[8..16].copy_from_slice(&expires.to_ne_bytes());
        v[16] = e.tep;
        v[17..26].copy_from_slice(&e.own_half);
        v[26..26 + RESUME_NONCE].copy_from_slice(&e.nonce);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(resume_key(&e.peer_half), v, 0)
            .map_err(Error::bpf)
    }

    /// Removes the entry for A's half `peer_half`, if any.
    pub fn remove(&self, peer_half: &[u8; 9]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let _ = map.remove(&resume_key(peer_half));
    }

    /// Whether an entry for `peer_half` is there (the program deletes it
    /// when it answers).
    pub fn contains(&self, peer_half: &[u8; 9]) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&resume_key(peer_half), 0).is_ok()
    }
}

//! Per-socket access for the library: the offer a connecting socket makes,
//! the answer template of a listening one, and what the kernel negotiated,
//! through the pinned per-socket map. Any user may do this for the sockets
//! it holds.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{Map, MapData, SkStorage};
use nix::sys::socket::{getsockopt, sockopt::Ipv6V6Only};

use crate::record::{self, LEN, MAX_SYN_OPTION, MAX_TEMPLATE, Outcome};
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotEnabled),
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

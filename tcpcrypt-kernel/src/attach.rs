//! `tcpcrypt kernel enable | disable | status`: loading the program once,
//! pinning it and its maps under `/sys/fs/bpf/tcpcrypt`, and attaching it
//! to cgroup v2 directories (a pinned link per directory, named after the
//! directory's inode).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use aya::programs::SockOps;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};

use crate::{Error, PIN_DIR};

const PROGRAM: &str = "tcpcrypt_eno";
/// Map names in the object, and their pins' modes: every user may read and
/// write the per-socket records (a record is reached only through a socket
/// the caller holds) and the resumption identifiers its servers answer to
/// (`docs/PROTOCOL.md` 3.5 says what another user can and cannot do with
/// them); the rest is the program's own.
const MAPS: [(&str, &str, u32); 5] = [
    ("tcpcrypt_sk", "sk", 0o666),
    ("tcpcrypt_resume", "resume", 0o666),
    ("tcpcrypt_listen", "listen", 0o600),
    ("tcpcrypt_pending", "pending", 0o600),
    ("tcpcrypt_stats", "stats", 0o600),
];
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where a cgroup v2 hierarchy is mounted when none is.
const OWN_CGROUP2: &str = "/run/tcpcrypt/cgroup2";

/// Counters kept by the program (`tcpcrypt kernel status`).
pub const COUNTERS: [&str; 14] = [
    "syn_sent_with_eno",
    "synack_sent_with_eno",
    "active_enabled",
    "active_disabled_no_eno_in_synack",
    "passive_enabled",
    "passive_syn_without_eno",
    "passive_no_common_tep",
    "passive_offer_unsupported",
    "syn_no_option_space",
    "syn_cookie_left_plain",
    "fast_open_left_plain",
    "duplicate_eno_left_plain",
    "simultaneous_open_left_plain",
    "passive_resumed",
];

/// Where the program is attached and what it counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether the program is loaded and pinned.
    pub loaded: bool,
    /// The cgroup directories it is attached to (their inode when the
    /// directory is not found under a mounted cgroup v2 hierarchy).
    pub attached: Vec<String>,
    /// The counters, by name; `None` when they cannot be read (not root).
    pub counters: Option<Vec<(&'static str, u64)>>,
}

fn require_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// The BPF object built with this crate.
fn object() -> Result<&'static [u8], Error> {
    #[cfg(tcpcrypt_bpf_object)]
    {
        Ok(include_bytes!(concat!(env!("OUT_DIR"), "/eno.bpf.o")))
    }
    #[cfg(not(tcpcrypt_bpf_object))]
    {
        Err(Error::BuiltWithoutProgram)
    }
}

fn fs_type(path: &Path) -> Result<i64, Error> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| Error::io(path, e.into()))?;
    Ok(st.filesystem_type().0 as i64)
}

/// Mounts bpffs on /sys/fs/bpf when it is not there: writable by root
/// only, so that no other user can plant anything where the pins go.
fn ensure_bpffs() -> Result<(), Error> {
    let dir = Path::new("/sys/fs/bpf");
    if fs_type(dir)? == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| Error::io(dir, e.into()))
}

/// The pin directory, created if missing, and checked: a directory (not a
/// link) of root's that no one else may write into. Another user could
/// otherwise have made it first (bpffs is often writable by all) and swap
/// the pins root creates and chmods for links to files of root's.
fn pin_dir() -> Result<&'static Path, Error> {
    let dir = Path::new(PIN_DIR);
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not a directory of root's that only root may write: remove it and enable again",
            ),
        ));
    }
    Ok(dir)
}

/// The mount points of cgroup v2 hierarchies, from /proc/self/mountinfo.
fn cgroup2_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// The root of the cgroup v2 hierarchy, mounting one when none is.
pub fn default_cgroup() -> Result<PathBuf, Error> {
    if let Some(dir) = cgroup2_mounts().into_iter().next() {
        return Ok(dir);
    }
    require_root()?;
    let dir = Path::new(OWN_CGROUP2);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    nix::mount::mount(
        Some("none"),
        dir,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::io(dir, e.into()))?;
    Ok(dir.to_path_buf())
}

fn link_pin(cgroup: &Path) -> Result<PathBuf, Error> {
    if fs_type(cgroup)? != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2(cgroup.to_path_buf()));
    }
    let ino = std::fs::metadata(cgroup)
        .map_err(|e| Error::io(cgroup, e))?
        .ino();
    Ok(Path::new(PIN_DIR).join(format!("cgroup-{ino}")))
}

/// Loads and pins the program and its maps, unless they are pinned
/// already; returns the program.
fn pinned_program() -> Result<SockOps, Error> {
    let dir = pin_dir()?;
    let prog_pin = dir.join("prog");
    if prog_pin.exists() {
        return SockOps::from_pin(&prog_pin).map_err(Error::bpf);
    }
    let object = object()?;
    let mut ebpf = aya::Ebpf::load(object).map_err(Error::bpf)?;
    for (name, pin, mode) in MAPS {
        let path = dir.join(pin);
        let _ = std::fs::remove_file(&path);
        ebpf.map_mut(name)
            .ok_or(Error::Bpf(format!("map {name} missing from the object")))?
            .pin(&path)
            .map_err(Error::bpf)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(&path, e))?;
    }
    let program: &mut SockOps = ebpf
        .program_mut(PROGRAM)
        .ok_or(Error::Bpf(format!(
            "program {PROGRAM} missing from the object"
        )))?
        .try_into()
        .map_err(Error::bpf)?;
    program.load().map_err(Error::bpf)?;
    program.pin(&prog_pin).map_err(Error::bpf)?;
    std::fs::set_permissions(&prog_pin, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(&prog_pin, e))?;
    // The pins keep the program and the maps; the object may go.
    drop(ebpf);
    SockOps::from_pin(&prog_pin).map_err(Error::bpf)
}

/// Attaches the program to `cgroup` (default: the root of the cgroup v2
/// hierarchy). Idempotent: `Ok(false)` when it was attached already.
pub fn enable(cgroup: Option<&Path>) -> Result<(PathBuf, bool), Error> {
    require_root()?;
    object()?;
    ensure_bpffs()?;
    let cgroup = match cgroup {
        Some(c) => c.to_path_buf(),
        None => default_cgroup()?,
    };
    prune_removed();
    let mut program = pinned_program()?;
    let link = link_pin(&cgroup)?;
    if PinnedLink::from_pin(&link).is_ok() {
        return Ok((cgroup, false));
    }
    let dir = std::fs::File::open(&cgroup).map_err(|e| Error::io(&cgroup, e))?;
    // A link (no flags: the kernel takes none for cgroup links) lives
    // beside other programs' links on the same cgroup.
    let id = program
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(Error::bpf)?;
    let fd_link: FdLink = program
        .take_link(id)
        .map_err(Error::bpf)?
        .try_into()
        .map_err(Error::bpf)?;
    fd_link.pin(&link).map_err(Error::bpf)?;
    Ok((cgroup, true))
}

/// Detaches the program from `cgroup`; when it is attached nowhere else,
/// unpins it and its maps. `Ok(false)` when it was not attached there.
/// The pins left by cgroups removed while enabled go too: a `cgroup` that
/// no longer exists is disabled when such a pin was left.
pub fn disable(cgroup: Option<&Path>) -> Result<(PathBuf, bool), Error> {
    require_root()?;
    let pruned = prune_removed();
    let cgroup = match cgroup {
        Some(c) => c.to_path_buf(),
        None => match cgroup2_mounts().into_iter().next() {
            Some(c) => c,
            None => {
                unpin_if_unused();
                return Ok((
                    PathBuf::from("(no cgroup v2 hierarchy)"),
                    !pruned.is_empty(),
                ));
            }
        },
    };
    let link = match link_pin(&cgroup) {
        Ok(link) => link,
        Err(Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !pruned.is_empty() =>
        {
            unpin_if_unused();
            return Ok((cgroup, true));
        }
        Err(e) => return Err(e),
    };
    let was = link.exists();
    if was {
        let pinned = PinnedLink::from_pin(&link).map_err(Error::bpf)?;
        // Unpinned and dropped: the last reference, so the link goes.
        drop(pinned.unpin().map_err(|e| Error::io(&link, e))?);
    }
    unpin_if_unused();
    Ok((cgroup, was))
}

/// The inodes of the cgroups with a pinned link.
fn attachments() -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(PIN_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("cgroup-")?
                .parse()
                .ok()
        })
        .collect()
}

/// Where a cgroup with a pinned link is.
#[derive(Debug, PartialEq, Eq)]
enum Whereabouts {
    At(PathBuf),
    /// Searched for everywhere and not found: the cgroup was removed (the
    /// kernel detached the program with it; only the pin is left).
    Removed,
    /// Not found within the search's bound.
    Unknown,
}

/// Finds the directory with inode `ino` under the cgroup v2 mounts
/// (breadth first, bounded).
fn cgroup_path(ino: u64) -> Whereabouts {
    let mounts = cgroup2_mounts();
    if mounts.is_empty() {
        return Whereabouts::Unknown;
    }
    let mut queue: std::collections::VecDeque<PathBuf> = mounts.into();
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > 20_000 {
            return Whereabouts::Unknown;
        }
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == ino) {
            return Whereabouts::At(dir);
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            queue.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Whereabouts::Removed
}

/// Unpins the links of cgroups that were removed since they were enabled
/// (nothing runs there any more); their inodes.
fn prune_removed() -> Vec<u64> {
    attachments()
        .into_iter()
        .filter(|&ino| cgroup_path(ino) == Whereabouts::Removed)
        .filter(|ino| {
            std::fs::remove_file(Path::new(PIN_DIR).join(format!("cgroup-{ino}"))).is_ok()
        })
        .collect()
}

/// Unpins the program and its maps when no cgroup has it any more.
fn unpin_if_unused() {
    if attachments().is_empty() {
        let dir = Path::new(PIN_DIR);
        let pins = MAPS.iter().map(|(_, pin, _)| *pin);
        for pin in std::iter::once("prog").chain(pins) {
            let _ = std::fs::remove_file(dir.join(pin));
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// Where the program is attached, and its counters when readable.
pub fn status() -> Status {
    let dir = Path::new(PIN_DIR);
    let loaded = dir.join("prog").exists();
    let attached = attachments()
        .into_iter()
        .map(|ino| match cgroup_path(ino) {
            Whereabouts::At(p) => p.display().to_string(),
            Whereabouts::Removed => format!(
                "cgroup inode {ino}, removed (nothing runs there; `tcpcrypt kernel disable` clears it)"
            ),
            Whereabouts::Unknown => format!("cgroup inode {ino}"),
        })
        .collect();
    let counters = loaded
        .then(|| read_counters(&dir.join("stats")).ok())
        .flatten();
    Status {
        loaded,
        attached,
        counters,
    }
}

fn read_counters(pin: &Path) -> Result<Vec<(&'static str, u64)>, Error> {
    let map =
        Map::from_map_data(MapData::from_pin(pin).map_err(Error::bpf)?).map_err(Error::bpf)?;
    let array: Array<MapData, u64> = map.try_into().map_err(Error::bpf)?;
    COUNTERS
        .iter()
        .enumerate()
        .map(|(i, name)| Ok((*name, array.get(&(i as u32), 0).map_err(Error::bpf)?)))
        .collect()
}

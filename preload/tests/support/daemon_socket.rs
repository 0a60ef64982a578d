//! Where the relay daemon of a runtime directory listens, for the tests and
//! the benchmark that talk to it directly.

use std::path::{Path, PathBuf};

/// The socket of the daemon of `dir` in this network namespace:
/// `daemon.vVERSION.NETNS.sock`, whatever the wire version (a path that
/// does not exist when no daemon has made one).
pub fn daemon_socket(dir: &Path) -> PathBuf {
    let ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let ns = ns.to_str().unwrap();
    let id = &ns["net:[".len()..ns.len() - 1];
    let suffix = format!(".{id}.sock");
    std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("daemon.v") && n.ends_with(&suffix))
        })
        .unwrap_or_else(|| dir.join(format!("daemon.v0{suffix}")))
}

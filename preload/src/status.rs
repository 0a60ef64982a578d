//! The list of live relayed connections, for `tcpcrypt status`: one small
//! file per connection in a per-user runtime directory, written when the
//! negotiation ends and removed when the connection does. Entries of
//! processes that died without cleaning up are recognised by their pid.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::registry::SessionState;

/// `$TCPCRYPT_STATUS_DIR`, else `$XDG_RUNTIME_DIR/tcpcrypt`, else
/// `/tmp/tcpcrypt-<uid>`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TCPCRYPT_STATUS_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("tcpcrypt");
    }
    PathBuf::from(format!("/tmp/tcpcrypt-{}", unsafe_free_uid()))
}

fn unsafe_free_uid() -> u32 {
    // The owner of /proc/self is this process's user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

fn program() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A connection's entry; the file goes away when this is dropped.
///
/// Files are written and removed by one background thread per process:
/// file system calls (tens to hundreds of microseconds on a disk-backed
/// `/tmp`) would otherwise sit between the negotiation and the
/// application's first byte. Connections shorter than `LISTING_DELAY` are
/// never written.
pub struct Record {
    path: Option<PathBuf>,
}

/// How long a connection lives before it is listed. Most connections are
/// short; one that ends sooner costs no file system call and no wakeup of
/// the status thread, and a listing is a few milliseconds late at most.
const LISTING_DELAY: Duration = Duration::from_millis(50);

/// Entries to write and files to remove, shared by the relay and the
/// status thread.
#[derive(Default)]
struct Queue {
    /// Entries to write, oldest first, each with the time it is due.
    waiting: VecDeque<(Instant, PathBuf, String)>,
    /// Written entries whose connections have ended.
    removals: Vec<PathBuf>,
    /// The status thread waits with nothing to do: work must wake it.
    idle: bool,
}

impl Queue {
    /// Queues an entry; `true` if the status thread must be woken.
    fn write(&mut self, path: PathBuf, connection: String, now: Instant) -> bool {
        self.waiting
            .push_back((now + LISTING_DELAY, path, connection));
        self.idle
    }

    /// Forgets an entry not written yet, or queues its removal; `true` if
    /// the status thread must be woken.
    fn remove(&mut self, path: PathBuf) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|(_, p, _)| *p != path);
        if self.waiting.len() < before {
            return false;
        }
        self.removals.push(path);
        self.idle
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|(due, _, _)| *due)
    }

    /// The file system work to do now: removals, then entries due.
    fn take(&mut self, now: Instant) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
        let mut due = Vec::new();
        while self.next_due().is_some_and(|t| t <= now) {
            if let Some((_, path, connection)) = self.waiting.pop_front() {
                due.push((path, connection));
            }
        }
        (std::mem::take(&mut self.removals), due)
    }
}

/// The queue of the process that made it, with that process's pid.
type Current = Option<(u32, Arc<(Mutex<Queue>, Condvar)>)>;
static CURRENT: Mutex<Current> = Mutex::new(None);

/// Holds the queue's lock across a `fork` (`crate::fork`).
pub(crate) fn hold_for_fork() -> std::sync::MutexGuard<'static, impl Sized> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queue of this process and its status thread's wakeup, or `None` if
/// the thread could not start (the listing is best effort). After `fork`
/// the child starts its own.
fn queue() -> Option<Arc<(Mutex<Queue>, Condvar)>> {
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, q)) = &*current
        && *owner == pid
    {
        return Some(q.clone());
    }
    let q: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
    let shared = q.clone();
    std::thread::Builder::new()
        .name("tcpcrypt-status".into())
        .spawn(move || {
            crate::ffi::bypass_hooks_on_this_thread();
            run_status_thread(&shared, &dir());
        })
        .ok()?;
    *current = Some((pid, q.clone()));
    Some(q)
}

/// Writes and removes the files as they come due, for the process's life.
fn run_status_thread(q: &(Mutex<Queue>, Condvar), dir: &Path) {
    let (lock, wake) = q;
    let mut dir_ready = false;
    let mut queue = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (removals, due) = queue.take(Instant::now());
        if removals.is_empty() && due.is_empty() {
            queue = match queue.next_due() {
                Some(t) => {
                    let wait = t.saturating_duration_since(Instant::now());
                    wake.wait_timeout(queue, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => {
                    queue.idle = true;
                    let mut q = wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                    q.idle = false;
                    q
                }
            };
            continue;
        }
        drop(queue);
        for path in removals {
            let _ = std::fs::remove_file(path);
        }
        for (path, connection) in due {
            dir_ready = dir_ready || make_dir(dir);
            write_entry(&path, &connection);
        }
        queue = lock.lock().unwrap_or_else(|p| p.into_inner());
    }
}

/// Writes one entry file, atomically (a reader never sees half of it).
fn write_entry(path: &Path, connection: &str) {
    let line = format!(
        "{{\"pid\":{},\"program\":{},{connection}}}\n",
        std::process::id(),
        json_str(&program())
    );
    let tmp = path.with_extension("tmp");
    let _ = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
}

fn lock(q: &(Mutex<Queue>, Condvar)) -> std::sync::MutexGuard<'_, Queue> {
    q.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the status directory, private to the user.
fn make_dir(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    true
}

impl Record {
    /// Asks for the entry to be written (best effort: a read-only or full
    /// disk only loses the listing, never the connection).
    pub fn write(local: SocketAddr, peer: SocketAddr, state: &SessionState) -> Record {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let Some(q) = queue() else {
            return Record { path: None };
        };
        let pid = std::process::id();
        let path = dir().join(format!(
            "{pid}.{}.json",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let (encrypted, role, tep, aead, session_id) = match state {
            SessionState::Encrypted(i) => (
                true,
                json_str(&i.role.to_string()),
                format!("{}", i.tep_byte),
                json_str(i.aead.name()),
                json_str(&i.session_id.to_string()),
            ),
            _ => (
                false,
                "null".into(),
                "null".into(),
                "null".into(),
                "null".into(),
            ),
        };
        let connection = format!(
            "\"local\":{},\"peer\":{},\"encrypted\":{encrypted},\"role\":{role},\"tep\":{tep},\"aead\":{aead},\"session_id\":{session_id}",
            json_str(&local.to_string()),
            json_str(&peer.to_string()),
        );
        let wake = lock(&q).write(path.clone(), connection, Instant::now());
        if wake {
            q.1.notify_one();
        }
        Record { path: Some(path) }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Some(q) = queue()
            && lock(&q).remove(path)
        {
            q.1.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_wait_their_delay_and_short_connections_are_never_written() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        assert!(
            !q.write("a".into(), "1".into(), t0),
            "a busy thread is not woken"
        );
        q.write("b".into(), "2".into(), t0 + LISTING_DELAY / 2);
        // `a` ends before it is due: forgotten, with nothing to do.
        assert!(!q.remove("a".into()));
        let (removals, due) = q.take(t0 + LISTING_DELAY);
        assert!(removals.is_empty() && due.is_empty(), "b is not due yet");
        assert_eq!(q.next_due(), Some(t0 + LISTING_DELAY / 2 + LISTING_DELAY));
        let (_, due) = q.take(t0 + LISTING_DELAY * 2);
        assert_eq!(due, [(PathBuf::from("b"), "2".to_string())]);
        // `b` was written: its removal is queued, and wakes an idle thread.
        q.idle = true;
        assert!(q.remove("b".into()));
        let (removals, due) = q.take(t0 + LISTING_DELAY * 2);
        assert_eq!(removals, [PathBuf::from("b")]);
        assert!(due.is_empty() && q.next_due().is_none());
        assert!(
            q.write("c".into(), "3".into(), t0),
            "an idle thread is woken"
        );
    }

    #[test]
    fn an_entry_file_is_one_json_line() {
        let dir = std::env::temp_dir().join(format!("tcpcrypt-entry-{}", std::process::id()));
        assert!(make_dir(&dir));
        let path = dir.join("1.json");
        write_entry(&path, "\"local\":\"127.0.0.1:1\"");
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["local"], "127.0.0.1:1");
        assert!(text.ends_with("}\n") && text.lines().count() == 1);
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

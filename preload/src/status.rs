//! The list of live relayed connections, for `tcpcrypt status`: one small
//! file per connection in a per-user runtime directory, written when the
//! negotiation ends and removed when the connection does. Entries of
//! processes that died without cleaning up are recognised by their pid.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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
pub struct Record {
    path: Option<PathBuf>,
}

impl Record {
    /// Writes the entry (best effort: a read-only or full disk only loses
    /// the listing, never the connection).
    pub fn write(local: SocketAddr, peer: SocketAddr, state: &SessionState) -> Record {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return Record { path: None };
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let pid = std::process::id();
        let path = dir.join(format!(
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
        let line = format!(
            "{{\"pid\":{pid},\"program\":{},\"local\":{},\"peer\":{},\"encrypted\":{encrypted},\"role\":{role},\"tep\":{tep},\"aead\":{aead},\"session_id\":{session_id}}}\n",
            json_str(&program()),
            json_str(&local.to_string()),
            json_str(&peer.to_string()),
        );
        let tmp = path.with_extension("tmp");
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_ok();
        Record {
            path: ok.then_some(path),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

//! The shim's log: one line per event, to `TCPCRYPT_LOG_FILE` (a path, or
//! `stderr`) at or above `TCPCRYPT_LOG` (`error`, `warn` (default), `info`,
//! `debug`, `trace`). Without `TCPCRYPT_LOG_FILE` nothing is written: the
//! program's own output stays as it was. A few lines of its own instead
//! of a logging framework keep the library small and quick to load.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

struct Sink {
    max: Level,
    out: Mutex<Out>,
}

/// Where lines go.
enum Out {
    Stderr,
    File(LogFile),
}

/// The log file, opened when the library loads (so that it outlives a
/// `chroot` or a change of user). The program owns its descriptor
/// numbers: it may close this one (`closerange`) and reuse the number for
/// a file or socket of its own, which must never receive the shim's
/// lines. So before each line the descriptor is checked to be the file
/// opened (its device and inode); when it is not, the number is the
/// program's (left alone, never closed) and the file is opened again.
struct LogFile {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    identity: (u64, u64),
}

impl LogFile {
    fn open(path: std::path::PathBuf) -> Option<LogFile> {
        let mut log = LogFile {
            path,
            file: None,
            identity: (0, 0),
        };
        log.reopen().then_some(log)
    }

    fn reopen(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(mut file) = crate::log_file::open(&self.path) else {
            return false;
        };
        // Never on a standard stream's number: a program started with one
        // closed (or daemonizing) opens its own there next.
        if std::os::fd::AsRawFd::as_raw_fd(&file) <= 2 {
            // A copy at 3 or above; the low number is free again.
            match file.try_clone() {
                Ok(high) => file = high,
                Err(_) => return false,
            }
        }
        let Ok(meta) = file.metadata() else {
            return false;
        };
        self.identity = (meta.dev(), meta.ino());
        self.file = Some(file);
        true
    }

    fn write(&mut self, line: &[u8]) {
        use std::os::unix::fs::MetadataExt;
        let ours = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| (m.dev(), m.ino()) == self.identity);
        if !ours {
            // Closed behind our back, its number maybe the program's now:
            // dropping it would close the program's descriptor.
            std::mem::forget(self.file.take());
            if !self.reopen() {
                return;
            }
        }
        if let Some(mut f) = self.file.as_ref() {
            let _ = f.write_all(line);
        }
    }
}

fn sink() -> Option<&'static Sink> {
    static SINK: OnceLock<Option<Sink>> = OnceLock::new();
    SINK.get_or_init(|| {
        let dest = std::env::var("TCPCRYPT_LOG_FILE").ok()?;
        let max = match std::env::var("TCPCRYPT_LOG")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "error" => Level::Error,
            "info" => Level::Info,
            "debug" | "trace" => Level::Debug,
            _ => Level::Warn,
        };
        let out = if dest == "stderr" {
            Out::Stderr
        } else {
            // Absolute, so that a program that changes directory keeps
            // its log (should it have to open it again).
            Out::File(LogFile::open(std::path::absolute(&dest).ok()?)?)
        };
        Some(Sink {
            max,
            out: Mutex::new(out),
        })
    })
    .as_ref()
}

/// Makes the sink, so that a `fork` cannot catch it half made.
pub(crate) fn init() {
    sink();
}

pub(crate) fn write(level: Level, args: std::fmt::Arguments) {
    let Some(sink) = sink() else {
        return;
    };
    if level > sink.max {
        return;
    }
    let line = format!(
        "tcpcrypt[{}] {}: {args}\n",
        std::process::id(),
        format!("{level:?}").to_ascii_lowercase()
    );
    // try_lock: a hook in a signal handler must not wait for its own thread.
    if let Ok(mut out) = sink.out.try_lock() {
        match &mut *out {
            Out::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Out::File(file) => file.write(line.as_bytes()),
        }
    }
}

macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, format_args!($($arg)*))
    };
}
pub(crate) use log;

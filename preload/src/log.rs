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

/// Where lines go. A file is opened for each line, not kept open: the
/// program owns its descriptor numbers, and one it closes (`closerange`)
/// and reuses for a file or socket of its own must never receive the
/// shim's lines.
enum Out {
    Stderr,
    File(std::path::PathBuf),
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
            // its log; and usable now, or never tried again.
            let path = std::path::absolute(&dest).ok()?;
            crate::log_file::open(&path).ok()?;
            Out::File(path)
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
    if let Ok(out) = sink.out.try_lock() {
        let _ = match &*out {
            Out::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Out::File(path) => {
                crate::log_file::open(path).and_then(|mut f| f.write_all(line.as_bytes()))
            }
        };
    }
}

macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, format_args!($($arg)*))
    };
}
pub(crate) use log;

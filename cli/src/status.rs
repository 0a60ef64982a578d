//! `tcpcrypt status`: lists the live connections of programs run with the
//! shim, as the relay daemon that carries them reports them.

use std::io::Write;

use crate::daemon;
use crate::wire::{self, Reply, Request};

#[derive(clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// A field of one of the daemon's JSON records, as text ("" if absent).
fn field(record: &serde_json::Value, name: &str) -> String {
    match &record[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The daemon's records of its live connections (none when no daemon runs).
pub fn records() -> Result<Vec<serde_json::Value>, String> {
    let dir = match wire::existing_runtime_dir() {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    match records_in(&dir) {
        Ok(r) => Ok(r),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) if daemon::stopped(&e).is_some() => Err(e.to_string()),
        Err(e) => Err(format!(
            "the daemon in {} does not answer: {e}",
            dir.display()
        )),
    }
}

/// Every record the daemon in `dir` holds, asked page by page: a reply
/// holds what fits in one message, and says how many there are in all.
pub fn records_in(dir: &std::path::Path) -> std::io::Result<Vec<serde_json::Value>> {
    let mut records = Vec::new();
    let mut from = 0u32;
    // Bounded: every page but the last brings at least one record.
    for _ in 0..1_000_000 {
        match daemon::ask(dir, &Request::Status { from })? {
            Reply::Status { text, total } => {
                let lines: Vec<&str> = text.lines().collect();
                records.extend(lines.iter().filter_map(|l| serde_json::from_str(l).ok()));
                from = from.saturating_add(u32::try_from(lines.len()).unwrap_or(u32::MAX));
                if lines.is_empty() || from >= total {
                    break;
                }
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "unexpected answer from the daemon: {other:?}"
                )));
            }
        }
    }
    Ok(records)
}

pub fn status(args: Args) -> i32 {
    let mut records = match records() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcpcrypt status: {e}");
            return 1;
        }
    };
    records.sort_by_key(|r| (field(r, "pid"), field(r, "peer")));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print(&mut out, records, args.json).and_then(|()| out.flush()) {
        Ok(()) => 0,
        // A reader that has seen enough (`tcpcrypt status | head`).
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("tcpcrypt status: {e}");
            1
        }
    }
}

/// Writes the table, or the JSON array.
fn print(
    out: &mut impl std::io::Write,
    records: Vec<serde_json::Value>,
    json: bool,
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::Value::Array(records));
    }
    if records.is_empty() {
        return writeln!(out, "no live connections");
    }
    writeln!(
        out,
        "{:<8} {:<16} {:<22} {:<4} {:<5} {:<24} {:<17} SESSION ID",
        "PID", "PROGRAM", "PEER", "ROLE", "TEP", "AEAD", "CARRIAGE"
    )?;
    for r in &records {
        writeln!(out, "{}", row(r))?;
    }
    Ok(())
}

/// One connection's line of the table.
fn row(r: &serde_json::Value) -> String {
    let encrypted = r["encrypted"] == true;
    let tep = r["tep"]
        .as_u64()
        .map(|t| format!("0x{t:02x}"))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<8} {:<16} {:<22} {:<4} {:<5} {:<24} {:<17} {}",
        field(r, "pid"),
        field(r, "program"),
        field(r, "peer"),
        if encrypted {
            field(r, "role")
        } else {
            "-".into()
        },
        if encrypted { tep } else { "-".into() },
        if encrypted {
            field(r, "aead")
        } else {
            "plain".into()
        },
        if encrypted && r["resumed"] == true {
            format!("{} (resumed)", field(r, "carriage"))
        } else if encrypted {
            field(r, "carriage")
        } else {
            "-".into()
        },
        if encrypted {
            field(r, "session_id")
        } else {
            "-".into()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_session_shows_its_tep_and_that_it_resumed() {
        let r = serde_json::json!({
            "pid": 7, "program": "curl", "peer": "10.0.0.1:80", "role": "A",
            "encrypted": true, "resumed": true, "carriage": "in-band",
            "tep": 0x23, "aead": "AES-128-GCM", "session_id": "a3ff",
        });
        let line = row(&r);
        assert!(line.contains(" 0x23 "), "{line}");
        assert!(line.contains("in-band (resumed)"), "{line}");
    }
}

//! `tcpcrypt status`: lists live connections of programs run with the shim,
//! from the files the shim keeps in its status directory.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where the shim writes (same rule as the shim).
fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TCPCRYPT_STATUS_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("tcpcrypt");
    }
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    PathBuf::from(format!("/tmp/tcpcrypt-{uid}"))
}

/// A field of one of the shim's JSON records, as text ("" if absent).
fn field(record: &serde_json::Value, name: &str) -> String {
    match &record[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn status(args: Args) -> i32 {
    let dir = dir();
    let mut records = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Some(record) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            else {
                continue;
            };
            let pid = field(&record, "pid");
            // A process that died without cleaning up leaves stale entries.
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            records.push(record);
        }
    }
    records.sort_by_key(|r| (field(r, "pid"), field(r, "peer")));
    if args.json {
        println!("{}", serde_json::Value::Array(records));
        return 0;
    }
    if records.is_empty() {
        println!("no live connections (status directory {})", dir.display());
        return 0;
    }
    println!(
        "{:<8} {:<16} {:<22} {:<4} {:<5} {:<24} SESSION ID",
        "PID", "PROGRAM", "PEER", "ROLE", "TEP", "AEAD"
    );
    for r in &records {
        let encrypted = r["encrypted"] == true;
        let tep = r["tep"]
            .as_u64()
            .map(|t| format!("0x{t:02x}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:<16} {:<22} {:<4} {:<5} {:<24} {}",
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
            if encrypted {
                field(r, "session_id")
            } else {
                "-".into()
            }
        );
    }
    0
}

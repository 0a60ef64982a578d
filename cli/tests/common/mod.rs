//! What the command's test files share (each uses part of it).
#![allow(dead_code)]

use std::io::BufRead;
use std::process::Command;

use serde_json::Value;

/// The `tcpcrypt` executable under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tcpcrypt");

/// libtcpcrypt.so must sit beside the binary, as a workspace build puts it.
pub fn build_shim() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let release = BIN.contains("/release/");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "tcpcrypt-preload", "--lib"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success());
    });
}

/// Reads stderr lines until one parses as a JSON object.
pub fn next_json(lines: &mut impl BufRead) -> Value {
    for _ in 0..50 {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Ok(v @ Value::Object(_)) = serde_json::from_str(&line) {
            return v;
        }
    }
    panic!("no JSON line on stderr");
}

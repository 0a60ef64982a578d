//! Conformance harness: reads a JSON array of vectors on stdin and writes
//! them with every computed value added (format in docs/PROTOCOL.md,
//! "Conformance harness").
//!
//! ```text
//! cargo run --release -p tcpcrypt-proto --features dangerous --example conformance < in.json > out.json
//! ```
//!
//! `TCPCRYPT_BACKEND=rustcrypto` selects the pure-Rust backend when it is
//! compiled in (`--features rustcrypto`).

mod vectors;

use std::io::Read;
use std::process::ExitCode;

use tcpcrypt_proto::crypto;

fn main() -> ExitCode {
    let backend = match std::env::var("TCPCRYPT_BACKEND").as_deref() {
        Err(_) => crypto::default_backend(),
        Ok(name) => match crypto::all_backends()
            .into_iter()
            .find(|b| b.name() == name)
        {
            Some(b) => b,
            None => {
                eprintln!("conformance: backend `{name}` is not compiled in");
                return ExitCode::from(2);
            }
        },
    };
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("conformance: reading stdin: {e}");
        return ExitCode::from(2);
    }
    let vectors: Vec<serde_json::Value> = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("conformance: input is not a JSON array: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = Vec::with_capacity(vectors.len());
    for (i, v) in vectors.iter().enumerate() {
        match vectors::compute(backend, v) {
            Ok(o) => out.push(o),
            Err(e) => {
                let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                eprintln!("conformance: vector {i} ({name}): {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match serde_json::to_string_pretty(&out) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conformance: {e}");
            ExitCode::FAILURE
        }
    }
}

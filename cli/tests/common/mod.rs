//! What the command's test files share.

use std::process::Command;

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

//! Compiles `bpf/eno.bpf.c` with clang into `$OUT_DIR/eno.bpf.o`, when clang
//! and the libbpf headers are there. Without them the crate still builds,
//! and says at run time that it was built without its BPF program
//! (`cfg(tcpcrypt_bpf_object)` tells which).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tcpcrypt_bpf_object)");
    println!("cargo::rerun-if-changed=bpf/eno.bpf.c");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("eno.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The multiarch directory holds asm/types.h, which linux/bpf.h needs.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg("bpf/eno.bpf.c")
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo::rustc-cfg=tcpcrypt_bpf_object"),
        Ok(s) => println!(
            "cargo::warning=clang failed ({s}): tcpcrypt-kernel is built without its BPF program"
        ),
        Err(e) => println!(
            "cargo::warning={clang} not found ({e}): tcpcrypt-kernel is built without its BPF program (install clang and libbpf-dev)"
        ),
    }
}

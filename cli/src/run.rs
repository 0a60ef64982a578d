//! `tcpcrypt run`: runs a program with libtcpcrypt.so preloaded.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Never fall back to plain TCP: fail instead.
    #[arg(long, conflicts_with = "off")]
    mandatory: bool,
    /// Do not negotiate at all (the shim stays loaded but idle).
    #[arg(long)]
    off: bool,
    /// Leave these destinations or listening ports alone: ADDR, ADDR/PREFIX
    /// or :PORT. Repeatable.
    #[arg(long, value_name = "RULE")]
    exclude: Vec<String>,
    /// Handle only these destinations or listening ports (same syntax;
    /// --exclude still applies). Repeatable.
    #[arg(long, value_name = "RULE")]
    include: Vec<String>,
    /// Start your shell ($SHELL, or /bin/sh) with everything run from it
    /// preloaded; TCPCRYPT_SHELL=1 is set inside, for a prompt to show it.
    #[arg(long, conflicts_with = "command")]
    shell: bool,
    /// The program and its arguments.
    #[arg(
        required_unless_present = "shell",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

/// Finds `name` on PATH, as the shell would.
fn resolve(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Why the shim cannot reach into `path`, if it cannot.
fn cannot_interpose(path: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o6000 != 0 {
        return Some("it is setuid or setgid, and the dynamic linker ignores LD_PRELOAD for it");
    }
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(..4) != Some(b"\x7fELF") {
        return None; // a script: its interpreter is what runs
    }
    if !has_interpreter(&bytes) {
        return Some("it is statically linked");
    }
    if bytes.windows(14).any(|w| w == b"\xff Go buildinf:")
        || bytes.windows(11).any(|w| w == b"Go build ID")
    {
        return Some("it is a Go program, which makes system calls without libc");
    }
    None
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header
/// (a dynamic linker).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return true; // not 64-bit little-endian: do not guess
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum as usize).any(|i| u32_at(phoff as usize + i * phentsize as usize) == Some(3))
}

pub fn run(mut args: Args) -> i32 {
    let lib = match crate::shim::find() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcpcrypt: {e}");
            return 2;
        }
    };
    if args.shell {
        let shell = std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".into());
        eprintln!(
            "tcpcrypt: starting {shell} with libtcpcrypt.so preloaded; programs run from it are encrypted when their peers speak tcpcrypt (exit the shell to leave)"
        );
        args.command = vec![shell];
    }
    let program = &args.command[0];
    match resolve(program) {
        None => {
            eprintln!("tcpcrypt: {program}: command not found");
            return 127;
        }
        Some(path) => {
            if let Some(why) = cannot_interpose(&path) {
                eprintln!(
                    "tcpcrypt: warning: {program} cannot be encrypted by the shim: {why}; its connections stay plain"
                );
            }
        }
    }
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{existing} {}", lib.display()),
        _ => lib.display().to_string(),
    };
    let policy = if args.mandatory {
        "mandatory"
    } else if args.off {
        "off"
    } else {
        "opportunistic"
    };
    let mut cmd = Command::new(program);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", preload)
        .env("TCPCRYPT_POLICY", policy);
    if args.shell {
        cmd.env("TCPCRYPT_SHELL", "1");
    }
    if !args.exclude.is_empty() {
        cmd.env("TCPCRYPT_EXCLUDE", args.exclude.join(","));
    }
    if !args.include.is_empty() {
        cmd.env("TCPCRYPT_INCLUDE", args.include.join(","));
    }
    match cmd.status() {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("tcpcrypt: {program}: {e}");
            126
        }
    }
}

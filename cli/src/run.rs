//! `tcpcrypt run`: runs a program with libtcpcrypt.so preloaded.

use std::io::{Read, Seek, SeekFrom};
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
    #[arg(long, value_name = "RULE", value_parser = rules)]
    exclude: Vec<String>,
    /// Handle only these destinations or listening ports (same syntax;
    /// --exclude still applies). Repeatable.
    #[arg(long, value_name = "RULE", value_parser = rules)]
    include: Vec<String>,
    /// How ENO travels (TCPCRYPT_CARRIAGE): auto (in the SYN where
    /// `tcpcrypt kernel enable` attached its program, else the in-band
    /// hello), kernel (the SYN only), in-band.
    #[arg(long, value_enum)]
    carriage: Option<crate::options::CarriageArg>,
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

/// An `--include` or `--exclude` value (rules, comma-separated), checked
/// as the shim reads it: a rule it would not understand is refused here,
/// never ignored by a program already running.
fn rules(value: &str) -> Result<String, String> {
    match value
        .split(',')
        .find(|r| crate::rule::Rule::parse(r).is_none())
    {
        Some(bad) => Err(format!(
            "`{bad}` is not a rule: ADDR, ADDR/PREFIX or :PORT (e.g. 10.0.0.0/8, 192.0.2.7, ::1, :22)"
        )),
        None => Ok(value.to_string()),
    }
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

/// Why the shim cannot reach into `path`, if it cannot. Reads only the
/// ELF header, the program headers and the section names (a few KiB, not
/// the whole executable).
fn cannot_interpose(path: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o6000 != 0 {
        return Some("it is setuid or setgid, and the dynamic linker ignores LD_PRELOAD for it");
    }
    let mut file = std::fs::File::open(path).ok()?;
    let elf = Elf::read(&mut file)?;
    if !elf.has_interpreter(&mut file)? {
        return Some("it is statically linked");
    }
    if elf.is_go(&mut file)? {
        return Some("it is a Go program, which makes system calls without libc");
    }
    None
}

/// The parts of a 64-bit little-endian ELF header that say how a program
/// is linked.
struct Elf {
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

/// The most bytes read from any one table or string section.
const MAX_TABLE: u64 = 1 << 20;

fn read_at(file: &mut std::fs::File, offset: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_TABLE {
        return None;
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

impl Elf {
    /// `None` for a script (its interpreter is what runs) or an ELF file
    /// of another class or byte order (no guess is made).
    fn read(file: &mut std::fs::File) -> Option<Elf> {
        let h = read_at(file, 0, 64)?;
        if h.get(..4) != Some(b"\x7fELF") || h[4] != 2 || h[5] != 1 {
            return None;
        }
        Some(Elf {
            phoff: u64_at(&h, 0x20)?,
            shoff: u64_at(&h, 0x28)?,
            phentsize: u16_at(&h, 0x36)?,
            phnum: u16_at(&h, 0x38)?,
            shentsize: u16_at(&h, 0x3a)?,
            shnum: u16_at(&h, 0x3c)?,
            shstrndx: u16_at(&h, 0x3e)?,
        })
    }

    /// Whether a program header names a dynamic linker (`PT_INTERP`).
    fn has_interpreter(&self, file: &mut std::fs::File) -> Option<bool> {
        let size = u64::from(self.phentsize);
        let table = read_at(file, self.phoff, size * u64::from(self.phnum))?;
        Some((0..self.phnum as usize).any(|i| u32_at(&table, i * size as usize) == Some(3)))
    }

    /// Whether a section is Go's build information.
    fn is_go(&self, file: &mut std::fs::File) -> Option<bool> {
        if self.shnum == 0 || self.shstrndx >= self.shnum {
            return Some(false);
        }
        let size = u64::from(self.shentsize);
        let table = read_at(file, self.shoff, size * u64::from(self.shnum))?;
        let names_hdr = self.shstrndx as usize * size as usize;
        let names = read_at(
            file,
            u64_at(&table, names_hdr + 0x18)?,
            u64_at(&table, names_hdr + 0x20)?,
        )?;
        Some((0..self.shnum as usize).any(|i| {
            let Some(at) = u32_at(&table, i * size as usize) else {
                return false;
            };
            let name = names.get(at as usize..).unwrap_or_default();
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            name == b".go.buildinfo" || name == b".note.go.buildid"
        }))
    }
}

/// The signals passed on to the program, as a shell passes them on to a
/// foreground job it waits for.
const FORWARDED: [i32; 6] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
];

/// Passes the signals sent to this process on to the child `pid`, from a
/// thread of its own. A signal the terminal sent (Ctrl-C) reached the
/// whole foreground process group, the child included, and is not sent
/// twice.
fn forward_signals(pid: u32) -> std::io::Result<()> {
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::iterator::exfiltrator::WithOrigin;
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED)?;
    std::thread::spawn(move || {
        for info in signals.forever() {
            if info.process.is_none() {
                continue; // from the kernel (the terminal): the child has it
            }
            if let Ok(sig) = nix::sys::signal::Signal::try_from(info.signal) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
            }
        }
    });
    Ok(())
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
    let mut cmd = Command::new(program);
    cmd.args(&args.command[1..]).env("LD_PRELOAD", preload);
    // A flag sets the policy; without one, a TCPCRYPT_POLICY of the
    // environment stands (never turned from mandatory to opportunistic).
    if args.mandatory {
        cmd.env("TCPCRYPT_POLICY", "mandatory");
    } else if args.off {
        cmd.env("TCPCRYPT_POLICY", "off");
    }
    if args.shell {
        cmd.env("TCPCRYPT_SHELL", "1");
    }
    if !args.exclude.is_empty() {
        cmd.env("TCPCRYPT_EXCLUDE", args.exclude.join(","));
    }
    if !args.include.is_empty() {
        cmd.env("TCPCRYPT_INCLUDE", args.include.join(","));
    }
    if let Some(carriage) = args.carriage {
        use crate::options::CarriageArg;
        let value = match carriage {
            CarriageArg::Auto => "auto",
            CarriageArg::Kernel => "kernel",
            CarriageArg::InBand => "in-band",
        };
        cmd.env("TCPCRYPT_CARRIAGE", value);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tcpcrypt: {program}: {e}");
            // As a shell says it: not found, or found and not startable.
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    if let Err(e) = forward_signals(child.id()) {
        eprintln!("tcpcrypt: warning: signals to tcpcrypt will not reach {program}: {e}");
    }
    match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("tcpcrypt: {program}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal 64-bit little-endian ELF file: one program header
    /// (`PT_INTERP` or `PT_LOAD`), sections named `section`, then `pad`
    /// bytes of nothing.
    fn elf(interp: bool, section: &str, pad: usize) -> PathBuf {
        let names = format!("\0.shstrtab\0{section}\0");
        let (phoff, shoff) = (64u64, 64u64 + 56);
        let names_at = shoff + 3 * 64;
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&(if interp { 3u32 } else { 1 }).to_le_bytes());
        f.extend(ph);
        for (name, offset, size) in [
            (0u32, 0u64, 0u64),
            (1, names_at, names.len() as u64),
            (11, 0, 0),
        ] {
            let mut sh = vec![0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&offset.to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            f.extend(sh);
        }
        f.extend(names.as_bytes());
        f.resize(f.len() + pad, 0);
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tcpcrypt-elf-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::File::create(&path).unwrap().write_all(&f).unwrap();
        path
    }

    fn verdict(interp: bool, section: &str) -> Option<&'static str> {
        let path = elf(interp, section, 0);
        let v = cannot_interpose(&path);
        std::fs::remove_file(path).unwrap();
        v
    }

    #[test]
    fn static_and_go_programs_are_recognised_from_their_headers() {
        assert_eq!(verdict(true, ".text"), None);
        assert!(
            verdict(false, ".text")
                .unwrap()
                .contains("statically linked")
        );
        assert!(
            verdict(true, ".go.buildinfo")
                .unwrap()
                .contains("Go program")
        );
        assert!(
            verdict(true, ".note.go.buildid")
                .unwrap()
                .contains("Go program")
        );
        assert_eq!(cannot_interpose(Path::new("/bin/sh")), None);
    }

    /// Bytes this process has read so far (`/proc/self/io`).
    fn bytes_read() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_large_executable_is_not_read_whole() {
        let path = elf(true, ".text", 64 << 20);
        let before = bytes_read();
        assert_eq!(cannot_interpose(&path), None);
        let read = bytes_read() - before;
        std::fs::remove_file(path).unwrap();
        assert!(read < 64 << 10, "read {read} bytes of a 64 MiB file");
    }
}

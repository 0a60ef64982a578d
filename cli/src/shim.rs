//! Finding libtcpcrypt.so: beside this executable (a cargo build puts both
//! in `target/<profile>/`), in `../lib` next to it (an installation), or
//! where `TCPCRYPT_LIB` says.

use std::path::PathBuf;

pub fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TCPCRYPT_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TCPCRYPT_LIB={} does not exist", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory for this executable")?;
    for candidate in [
        dir.join("libtcpcrypt.so"),
        dir.join("../lib/libtcpcrypt.so"),
        dir.join("../lib/tcpcrypt/libtcpcrypt.so"),
    ] {
        if candidate.is_file() {
            return candidate.canonicalize().map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "libtcpcrypt.so not found beside {} (build it with `cargo build -p tcpcrypt-preload`, or set TCPCRYPT_LIB)",
        exe.display()
    ))
}

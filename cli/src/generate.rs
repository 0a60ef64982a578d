//! `tcpcrypt generate`: the man pages and shell completions of this
//! command, generated from its own command line definition so that they
//! never disagree with `--help` (used by `scripts/package`; hidden from
//! `--help`).

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

/// Arguments of `tcpcrypt generate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Man pages: tcpcrypt.1 and one tcpcrypt-SUBCOMMAND.1 per subcommand.
    Man {
        /// The directory to write them into (created if missing).
        dir: PathBuf,
    },
    /// Completion scripts for bash, zsh and fish.
    Completions {
        /// The directory to write them into (created if missing).
        dir: PathBuf,
    },
}

pub fn generate(args: Args) -> i32 {
    let result = match args.what {
        What::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(crate::Cli::command(), &dir)),
        What::Completions { dir } => std::fs::create_dir_all(&dir).and_then(|()| {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut crate::Cli::command(), "tcpcrypt", &dir)?;
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tcpcrypt generate: {e}");
            2
        }
    }
}

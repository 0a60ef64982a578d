//! `tcpcrypt`: run unmodified programs with tcpcrypt, show it working end
//! to end, and list live encrypted connections.
//!
//! Exit codes: `run` exits with the program's status (128 + signal when it
//! was killed); other commands exit 0 on success, 1 when what they check
//! failed, 2 on a usage or setup error.

mod demo;
mod run;
mod shim;
mod status;

use clap::{Parser, Subcommand};

/// Opportunistic, forward-secret encryption of TCP connections
/// (tcpcrypt, RFC 8548, negotiated by TCP-ENO, RFC 8547).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// More log output on stderr (repeat for more); RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program with its TCP connections encrypted when the peer
    /// speaks tcpcrypt (libtcpcrypt.so preloaded).
    #[command(
        after_help = "Examples:\n  tcpcrypt run -- curl http://example.net/\n  tcpcrypt run --mandatory -- python3 client.py\n  tcpcrypt run --exclude 10.0.0.0/8 --exclude :22 -- ./server"
    )]
    Run(run::Args),
    /// Show tcpcrypt end to end on this machine: curl through the shim to a
    /// tcpcrypt server, with the session IDs and the bytes on the wire, then
    /// the fallback to a plain server.
    #[command(after_help = "Example:\n  tcpcrypt demo")]
    Demo,
    /// List the live connections of programs run with the shim.
    #[command(after_help = "Examples:\n  tcpcrypt status\n  tcpcrypt status --json")]
    Status(status::Args),
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Demo => demo::demo(),
        Command::Status(args) => status::status(args),
    };
    std::process::exit(code);
}

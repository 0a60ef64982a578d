//! `tcpcrypt`: run unmodified programs with tcpcrypt, show it working end
//! to end, talk and proxy over it, probe and benchmark it, and list live
//! encrypted connections.
//!
//! Exit codes: `run` exits with the program's status (128 + signal when it
//! was killed, 127 when it is not found, 126 when it cannot be started);
//! other commands exit 0 on success, 1 when the connection, the check or
//! the demo failed (`check`: only when the destination cannot be reached),
//! 2 on a usage or setup error.

mod bench;
mod check;
mod daemon;
mod demo;
mod generate;
mod http_header;
mod kernel;
mod local_end;
/// Log files named by the environment: one rule for the shim's and the
/// daemon's.
#[path = "../../preload/src/log_file.rs"]
mod log_file;
mod netcat;
mod options;
mod pathcheck;
mod plot;
mod proxy;
mod report;
/// The shim's include and exclude rules: one definition, so that `run`
/// refuses what the shim would not understand.
#[path = "../../preload/src/rule.rs"]
#[allow(dead_code)] // matching is the shim's; only parsing is used here
mod rule;
mod run;
mod shim;
mod sockopt;
mod status;
/// The shim's protocol with the daemon: one definition, compiled into
/// both (see the file's own documentation).
#[path = "../../preload/src/wire.rs"]
#[allow(dead_code)] // the shim's own side of it (its environment) is unused here
mod wire;

use clap::{Parser, Subcommand};

/// Opportunistic, forward-secret encryption of TCP connections
/// (tcpcrypt, RFC 8548, negotiated by TCP-ENO, RFC 8547).
#[derive(Parser)]
#[command(name = "tcpcrypt", version, propagate_version = true)]
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
        override_usage = "tcpcrypt run [OPTIONS] [--] <COMMAND>...\n       tcpcrypt run [OPTIONS] --shell",
        after_help = "Examples:\n  tcpcrypt run -- curl http://example.net/\n  tcpcrypt run --mandatory -- python3 client.py\n  tcpcrypt run --exclude 10.0.0.0/8 --exclude :22 -- ./server\n  tcpcrypt run --shell"
    )]
    Run(run::Args),
    /// Show tcpcrypt end to end on this machine: curl through the shim to a
    /// tcpcrypt server, with the session IDs and the bytes on the wire, then
    /// the fallback to a plain server.
    #[command(after_help = "Example:\n  tcpcrypt demo")]
    Demo,
    /// Connect to HOST:PORT: standard input to the peer, the peer to
    /// standard output (like netcat), the negotiation on standard error.
    #[command(
        after_help = "Examples:\n  tcpcrypt connect example.net:7777\n  echo hello | tcpcrypt connect --json 127.0.0.1:7777\n  tcpcrypt connect --mandatory [::1]:7777 < file"
    )]
    Connect(netcat::ConnectArgs),
    /// Accept a connection on PORT or ADDR:PORT: standard input to the peer, the
    /// peer to standard output, the negotiation on standard error.
    #[command(
        after_help = "Examples:\n  tcpcrypt listen 7777\n  tcpcrypt listen --keep-open 127.0.0.1:7777 > received\n  tcpcrypt listen --mandatory --json [::]:7777"
    )]
    Listen(netcat::ListenArgs),
    /// Put tcpcrypt in front of a plain server (server mode), or let plain
    /// local clients reach tcpcrypt servers (client mode).
    #[command(
        after_help = "Examples:\n  tcpcrypt proxy --mode server --listen 0.0.0.0:80 --to 127.0.0.1:8080 --http-header\n  tcpcrypt proxy --mode server --listen [::]:443 --to 127.0.0.1:8443 --proxy-protocol\n  tcpcrypt proxy --mode client --listen 127.0.0.1:8080 --to example.net:80 --mandatory"
    )]
    Proxy(proxy::Args),
    /// Probe HOST:PORT: does it speak tcpcrypt, with what, how fast.
    #[command(
        after_help = "Examples:\n  tcpcrypt check example.net:80\n  tcpcrypt check --json 127.0.0.1:7777 | jq .session_id"
    )]
    Check(check::Args),
    /// Measure tcpcrypt against plain TCP: bulk transfer and connection
    /// setup, in the same run.
    #[command(
        after_help = "Examples:\n  tcpcrypt bench\n  tcpcrypt bench --bytes 1G --connections 2000 --json\n  tcpcrypt bench --plot ratios.svg\n  tcpcrypt bench --serve 0.0.0.0:7778     (on the server)\n  tcpcrypt bench --to server:7778         (on the client)"
    )]
    Bench(bench::Args),
    /// The per-user relay daemon that carries the connections of shimmed
    /// programs (started on demand by libtcpcrypt.so).
    #[command(
        after_help = "Examples:\n  tcpcrypt daemon                 (start in the background unless running)\n  tcpcrypt daemon --foreground    (for systemd: packaging/systemd/tcpcrypt-daemon.service)\n  tcpcrypt daemon --stop"
    )]
    Daemon(daemon::Args),
    /// The kernel carriage: ENO in the SYN by a BPF program, for the
    /// connections of the processes of a cgroup.
    #[command(
        after_help = "Examples:\n  sudo tcpcrypt kernel enable\n  sudo tcpcrypt kernel enable --cgroup /sys/fs/cgroup/unified/web\n  tcpcrypt kernel status --json\n  sudo tcpcrypt kernel disable"
    )]
    Kernel(kernel::Args),
    /// List the live connections of programs run with the shim.
    #[command(after_help = "Examples:\n  tcpcrypt status\n  tcpcrypt status --json")]
    Status(status::Args),
    /// Write the man pages or shell completions (for packagers).
    #[command(hide = true)]
    Generate(generate::Args),
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
        Command::Daemon(args) => daemon::daemon(args),
        Command::Connect(args) => block_on(netcat::connect(args)),
        Command::Listen(args) => block_on(netcat::listen(args)),
        Command::Proxy(args) => block_on(proxy::proxy(args)),
        Command::Check(args) => block_on(check::check(args)),
        Command::Bench(args) => block_on(bench::bench(args)),
        Command::Generate(args) => generate::generate(args),
        Command::Kernel(args) => kernel::kernel(args),
    };
    std::process::exit(code);
}

/// Runs an asynchronous command to its exit status.
fn block_on(command: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(command),
        Err(e) => {
            eprintln!("tcpcrypt: cannot start the async runtime: {e}");
            2
        }
    }
}

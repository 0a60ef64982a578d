//! `tcpcrypt kernel`: the kernel carriage of TCP-ENO (the option in the
//! SYN, by a BPF program) switched on and off for a cgroup, and its state.

use std::path::PathBuf;

use serde::Serialize;
use tcpcrypt_kernel::attach;

/// Arguments of `tcpcrypt kernel`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Attach the ENO program to a cgroup v2 directory (root): every TCP
    /// connection of its processes then offers and answers ENO in the SYN.
    Enable {
        /// The cgroup v2 directory (default: the root of the hierarchy,
        /// mounted on /run/tcpcrypt/cgroup2 when none is mounted).
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
    },
    /// Detach it from a cgroup (root); unload it when attached nowhere.
    Disable {
        /// The cgroup v2 directory (default: the root of the hierarchy).
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
    },
    /// Where it is attached, and its counters (root for the counters).
    Status {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct StatusReport {
    loaded: bool,
    attached: Vec<String>,
    counters: Option<std::collections::BTreeMap<&'static str, u64>>,
}

pub fn kernel(args: Args) -> i32 {
    match args.action {
        Action::Enable { cgroup } => match attach::enable(cgroup.as_deref()) {
            Ok((dir, true)) => {
                println!(
                    "tcpcrypt: ENO in the SYN for the connections of {}",
                    dir.display()
                );
                0
            }
            Ok((dir, false)) => {
                println!("tcpcrypt: already enabled for {}", dir.display());
                0
            }
            Err(e) => {
                eprintln!("tcpcrypt kernel enable: {e}");
                2
            }
        },
        Action::Disable { cgroup } => match attach::disable(cgroup.as_deref()) {
            Ok((dir, true)) => {
                println!("tcpcrypt: disabled for {}", dir.display());
                0
            }
            Ok((dir, false)) => {
                println!("tcpcrypt: was not enabled for {}", dir.display());
                0
            }
            Err(e) => {
                eprintln!("tcpcrypt kernel disable: {e}");
                2
            }
        },
        Action::Status { json } => {
            let s = attach::status();
            let report = StatusReport {
                loaded: s.loaded,
                attached: s.attached,
                counters: s.counters.map(|c| c.into_iter().collect()),
            };
            if json {
                println!("{}", serde_json::to_string(&report).expect("serializable"));
            } else if !report.loaded && !tcpcrypt_kernel::bpf_fs_mounted() {
                println!(
                    "kernel carriage: unknown: {}",
                    tcpcrypt_kernel::Error::NoBpfFs
                );
            } else if !report.loaded {
                println!("kernel carriage: not enabled (tcpcrypt kernel enable)");
            } else {
                println!("kernel carriage: enabled");
                for dir in &report.attached {
                    println!("  attached to {dir}");
                }
                match &report.counters {
                    Some(c) => {
                        for (name, v) in c {
                            println!("  {name:<34} {v}");
                        }
                    }
                    None => println!("  counters: readable by root only"),
                }
            }
            0
        }
    }
}

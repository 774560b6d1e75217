//! `weft`: the router daemon (`weft router`) and the CLI that talks to it
//! over its HTTP API.

mod api;
mod atomic_file;
mod cli;
mod cni_install;
mod command;
mod config;
mod control;
mod core;
mod datapath;
mod devices;
mod fastdp;
mod identity;
mod ipam;
mod kube;
mod metrics;
mod nat;
mod path_mtu;
mod reset;
mod shared;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "weft: an overlay network for Kubernetes, in the spirit of Weave Net")]
struct Cli {
    /// Where the router's HTTP API listens (the CLI commands talk to it).
    #[arg(long, global = true, env = "WEFT_HTTP_ADDR", default_value = config::DEFAULT_HTTP_ADDR)]
    http_addr: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router daemon on this node.
    Router(Box<config::RouterArgs>),
    /// Show the router's status, like `weave status`.
    Status {
        #[arg(value_enum)]
        what: Option<cli::StatusPart>,
    },
    /// Print the router's JSON report.
    Report,
    /// Add peers to connect to (host[:port]).
    Connect {
        /// Replace the current targets instead of adding to them.
        #[arg(long)]
        replace: bool,
        peers: Vec<String>,
    },
    /// Stop connecting to these peers.
    Forget { peers: Vec<String> },
    /// Take over the address space of a peer that is gone for good.
    Rmpeer {
        /// Peer name or nickname.
        peer: String,
    },
    /// Undo weft on this node: stop the router, delete its bridge, TAP and
    /// VXLAN device and the pods' veths, and forget its peer name and IPAM state.
    Reset(reset::ResetArgs),
    /// Install the weft-net CNI plugin on this node (the DaemonSet's init
    /// container).
    InstallCni(cni_install::InstallArgs),
}

fn main() -> std::process::ExitCode {
    let (vars, argv) = config::weave_env(|var| std::env::var(var).ok(), std::env::args_os().collect());
    // Still single-threaded: nothing else reads the environment yet.
    for (var, value) in vars {
        std::env::set_var(var, value);
    }
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::Router(args) => core::run(*args, cli.http_addr),
        Command::Status { what } => cli::status(&cli.http_addr, what),
        Command::Report => cli::report(&cli.http_addr),
        Command::Connect { replace, peers } => cli::connect(&cli.http_addr, &peers, replace),
        Command::Forget { peers } => cli::forget(&cli.http_addr, &peers),
        Command::Rmpeer { peer } => cli::rmpeer(&cli.http_addr, &peer),
        Command::Reset(args) => reset::run(args, &cli.http_addr),
        Command::InstallCni(args) => cni_install::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

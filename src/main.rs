//! The `pgbootfs` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pgbootfs::db::DbConfig;
use pgbootfs::mount::{self, MountOptions};

/// Serve MAAS boot images stored as PostgreSQL large objects.
#[derive(Parser)]
#[command(name = "pgbootfs", version)]
struct Cli {
    /// PostgreSQL connection: a key=value conninfo or a postgres:// URL (unix-socket
    /// hosts included). Default: DATABASE_URL, then PGHOST, PGPORT, PGUSER, PGPASSWORD,
    /// PGDATABASE.
    #[arg(long, global = true, value_name = "CONNINFO")]
    db: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the image store read-only at MOUNTPOINT (runs in the foreground).
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Seconds between catalog reloads: added or removed images show up this late.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    refresh: u64,
    /// Seconds an open waits for a free handle connection before failing with EAGAIN.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pool_timeout: u64,
    /// Most files open at once (each holds one database connection).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_handles: u32,
    /// FUSE worker threads. A request waiting on the database holds its thread, so
    /// more threads than cores keep other files moving.
    #[arg(long, default_value_t = 16, value_name = "N")]
    threads: usize,
    /// Let users other than the mounting one read the tree.
    #[arg(long)]
    allow_other: bool,
    /// Kernel read-ahead for the mount in KiB (root only; larger means bigger reads).
    #[arg(long, default_value_t = 2048, value_name = "KIB")]
    read_ahead_kb: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = DbConfig::resolve(cli.db.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|db| match cli.command {
            Command::Mount(args) => {
                let opts = MountOptions {
                    mountpoint: args.mountpoint,
                    refresh: Duration::from_secs(args.refresh.max(1)),
                    pool_timeout: Duration::from_secs(args.pool_timeout),
                    max_handles: args.max_handles,
                    threads: args.threads,
                    allow_other: args.allow_other,
                    read_ahead_kb: args.read_ahead_kb,
                };
                mount::run(&db, &opts).map_err(|e| e.to_string())
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("pgbootfs: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

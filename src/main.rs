//! The `pgbootfs` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pgbootfs::db::DbConfig;
use pgbootfs::http::{self, HttpOptions, ServeOptions};
use pgbootfs::mount::{self, MountOptions};
use pgbootfs::store;

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
    /// Import a directory os/arch/subarch/series/version/filename or a simplestreams
    /// mirror (streams/v1/index.json), one version per transaction.
    Import(ImportArgs),
    /// List the store (or the subtree at PATH) with sizes, sha256 and completeness.
    Ls(LsArgs),
    /// Re-read every large object under PATH and compare size and sha256 with the rows.
    Verify(PathArg),
    /// Remove a version, a series or a subarch with the large objects nothing else uses.
    Remove(RemoveArgs),
    /// Serve the image store over HTTP only (runs in the foreground).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Directory to import (a tree of images or a simplestreams mirror).
    src: PathBuf,
    /// Replace stored versions whose content differs instead of refusing.
    #[arg(long)]
    replace: bool,
}

#[derive(clap::Args)]
struct LsArgs {
    /// Subtree to list, e.g. ubuntu/amd64 (default: everything).
    #[arg(default_value = "")]
    path: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PathArg {
    /// Subtree, e.g. ubuntu/amd64/ga-22.04 (default: everything).
    #[arg(default_value = "")]
    path: String,
}

#[derive(clap::Args)]
struct RemoveArgs {
    /// os/arch/subarch[/series[/version]].
    path: String,
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
    /// Also serve the tree over HTTP on ADDR (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    #[command(flatten)]
    http_opts: HttpArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the log names it).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// Seconds between catalog reloads: added or removed images show up this late.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    refresh: u64,
    /// Most downloads reading at once (each holds one database connection).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_handles: u32,
    #[command(flatten)]
    http_opts: HttpArgs,
}

#[derive(clap::Args)]
struct HttpArgs {
    /// HTTP requests handled at once; more wait in a queue.
    #[arg(long, default_value_t = 16, value_name = "N")]
    http_workers: usize,
    /// Seconds a client may accept no bytes before it is dropped.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    http_send_timeout: u64,
    /// Seconds a download waits for a free handle connection before a 503 (at least 1:
    /// a new connection needs time to be made).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    http_pool_wait: u64,
    /// Seconds a connection may take to send a complete request (also the keep-alive
    /// idle limit).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    http_header_timeout: u64,
}

impl HttpArgs {
    fn options(&self, listen: String) -> HttpOptions {
        HttpOptions {
            listen,
            workers: self.http_workers.max(1),
            send_timeout: Duration::from_secs(self.http_send_timeout.max(1)),
            pool_wait: Duration::from_secs(self.http_pool_wait.max(1)),
            header_timeout: Duration::from_secs(self.http_header_timeout.max(1)),
        }
    }
}

/// A panic in any thread, ours or a library's, becomes one log line: a daemon's
/// stderr is often a journal, where a multi-line report splits into pieces.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        log::error!("thread {name} panicked: {info}");
    }));
}

/// Raises the soft limit on open descriptors to the hard limit, as servers do:
/// every HTTP connection costs two descriptors in tiny_http and every handle one
/// database socket, and the usual soft limit of 1024 is soon reached.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                log::debug!(
                    "cannot raise the descriptor limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    log_panics();
    raise_fd_limit();
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
                    http: args.http.map(|addr| args.http_opts.options(addr)),
                };
                mount::run(&db, &opts).map_err(|e| e.to_string())
            }
            Command::Import(args) => {
                let opts = store::import::ImportOptions {
                    replace: args.replace,
                };
                store::import::run(&db, &args.src, &opts)
                    .map(|s| {
                        println!(
                            "imported: {} version(s) new, {} replaced, {} unchanged; \
                             {} file(s) written ({} bytes), {} already stored",
                            s.sets_written,
                            s.sets_replaced,
                            s.sets_unchanged,
                            s.files_written,
                            s.bytes_written,
                            s.files_shared
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            Command::Ls(args) => {
                store::list::run(&db, &args.path, args.json, &mut std::io::stdout())
                    .map_err(|e| e.to_string())
            }
            Command::Verify(args) => store::verify::run(&db, &args.path, &mut std::io::stdout())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::Remove(args) => store::remove::run(&db, &args.path, &mut std::io::stdout())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Command::Serve(args) => {
                let opts = ServeOptions {
                    http: args.http_opts.options(args.listen),
                    refresh: Duration::from_secs(args.refresh.max(1)),
                    max_handles: args.max_handles,
                };
                http::serve(&db, &opts).map_err(|e| e.to_string())
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

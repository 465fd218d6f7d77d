//! The `pgbootfs` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use pgbootfs::daemon::CacheDir;
use pgbootfs::db::DbConfig;
use pgbootfs::handle::PoolOptions;
use pgbootfs::http::{self, HttpOptions, ServeOptions};
use pgbootfs::mount::{self, MountOptions};
use pgbootfs::mount_helper;
use pgbootfs::store;

/// Serve MAAS boot images stored as PostgreSQL large objects.
#[derive(Parser)]
#[command(
    name = "pgbootfs",
    version = pgbootfs::VERSION,
    after_help = "Examples:
  pgbootfs --db service=maas mount /srv/images --http 127.0.0.1:8080
  pgbootfs --db 'host=/var/run/postgresql dbname=maasdb user=maas' ls ubuntu/amd64
  mount -t fuse.pgbootfs maas /srv/images -o ro,allow_other,refresh=10

As a mount(8) helper (called as mount.fuse.pgbootfs, or `pgbootfs SOURCE DIR -o
OPTIONS`), SOURCE is a libpq service name or a conninfo; see `pgbootfs mount --help`
and doc/CONFIGURATION.md for the options."
)]
struct Cli {
    /// PostgreSQL connection: a key=value conninfo or a postgres:// URL (unix-socket
    /// hosts included). Default: DATABASE_URL, then PGHOST, PGPORT, PGUSER, PGPASSWORD,
    /// PGDATABASE.
    #[arg(long, global = true, value_name = "CONNINFO")]
    db: Option<String>,

    /// Connection settings for reading image bytes, laid over --db's (keys given
    /// here win), e.g. 'target_session_attrs=prefer-standby' to read images from
    /// hot standbys while the catalog reads from any host.
    #[arg(long, global = true, value_name = "CONNINFO")]
    handle_db: Option<String>,

    /// Log more on standard error: -v shows what ls, verify, import, remove and
    /// export do (they print only results and problems otherwise), -vv debug
    /// lines. The daemons (mount, serve) log at info without it. RUST_LOG, if set,
    /// wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// MAAS 3.5+ only: the region's image storage directory, where the image files
    /// are (default: /var/lib/maas/image-storage, then the snap's
    /// /var/snap/maas/common/maas/image-storage).
    #[arg(long, global = true, value_name = "DIR")]
    image_storage: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the image store read-only at MOUNTPOINT (runs in the foreground).
    #[command(after_help = "Examples:
  pgbootfs --db service=maas mount /srv/images
  pgbootfs --db service=maas mount /srv/images --allow-other --http 0.0.0.0:8080
  pgbootfs --db service=maas mount /srv/images --metrics 127.0.0.1:9108 --cache-dir /var/cache/pgbootfs

The same from /etc/fstab or mount(8), daemonized once the mount answers:
  maas  /srv/images  fuse.pgbootfs  ro,allow_other,refresh=10,_netdev  0  0
  mount -t fuse.pgbootfs maas /srv/images -o ro,refresh=10,http=127.0.0.1:8080
Mount options are these flags with _ for - (max_handles=64, cache_dir=DIR, ...),
plus allow_other, foreground, log=FILE and log_level=LEVEL.")]
    Mount(MountArgs),
    /// Import a directory os/arch/subarch/series/version/filename or a simplestreams
    /// mirror (streams/v1/index.json), one version per transaction.
    #[command(after_help = "Examples:
  pgbootfs --db service=maas import ./images      # ubuntu/amd64/ga-22.04/jammy/20240101/squashfs ...
  sstream-mirror https://images.maas.io/ephemeral-v3/stable/streams/v1/index.json ./mirror 'arch=amd64' 'release=jammy'
  pgbootfs --db service=maas import ./mirror
  pgbootfs --db service=maas import ./mirror --replace   # take new content for versions already stored")]
    Import(ImportArgs),
    /// List the store (or the subtree at PATH) with sizes, sha256 and completeness.
    #[command(after_help = "Examples:
  pgbootfs --db service=maas ls
  pgbootfs --db service=maas ls ubuntu/amd64/ga-22.04
  pgbootfs --db service=maas ls --json | jq -r '.sets[] | select(.complete | not) | .path'")]
    Ls(LsArgs),
    /// Re-read every large object under PATH and compare size and sha256 with the rows.
    #[command(after_help = "Examples:
  pgbootfs --db service=maas verify
  pgbootfs --db service=maas verify ubuntu/amd64/ga-22.04/jammy")]
    Verify(PathArg),
    /// Write every complete image file of a MAAS 1.7-3.4 database into a MAAS 3.5+
    /// image storage directory, named as MAAS 3.5+ looks for them (read-only on
    /// the database; resumable).
    #[command(after_help = "Examples:
  pgbootfs --db service=maas export --image-storage /var/lib/maas/image-storage --owner maas
  pgbootfs --db 'host=standby dbname=maasdb' export --image-storage /backup/images --jobs 2
  pgbootfs --db service=maas export --image-storage /var/lib/maas/image-storage --dry-run")]
    Export(ExportArgs),
    /// Remove a version, a series or a subarch with the large objects nothing else uses.
    #[command(after_help = "Examples:
  pgbootfs --db service=maas remove ubuntu/amd64/ga-22.04/jammy/20240101
  pgbootfs --db service=maas remove ubuntu/amd64/ga-20.04")]
    Remove(RemoveArgs),
    /// Serve the image store over HTTP only (runs in the foreground).
    #[command(after_help = "Examples:
  pgbootfs --db service=maas serve --listen 0.0.0.0:8080
  curl -O http://127.0.0.1:8080/ubuntu/amd64/ga-22.04/jammy/20240101/squashfs
  curl http://127.0.0.1:8080/metrics
  sstream-mirror http://127.0.0.1:8080/streams/v1/index.json ./mirror")]
    Serve(ServeArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  pgbootfs completions bash > /etc/bash_completion.d/pgbootfs
  pgbootfs completions zsh > /usr/local/share/zsh/site-functions/_pgbootfs
  pgbootfs completions fish > ~/.config/fish/completions/pgbootfs.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page pgbootfs(1), or write one page per command into DIR.
    #[command(after_help = "Examples:
  pgbootfs man | man -l -
  pgbootfs man --out /usr/local/share/man/man1 && mandb -q")]
    Man {
        /// Write pgbootfs.1 and pgbootfs-COMMAND.1 into DIR instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Directory to import (a tree of images or a simplestreams mirror).
    src: PathBuf,
    /// Replace stored versions whose content differs instead of refusing.
    #[arg(long)]
    replace: bool,
    /// For custom images from a directory (os `custom`): the os/series they are
    /// based on, as MAAS's upload asks (default: the stored image's, else the
    /// region's commissioning release, else ubuntu/jammy).
    #[arg(long, value_name = "OS/SERIES")]
    base_image: Option<String>,
    /// For images from a directory: the title MAAS shows (extra.title), as an
    /// upload's.
    #[arg(long)]
    title: Option<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The image storage to write into (created when absent): MAAS 3.5+ reads
    /// /var/lib/maas/image-storage (deb) or /var/snap/maas/common/maas/image-storage
    /// (snap); any directory makes a backup.
    #[arg(long, value_name = "DIR")]
    image_storage: PathBuf,
    /// Files written at once, each on its own database connection.
    #[arg(long, default_value_t = 2, value_name = "N")]
    jobs: usize,
    /// Owner of the files written (and of DIR if export creates it), e.g. maas or
    /// maas:maas; default: the user running export.
    #[arg(long, value_name = "USER[:GROUP]")]
    owner: Option<String>,
    /// List what would be written and check the free space; write nothing.
    #[arg(long)]
    dry_run: bool,
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
    /// Seconds a read waits for a free handle connection before failing with EAGAIN.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pool_timeout: u64,
    #[command(flatten)]
    pool: PoolArgs,
    /// FUSE worker threads: metadata requests and reads answered from memory.
    #[arg(long, default_value_t = 16, value_name = "N")]
    threads: usize,
    /// Threads for reads that wait on the database; they never hold up metadata.
    #[arg(long, default_value_t = 32, value_name = "N")]
    read_threads: usize,
    /// Let users other than the mounting one read the tree.
    #[arg(long)]
    allow_other: bool,
    /// Show the contents of each browsable image (squashfs, tarballs, initrds, disk images) at
    /// /.inside/OS/ARCH/SUBARCH/SERIES/VERSION/FILENAME/, read on demand.
    #[arg(long)]
    inside: bool,
    /// Kernel read-ahead for the mount in KiB (root only; larger means bigger reads).
    #[arg(long, default_value_t = 2048, value_name = "KIB")]
    read_ahead_kb: u32,
    /// Also serve the tree over HTTP on ADDR (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (with --http they are also at
    /// /metrics there).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
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
    #[command(flatten)]
    pool: PoolArgs,
    /// Serve the contents of each browsable image (squashfs, tarballs, initrds, disk images) at
    /// /.inside/OS/ARCH/SUBARCH/SERIES/VERSION/FILENAME/.
    #[arg(long)]
    inside: bool,
    #[command(flatten)]
    http_opts: HttpArgs,
}

#[derive(clap::Args)]
struct PoolArgs {
    /// Most database connections for reading images (each reader that needs the
    /// database holds one; readers of bytes already in memory hold none).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_handles: u32,
    /// Seconds after which an open file that is not being read gives back its
    /// connection and snapshot (its next read sets up again).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    handle_idle: u64,
    /// Seconds a reader whose database connection was lost (restart, failover,
    /// standby conflict) waits for a new one before its read fails; it then reads on
    /// at the same offset in a new snapshot of the same content.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    reconnect_timeout: u64,
    /// MiB of image chunks kept in memory, shared by all readers of the same image.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    cache_memory: u64,
    /// Keep verified copies of whole images in DIR (files named by sha256), served
    /// without the database and, on the mount, by the kernel (passthrough).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// MiB the disk cache may hold; least recently used images go first.
    #[arg(long, default_value_t = 10240, value_name = "MIB")]
    cache_size: u64,
}

impl PoolArgs {
    fn cache_dir(&self) -> Option<CacheDir> {
        self.cache_dir.as_ref().map(|dir| CacheDir {
            dir: dir.clone(),
            max_bytes: self.cache_size << 20,
        })
    }

    fn options(&self, timeout: Duration) -> PoolOptions {
        PoolOptions {
            max: self.max_handles,
            timeout,
            handle_idle: Duration::from_secs(self.handle_idle.max(1)),
            cache_memory: self.cache_memory << 20,
            reconnect_timeout: Duration::from_secs(self.reconnect_timeout),
            ..PoolOptions::default()
        }
    }
}

#[derive(clap::Args)]
struct HttpArgs {
    /// HTTP requests handled at once; more wait in a queue. A download of bytes in
    /// memory holds no database connection, so this can exceed --max-handles.
    #[arg(long, default_value_t = 160, value_name = "N")]
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
    /// Requests one client address may have in service at once; its further
    /// requests wait their turn, so one host cannot take every worker. An address
    /// may hold 64 times this many connections open; more are refused with 503.
    #[arg(long, default_value_t = 8, value_name = "N")]
    http_per_client: usize,
    /// HTTP connections held open at once over all clients; more are answered 503
    /// and closed at once. Default: half the open-file limit (raised to its hard
    /// limit at start), at least 64 and at most 16384.
    #[arg(long, value_name = "N")]
    http_max_connections: Option<usize>,
    /// Only these networks may use the HTTP side (e.g. the rack controllers and
    /// mirrors); others get 403. Default: everyone.
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]", value_parser = parse_net)]
    allow_from: Vec<ipnet::IpNet>,
    /// Proxies (e.g. squid, nginx) whose X-Forwarded-For names the client for the
    /// access log, --allow-from and --http-per-client.
    #[arg(long, value_delimiter = ',', value_name = "CIDR[,CIDR...]", value_parser = parse_net)]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// With --inside, also serve files that are not world-readable inside their
    /// image (custom images can carry /etc/shadow and SSH host keys).
    #[arg(long)]
    inside_private: bool,
}

/// A network `ADDR/PREFIX`, or one address (a /32 or /128).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither ADDRESS/PREFIX nor an IP address"))
}

impl HttpArgs {
    fn options(&self, listen: String) -> HttpOptions {
        HttpOptions {
            listen,
            workers: self.http_workers.max(1),
            send_timeout: Duration::from_secs(self.http_send_timeout.max(1)),
            pool_wait: Duration::from_secs(self.http_pool_wait.max(1)),
            header_timeout: Duration::from_secs(self.http_header_timeout.max(1)),
            per_client: self.http_per_client.max(1),
            // 0 stands for the default, which is known only once the descriptor
            // limit is raised.
            max_connections: self.http_max_connections.map_or(0, |n| n.max(1)),
            allow_from: self.allow_from.clone(),
            trusted_proxies: self.trusted_proxy.clone(),
            metrics_only: false,
            inside: false,
            inside_private: self.inside_private,
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
/// every HTTP connection costs a descriptor and every handle one
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

/// Did the command fail only because standard output was closed (`| head`)?
/// Only a write to standard output counts: a closed pipe anywhere else (the
/// database connection, say) is a real failure.
fn stdout_closed(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<store::StoreError>().is_some_and(|s| {
        matches!(s, store::StoreError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The allocator: jemalloc, with one arena and freed pages handed back to the
/// kernel half a second after they fall idle. Chunk buffers (512 KiB) and the
/// database connections' receive buffers are made and freed by many threads (64
/// streams, say). With glibc's malloc, even capped at two arenas, memory freed in
/// one thread's arena stayed resident while another thread allocated afresh, and
/// the daemon's peak RSS grew about 100 MiB past its cache budget at 64 streams
/// (463 MiB against 256 + 64 MiB; scripts/bench, rss row). Having glibc mmap each
/// buffer instead bounded RSS but cost a cold `cat` 40%. jemalloc with these
/// settings stays within the budget (doc/benchmark-history.md). `muzzy_decay_ms:0` matters:
/// pages only marked MADV_FREE still count in RSS until the kernel needs them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol when it starts (`_RJEM_MALLOC_CONF`
/// in the environment still overrides them, for experiments).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: ConfString =
    ConfString(c"narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0,background_thread:true".as_ptr());

/// A C string pointer jemalloc reads once; `*const c_char` alone is not `Sync`.
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, never written, C string.
unsafe impl Sync for ConfString {}

/// Starts the log on standard error at `default` (a RUST_LOG filter), which
/// RUST_LOG in the environment overrides.
fn start_log(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

impl Cli {
    /// The log level without RUST_LOG. A command run by hand prints its results on
    /// stdout and only what went wrong on stderr (`ls | head -1` shows one line,
    /// not the log); the daemons' log is their account of what they serve.
    fn log_level(&self) -> &'static str {
        let daemon = matches!(self.command, Command::Mount(_) | Command::Serve(_));
        match (daemon, self.verbose) {
            (true, 0) | (false, 1) => "info",
            (false, 0) => "warn",
            _ => "debug",
        }
    }
}

fn main() -> ExitCode {
    log_panics();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let subcommands = subcommands();
    let subcommands: Vec<&str> = subcommands.iter().map(String::as_str).collect();
    let helper = mount_helper::invoked_as_helper(&args, &subcommands);
    if helper {
        // mount(8) runs the helper for a daemon: it logs as one.
        start_log("info");
    }
    let cli = if helper {
        match mount_helper::parse(&args) {
            Ok(req) if req.fake => return ExitCode::SUCCESS,
            Ok(req) if req.foreground => {
                for (var, value) in &req.env {
                    // SAFETY: no thread has been started yet (logging and the
                    // descriptor limit start none), so nothing reads the
                    // environment concurrently.
                    unsafe { std::env::set_var(var, value) };
                }
                let mut argv: Vec<std::ffi::OsString> =
                    vec!["pgbootfs".into(), "--db".into(), req.conninfo.into()];
                argv.extend(req.mount_args);
                Cli::parse_from(argv)
            }
            Ok(req) => {
                return match mount_helper::daemonize(&req) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e),
                };
            }
            Err(e) => return fail(&e),
        }
    } else {
        let cli = Cli::parse();
        start_log(cli.log_level());
        cli
    };
    raise_fd_limit();
    // Commands that need no database.
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "pgbootfs",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man { out } => {
            return match write_man(out.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        _ => {}
    }
    // A mount started by the helper gets its source here, like --db but off the
    // command line.
    let db_arg = cli
        .db
        .or_else(|| std::env::var(mount_helper::SOURCE_ENV).ok());
    let image_storage = cli.image_storage;
    let result = DbConfig::resolve(db_arg.as_deref())
        .and_then(|db| match cli.handle_db.as_deref() {
            Some(overlay) => db.with_handle_overlay(overlay),
            None => Ok(db),
        })
        .map_err(Box::<dyn std::error::Error>::from)
        .and_then(|db| match cli.command {
            Command::Mount(args) => {
                let opts = MountOptions {
                    mountpoint: args.mountpoint,
                    refresh: Duration::from_secs(args.refresh.max(1)),
                    pool: args.pool.options(Duration::from_secs(args.pool_timeout)),
                    cache_dir: args.pool.cache_dir(),
                    image_storage: image_storage.clone(),
                    threads: args.threads,
                    read_threads: args.read_threads,
                    allow_other: args.allow_other,
                    read_ahead_kb: args.read_ahead_kb,
                    inside: args.inside,
                    http: args.http.map(|addr| HttpOptions {
                        inside: args.inside,
                        ..args.http_opts.options(addr)
                    }),
                    metrics: args.metrics.map(|addr| HttpOptions {
                        metrics_only: true,
                        ..args.http_opts.options(addr)
                    }),
                };
                mount::run(&db, &opts).map_err(Box::<dyn std::error::Error>::from)
            }
            Command::Import(args) => {
                let opts = store::import::ImportOptions {
                    replace: args.replace,
                    base_image: args.base_image,
                    title: args.title,
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
                    .map_err(Box::<dyn std::error::Error>::from)
            }
            Command::Ls(args) => store::list::run(
                &db,
                &args.path,
                args.json,
                image_storage.as_deref(),
                &mut std::io::stdout(),
            )
            .map_err(Box::<dyn std::error::Error>::from),
            Command::Verify(args) => store::verify::run(
                &db,
                &args.path,
                image_storage.as_deref(),
                &mut std::io::stdout(),
            )
            .map(|_| ())
            .map_err(Box::<dyn std::error::Error>::from),
            Command::Export(args) => {
                let opts = store::export::ExportOptions {
                    dir: args.image_storage,
                    jobs: args.jobs.max(1),
                    owner: args.owner,
                    dry_run: args.dry_run,
                };
                store::export::run(&db, &opts, &mut std::io::stdout())
                    .map(|_| ())
                    .map_err(Box::<dyn std::error::Error>::from)
            }
            Command::Remove(args) => store::remove::run(&db, &args.path, &mut std::io::stdout())
                .map(|_| ())
                .map_err(Box::<dyn std::error::Error>::from),
            Command::Serve(args) => {
                let opts = ServeOptions {
                    http: HttpOptions {
                        inside: args.inside,
                        ..args.http_opts.options(args.listen)
                    },
                    refresh: Duration::from_secs(args.refresh.max(1)),
                    pool: args
                        .pool
                        .options(Duration::from_secs(args.http_opts.http_pool_wait.max(1))),
                    cache_dir: args.pool.cache_dir(),
                    image_storage: image_storage.clone(),
                };
                http::serve(&db, &opts).map_err(Box::<dyn std::error::Error>::from)
            }
            // Answered above, before any database is looked for.
            Command::Completions { .. } | Command::Man { .. } => Ok(()),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `pgbootfs ls | head`: the reader went away, which is not our failure.
        Err(e) if stdout_closed(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => fail(e.as_ref()),
    }
}

/// The manual: pgbootfs(1) on standard output, or a page per command in `dir`.
fn write_man(dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        return clap_mangen::Man::new(cmd).render(&mut std::io::stdout());
    };
    let write = |name: &str, cmd: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut f = std::fs::File::create(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        })?;
        clap_mangen::Man::new(cmd).title(name).render(&mut f)
    };
    for sub in cmd.get_subcommands() {
        let name = format!("pgbootfs-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("pgbootfs", cmd)
}

/// One line on standard error and a failing exit status.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("pgbootfs: error: {e}");
    ExitCode::FAILURE
}

/// The subcommand names: any other first argument is a mount helper's SOURCE.
fn subcommands() -> Vec<String> {
    let cmd = Cli::command();
    let mut names: Vec<String> = cmd
        .get_subcommands()
        .flat_map(|s| std::iter::once(s.get_name()).chain(s.get_all_aliases()))
        .map(str::to_string)
        .collect();
    names.push("help".into());
    names
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Whether `--name` occurs in `text` as a whole flag (not as the start of a longer
    /// one: `--cache` must not be found inside `--cache-dir`).
    fn mentions_flag(text: &str, name: &str) -> bool {
        let flag = format!("--{name}");
        text.match_indices(&flag).any(|(at, _)| {
            let next = text[at + flag.len()..].chars().next();
            !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    }

    /// Every subcommand has a section and every long flag is written in
    /// doc/CONFIGURATION.md, so a new flag cannot ship undocumented.
    #[test]
    fn every_flag_is_in_the_configuration_reference() {
        let doc = include_str!("../doc/CONFIGURATION.md");
        let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with("## ")).collect();
        let cli = Cli::command();
        let mut missing = Vec::new();
        for arg in cli.get_arguments() {
            if let Some(long) = arg.get_long().filter(|l| !mentions_flag(doc, l)) {
                missing.push(format!("--{long} (every command)"));
            }
        }
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            if !headings.iter().any(|h| h.contains(name)) {
                missing.push(format!("a \"## ...{name}...\" section"));
            }
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long().filter(|l| !mentions_flag(doc, l)) {
                    missing.push(format!("--{long} ({name})"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not documented in doc/CONFIGURATION.md: {}",
            missing.join(", ")
        );
    }

    #[test]
    fn a_flag_is_found_whole_only() {
        assert!(mentions_flag("`--cache-dir DIR`", "cache-dir"));
        assert!(!mentions_flag("`--cache-dir DIR`", "cache"));
        assert!(mentions_flag("ends with --db", "db"));
        assert!(!mentions_flag("dbname or --dbx", "db"));
    }
}

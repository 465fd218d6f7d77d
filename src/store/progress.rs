//! Progress of a long copy or read: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use log::info;

/// How often a plain progress line is written when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress over a known number of bytes.
pub struct Progress {
    verb: &'static str,
    total: u64,
    done: u64,
    file: String,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    /// Progress of `verb` (e.g. "import") over `total` bytes.
    pub fn new(verb: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(verb);
            bar
        });
        Progress {
            verb,
            total,
            done: 0,
            file: String::new(),
            started: Instant::now(),
            bar,
            last_line: Instant::now(),
        }
    }

    /// A new file begins; logged as one line either way.
    pub fn start_file(&mut self, path: &str, size: u64) {
        self.file = path.to_string();
        if let Some(bar) = &self.bar {
            // The last components: the whole path may not fit beside the bar.
            let short: Vec<&str> = path.rsplit('/').take(2).collect();
            bar.set_message(format!("{}/{}", short.get(1).unwrap_or(&""), short[0]));
        }
        self.info(&format!("{}: {path} ({size} bytes)", self.verb));
    }

    /// Logs one line at info level without tearing the bar.
    pub fn info(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| info!("{msg}")),
            None => info!("{msg}"),
        }
    }

    /// `n` more bytes are done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            info!("{}", self.line());
        }
    }

    /// Counts bytes that need no work (e.g. already stored) as done.
    pub fn skip(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Writes a message without tearing the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }

    /// Ends the bar; logs a closing summary line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        info!(
            "{}: {} bytes in {secs:.1} s ({:.1} MB/s)",
            self.verb,
            self.done,
            self.done as f64 / secs / 1e6
        );
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let eta = if rate > 0.0 {
            format!(
                "{:.0} s",
                (self.total.saturating_sub(self.done)) as f64 / rate
            )
        } else {
            "?".into()
        };
        format!(
            "{}: {} of {} MiB ({pct:.0}%), {:.1} MB/s, ETA {eta}, now {}",
            self.verb,
            self.done >> 20,
            self.total >> 20,
            rate / 1e6,
            self.file
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

//! `posed run`, `posed watch`, `posed config check`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::signals::{SecondSignal, StopSignals};
use crate::config::Config;
use crate::daemon::client::{watch, WatchOptions};
use crate::daemon::notify::Notifier;
use crate::daemon::run as run_daemon;
use crate::daemon::setup::{check_config, check_labels, parts_from_config, Checking};
use crate::predict::uncovered_objects_warning;

/// The daemon's configuration: a file, or the demo's.
#[derive(Debug, clap::Args)]
pub struct ConfigOrDemo {
    /// Configuration file ([networks], [engines], [source], [pipeline], [stream],
    /// [service]).
    #[arg(long, required_unless_present = "demo")]
    pub config: Option<PathBuf>,
    /// The demo: data/demo.toml (an image sequence over the bundled ycbv-mini scenes,
    /// looping, CPU backend, the test networks). No camera, no GPU.
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
    /// The data folder of --demo (default: ./data when it has demo.toml, else the
    /// repository's data folder).
    #[arg(long, requires = "demo")]
    pub data: Option<PathBuf>,
}

impl ConfigOrDemo {
    /// The configuration file.
    pub fn path(&self) -> PathBuf {
        match &self.config {
            Some(path) => path.clone(),
            None => demo_data(self.data.as_deref()).join("demo.toml"),
        }
    }
}

/// Arguments of `posed run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigOrDemo,
    /// Pose stream socket (overrides [stream] socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Stop after publishing this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
}

/// Arguments of `posed watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Pose stream socket (default: $POSED_SOCKET, else /run/posed/poses.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the raw JSON lines (for jq).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep watching across restarts of posed: wait for it when it is not there yet, and
    /// reconnect (within 2 s) when it stops or refuses the subscriber. Only a stream that
    /// breaks the protocol ends the watch.
    #[arg(long)]
    pub follow: bool,
}

/// `posed config ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file as `posed run` would at start: every key, the files it
    /// names (networks against their contracts, models); prints a summary.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// `posed camera ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CameraCommand {
    /// Describe a V4L2 camera (driver, capabilities, formats and sizes), or list the
    /// /dev/video* nodes when no device is given.
    Info {
        /// The device node (e.g. /dev/video0).
        device: Option<PathBuf>,
    },
}

/// `posed camera ...`.
pub fn run_camera(command: &CameraCommand) -> anyhow::Result<()> {
    match command {
        CameraCommand::Info {
            device: Some(device),
        } => {
            print!("{}", crate::source::v4l2::describe(device)?);
        }
        CameraCommand::Info { device: None } => {
            let devices = crate::source::v4l2::list_devices();
            if devices.is_empty() {
                println!(
                    "no /dev/video* nodes: no camera is connected, or its driver is not loaded"
                );
            }
            for device in devices {
                match crate::source::v4l2::describe(&device) {
                    Ok(text) => print!("{text}"),
                    Err(e) => println!("{}: {e}", device.display()),
                }
                println!();
            }
        }
    }
    Ok(())
}

/// The data folder of the demo.
fn demo_data(given: Option<&Path>) -> PathBuf {
    if let Some(dir) = given {
        return dir.to_owned();
    }
    let here = PathBuf::from("data");
    if here.join("demo.toml").is_file() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// Logs to stderr; without timestamps under systemd (journald adds its own), in colour
/// only on a terminal (not into a file, a pipe or the journal).
pub(super) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if under_systemd {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// `posed run`.
pub fn run_run(args: &RunArgs) -> anyhow::Result<()> {
    init_logging();
    let config_path = args.config.path();
    let mut config = Config::load(&config_path)?;
    if let Some(socket) = &args.socket {
        config.stream.socket = socket.clone();
    }
    // While loading a signal exits at once, with success: nothing is bound yet. Once
    // running the daemon stops cleanly (nothing it does at start waits, so that is within
    // a second).
    let signals = StopSignals::install(|_| 0, SecondSignal::Waits)?;
    let notifier = Notifier::from_env()?;
    tracing::info!(
        "posed {}: starting from {}",
        env!("CARGO_PKG_VERSION"),
        config_path.display()
    );
    let (parts, mut options) = parts_from_config(&config)?;
    signals.loaded();
    options.max_frames = args.frames;
    let report = run_daemon(
        parts,
        options,
        Arc::clone(&signals.shutdown),
        notifier,
        None,
    )?;
    let stopped_by = signals
        .received()
        .map_or_else(String::new, |(_, name)| format!(" on {name}"));
    tracing::info!(
        "posed: stopped{stopped_by}: {} frames captured, {} published, {} dropped, {} \
         failed, {} camera loss(es), {} subscriber(s), {} pause(s) without subscribers \
         ({} stale frames dropped after them){}",
        report.captured,
        report.published,
        report.dropped,
        report.failed,
        report.camera_lost,
        report.subscribers,
        report.idle_periods,
        report.stale_dropped,
        if report.source_ended {
            ", the sequence ended"
        } else {
            ""
        }
    );
    Ok(())
}

/// `posed watch`.
pub fn run_watch(args: &WatchArgs) -> anyhow::Result<()> {
    let socket = args
        .socket
        .clone()
        .or_else(|| std::env::var_os("POSED_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/posed/poses.sock"));
    let options = WatchOptions {
        json: args.json,
        count: args.count,
        follow: args.follow,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let report = watch(&socket, options, &mut out, &mut std::io::stderr())?;
    if !args.json {
        eprintln!(
            "posed watch: {} frame(s), {} dropped by the server for this subscriber",
            report.frames, report.dropped
        );
    }
    Ok(())
}

/// `posed config ...`.
pub fn run_config(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = Config::load(file)?;
            // What `posed run` checks before loading anything, by the same code.
            let notes = check_config(&config, Checking::Ahead)?;
            let mut networks = Vec::new();
            for (role, path) in config.networks.by_role() {
                let network = posed_engines::Network::open(path)
                    .with_context(|| format!("networks.{role}"))?;
                let found = network.sidecar().role;
                anyhow::ensure!(
                    found == role,
                    "networks.{role}: {} is a {found} network",
                    path.display()
                );
                println!("networks.{role}: {} ok", path.display());
                networks.push((role, network));
            }
            if let Some(models) = &config.pipeline.models {
                let set = crate::bop::models::ModelSet::load(models).context("pipeline.models")?;
                check_labels(&config, &set)?;
                for (role, network) in &networks {
                    let labels = &config.pipeline.labels;
                    if let Some(warning) = uncovered_objects_warning(network, *role, labels, &set) {
                        println!("warning: networks.{role}: {warning}");
                    }
                }
                println!(
                    "pipeline.models: {} objects in {}",
                    set.objects.len(),
                    models.display()
                );
            }
            let source = match config.source.kind {
                crate::config::SourceKind::V4l2 => format!(
                    "camera {} ({} x {} at {} fps, {:?})",
                    config.source.device.display(),
                    config.source.width,
                    config.source.height,
                    config.source.fps,
                    config.source.format
                ),
                crate::config::SourceKind::Sequence => format!(
                    "sequence {}",
                    config
                        .source
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .or_else(|| config.source.glob.clone())
                        .unwrap_or_default()
                ),
            };
            println!("source: {source}");
            println!(
                "stream: {} (mode {}, group {})",
                config.stream.socket.display(),
                config.stream.mode,
                config.stream.group.as_deref().unwrap_or("the daemon's")
            );
            for note in notes {
                println!("note: {note}");
            }
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

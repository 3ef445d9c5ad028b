//! `posed bench`: the daemon's latency, throughput, CPU, memory and energy on this machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::run::ConfigOrDemo;
use super::signals::{SecondSignal, StopSignals};
use crate::bench::clocks::{jetson_power_mode, ClockMeter};
use crate::bench::power::PowerMeter;
use crate::bench::{format_report, private_socket, run_bench, BenchOptions, Meters};
use crate::bop::atomic::{check_writable, write_atomically};
use crate::config::{Config, SourceKind};
use crate::daemon::setup::parts_from_config;

/// Whether to measure power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerMode {
    /// Measure with whatever meters the system has; none is not an error.
    Auto,
    /// Do not measure power.
    Off,
    /// Fail when the system has no readable meter (for scripts on the device).
    Required,
}

/// Arguments of `posed bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The configuration, as `posed run` takes it.
    #[command(flatten)]
    pub config: ConfigOrDemo,
    /// Frames measured.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub frames: u64,
    /// Frames run first and not measured (at least 1: the last one's publication starts
    /// the clock).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub warmup: u64,
    /// An image sequence's rate, frames per second (0: as fast as the pipeline takes
    /// them) [default: source.rate_hz].
    #[arg(long)]
    pub rate_hz: Option<f64>,
    /// Power measurement.
    #[arg(long, value_enum, default_value = "auto")]
    pub power: PowerMode,
    /// Seconds of idle power measured before the first frame (engines loaded, no
    /// frames), to tell the energy the frames cost from what the machine draws anyway.
    #[arg(long, default_value_t = 3.0)]
    pub idle_s: f64,
    /// Power sampling interval, milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub sample_ms: u64,
    /// Where sysfs is (tests point it at a copy).
    #[arg(long, default_value = "/", hide = true)]
    pub sysfs_root: PathBuf,
    /// Pose stream socket during the bench [default: a private one, removed after].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write every measured frame, power sample and clock sample as CSV files into
    /// this folder (frames.csv, power.csv, clocks.csv), for plots.
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
}

/// `posed bench`.
pub fn run_bench_command(args: &BenchArgs) -> anyhow::Result<()> {
    super::run::init_logging();
    let config_path = args.config.path();
    anyhow::ensure!(
        args.idle_s.is_finite() && (0.0..=3600.0).contains(&args.idle_s),
        "--idle-s: expected seconds from 0 to 3600, found {}",
        args.idle_s
    );
    if let Some(json) = &args.json {
        check_writable(json)?;
    }
    if let Some(dir) = &args.trace_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--trace-dir {}: cannot create it", dir.display()))?;
        check_writable(&dir.join("frames.csv"))?;
    }
    let mut config = Config::load(&config_path)?;
    config.stream.socket = args.socket.clone().unwrap_or_else(private_socket);
    if let Some(rate_hz) = args.rate_hz {
        anyhow::ensure!(
            config.source.kind == SourceKind::Sequence,
            "--rate-hz: {} reads a camera, whose rate is source.fps",
            config_path.display()
        );
        anyhow::ensure!(
            rate_hz == 0.0 || (0.001..=1000.0).contains(&rate_hz),
            "--rate-hz: expected frames per second from 0.001 to 1000, or 0 (as fast as \
             possible), found {rate_hz}"
        );
        config.source.rate_hz = rate_hz;
    }
    if config.source.kind == SourceKind::Sequence && !config.source.looping {
        tracing::warn!(
            "source.loop is false: the bench stops when the sequence ends, perhaps before \
             {} frames",
            args.warmup + args.frames
        );
    }

    let meter = match args.power {
        PowerMode::Off => None,
        PowerMode::Auto | PowerMode::Required => {
            let meter = PowerMeter::discover(&args.sysfs_root)?;
            if meter.rails.is_empty() {
                let skipped = meter.skipped.join("; ");
                anyhow::ensure!(
                    args.power == PowerMode::Auto,
                    "--power required: no readable power meter under {} (INA3221 / INA2xx \
                     hwmon, ina3221x, RAPL){}{skipped}",
                    args.sysfs_root.display(),
                    if skipped.is_empty() { "" } else { ": " }
                );
                tracing::info!(
                    "no power meter on this machine{}{skipped}: energy is not measured",
                    if skipped.is_empty() { "" } else { ": " }
                );
                None
            } else {
                Some(meter)
            }
        }
    };

    // While the networks load a signal ends the process at once, with 128 + its number;
    // then it stops the bench, which reports what it measured.
    let signals = StopSignals::install(|signal| 128 + signal, SecondSignal::Waits)?;
    tracing::info!(
        "posed bench: loading {} ({} warm-up + {} measured frames)",
        config_path.display(),
        args.warmup,
        args.frames
    );
    let (parts, daemon_options) = parts_from_config(&config)?;
    signals.loaded();
    let options = BenchOptions {
        frames: args.frames,
        warmup: args.warmup,
        idle: if meter.is_some() {
            Duration::from_secs_f64(args.idle_s)
        } else {
            Duration::ZERO
        },
        sample_interval: Duration::from_millis(args.sample_ms),
    };
    let meters = Meters {
        power: meter,
        clocks: ClockMeter::discover(&args.sysfs_root)?,
        // Only the machine's own: a copied sysfs tree has no nvpmodel beside it.
        power_mode: (args.sysfs_root == std::path::Path::new("/"))
            .then(jetson_power_mode)
            .flatten(),
    };
    let run = run_bench(
        parts,
        daemon_options,
        &options,
        meters,
        signals.shutdown,
        config_path.display().to_string(),
    )?;
    let report = &run.report;
    print!("{}", format_report(report));
    if let Some(dir) = &args.trace_dir {
        for path in run.traces.write_csv(dir)? {
            println!("wrote {}", path.display());
        }
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_vec_pretty(report).context("encoding the report")?;
        text.push(b'\n');
        write_atomically(path, |out| out.write_all(&text))?;
    }
    Ok(())
}

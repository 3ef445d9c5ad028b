//! `posed bench`: the on-device latency and energy harness.
//!
//! It runs the daemon itself (the configuration's source, networks and pipeline, the pose
//! stream on a private socket) for some warm-up frames and then a measured number of
//! frames, and reports:
//! - per stage, the latency distribution of the measured frames (the same per-stage
//!   latencies every published frame carries);
//! - the frame rate, dropped and failed frames, objects per frame;
//! - the CPU time the process used (cores busy on average) and its peak resident memory;
//! - with the power meters sysfs exposes ([`power`]: the INA3221 rails on Jetson, RAPL on
//!   x86), per rail and for the whole the mean power while idle (engines loaded, no
//!   frames) and while running, and the energy per frame, in total and above idle.
//!
//! It lives in the runtime, not in `benches/`, because it must run where the daemon
//! runs: on the robot, from the installed package, where there is no cargo.

pub mod clocks;
pub mod power;
mod report;
mod sysfs;

pub use report::{format_report, Traces};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::daemon::message::StageLatencies;
use crate::daemon::notify::Notifier;
use crate::daemon::unix::{peak_resident_mib, process_cpu_s, thread_cpu_s};
use crate::daemon::{run as run_daemon, DaemonOptions, DaemonParts, RunReport};
use crate::source::monotonic_ns;
use crate::{Error, Result};
use clocks::{ClockMeter, ClockTrace};
use power::{EnergyTrace, PowerMeter};

/// How to run a bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Frames measured, after the warm-up.
    pub frames: u64,
    /// Frames run before measuring (engines warm up, caches fill, clocks rise); at least
    /// 1: the last one's publication starts the clock.
    pub warmup: u64,
    /// How long to measure the idle power before the first frame (engines loaded).
    pub idle: Duration,
    /// Power sampling interval.
    pub sample_interval: Duration,
}

/// Latency of one stage over the measured frames, milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    /// The stage (as in the pose stream's `latency_ns`).
    pub stage: &'static str,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One rail's power and energy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RailSummary {
    /// Rail name (`VDD_IN`, `package-0`, `whole`).
    pub rail: String,
    /// Where it was found.
    pub origin: String,
    /// Mean power while idle, W (null without an idle measurement).
    pub idle_w: Option<f64>,
    /// Mean power over the measured frames, W.
    pub running_w: f64,
    /// Energy per measured frame, J.
    pub energy_per_frame_j: f64,
    /// Energy per frame above the idle power, J (null without an idle measurement).
    pub energy_per_frame_above_idle_j: Option<f64>,
}

/// One clock over the measured frames.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockSummary {
    /// `cpu policy0 (cpus 0 1 2 3)`, `devfreq 17000000.gpu`.
    pub clock: String,
    /// Its governor.
    pub governor: Option<String>,
    /// The highest frequency allowed (the power mode's cap), MHz.
    pub max_mhz: Option<f64>,
    /// Mean of the frequencies read during the measured frames, MHz.
    pub mean_mhz: Option<f64>,
}

/// What the power meters measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerSummary {
    /// What the whole is (`VDD_IN`, `the sum of 4 rail(s)`).
    pub whole: String,
    /// The whole, then each rail.
    pub rails: Vec<RailSummary>,
    /// Samples taken.
    pub samples: usize,
    /// Sampling interval, ms.
    pub sample_interval_ms: f64,
    /// Failed readings, all rails together.
    pub read_errors: u64,
    /// Meters found and not used, with why.
    pub skipped: Vec<String>,
}

/// The report of a bench.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The configuration file.
    pub config: String,
    /// The machine (Jetson model or CPU), cores, kernel.
    pub machine: String,
    /// The frame source, its size and format.
    pub source: String,
    /// The Jetson power mode (`nvpmodel -q`), where there is one.
    pub power_mode: Option<String>,
    /// CPU frequency policies and devfreq devices (a Jetson's GPU among them).
    pub clocks: Vec<ClockSummary>,
    /// Frames run before measuring.
    pub warmup_frames: u64,
    /// Frames measured.
    pub frames: u64,
    /// From the last warm-up frame's publication to the last measured one's, s.
    pub measured_s: f64,
    /// Frames published per second over that time.
    pub frames_per_s: f64,
    /// Frames dropped by the pipeline (a newer one overtook them) during the whole run.
    pub dropped: u64,
    /// Of those, the frames dropped before inference (a source faster than inference;
    /// never with a sequence played at rate 0, whose frames are read on demand).
    pub dropped_before_inference: u64,
    /// Frames whose inference failed during the whole run.
    pub failed: u64,
    /// Mean objects per measured frame.
    pub objects_per_frame: f64,
    /// Per stage latency, then `total` (capture to publish).
    pub latency: Vec<StageSummary>,
    /// CPU time of the process over the measured frames, s (user + system).
    pub cpu_s: f64,
    /// CPU time over wall time: how many cores were busy on average.
    pub cores_busy: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_resident_mib: f64,
    /// Cores the power and clock samplers kept busy on average (their CPU time over
    /// their life, summed); inside `cores_busy` and the energy. Null without samplers.
    pub sampler_cores: Option<f64>,
    /// Power and energy; null when no meter was found or asked for.
    pub power: Option<PowerSummary>,
    /// Why a part is missing, what to keep in mind.
    pub notes: Vec<String>,
}

/// What the publish thread records, all allocated before the first frame.
struct Recorder {
    warmup: u64,
    seen: u64,
    latencies: Vec<StageLatencies>,
    /// Per measured frame: its publication instant and object count.
    published: Vec<(u64, usize)>,
    objects: u64,
    window_start_ns: Option<u64>,
    window_end_ns: u64,
    cpu_at_start_s: f64,
    cpu_at_end_s: f64,
}

/// What `posed bench` reads besides the frames.
#[derive(Debug, Default)]
pub struct Meters {
    /// Power meters, sampled from before the idle period to the end.
    pub power: Option<PowerMeter>,
    /// Clocks, sampled over the run.
    pub clocks: ClockMeter,
    /// The Jetson power mode, read before the run.
    pub power_mode: Option<String>,
}

/// Runs the daemon's `parts` for `options.warmup + options.frames` frames and measures
/// them, and what `meters` read. The pose stream is served on
/// `daemon_options.stream.socket` meanwhile.
///
/// # Errors
/// The daemon fails; the power meter's first reading fails; the run ends (a sequence
/// that does not loop, a stop signal) before any measured frame.
pub fn run_bench(
    parts: DaemonParts,
    mut daemon_options: DaemonOptions,
    options: &BenchOptions,
    meters: Meters,
    shutdown: Arc<AtomicBool>,
    config: String,
) -> Result<BenchRun> {
    if options.warmup == 0 {
        return Err(Error::Invalid {
            what: "bench warm-up frames".into(),
            reason: "expected at least 1: the last warm-up frame's publication starts the \
                     clock"
                .into(),
        });
    }
    let info = parts.source.info().clone();
    let source = format!(
        "{} ({} x {}, {})",
        info.name, info.width, info.height, info.format
    );
    let sampler = meters
        .power
        .map(|meter| meter.start(options.sample_interval))
        .transpose()?;
    let clock_sampler = if meters.clocks.is_empty() {
        None
    } else {
        Some(meters.clocks.start(options.sample_interval)?)
    };
    let idle_ns = if sampler.is_some() && !options.idle.is_zero() {
        let start = monotonic_ns();
        std::thread::sleep(options.idle);
        Some((start, monotonic_ns()))
    } else {
        None
    };

    let frames = usize::try_from(options.frames).map_err(|_| Error::Invalid {
        what: "bench frames".into(),
        reason: format!("{} is too many", options.frames),
    })?;
    let recorder = Arc::new(Mutex::new(Recorder {
        warmup: options.warmup,
        seen: 0,
        latencies: Vec::with_capacity(frames),
        published: Vec::with_capacity(frames),
        objects: 0,
        window_start_ns: None,
        window_end_ns: 0,
        cpu_at_start_s: 0.0,
        cpu_at_end_s: 0.0,
    }));
    let observer = {
        let recorder = Arc::clone(&recorder);
        Box::new(move |pose: &crate::daemon::message::PoseFrame, _: &_| {
            let mut recorder = recorder.lock().unwrap_or_else(PoisonError::into_inner);
            recorder.seen += 1;
            if recorder.seen == recorder.warmup {
                recorder.window_start_ns = Some(pose.t_publish_ns);
                recorder.cpu_at_start_s = process_cpu_s();
            } else if recorder.seen > recorder.warmup
                && recorder.latencies.len() < recorder.latencies.capacity()
            {
                recorder.latencies.push(pose.latency_ns);
                recorder
                    .published
                    .push((pose.t_publish_ns, pose.objects.len()));
                recorder.objects += pose.objects.len() as u64;
                recorder.window_end_ns = pose.t_publish_ns;
                // Here, not after the run: the next frame is already being inferred.
                recorder.cpu_at_end_s = process_cpu_s();
            }
        })
    };
    daemon_options.max_frames = Some(options.warmup.saturating_add(options.frames));
    // The bench has no subscriber: it measures frames, not a pause.
    daemon_options.service.idle_without_subscribers = false;
    let run: RunReport = run_daemon(
        parts,
        daemon_options,
        shutdown,
        Notifier::disabled(),
        Some(observer),
    )?;
    let trace = sampler.map(SamplingThread::finish_with_cost).transpose()?;
    let clock_trace = clock_sampler
        .map(SamplingThread::finish_with_cost)
        .transpose()?;
    // The samplers run beside the pipeline and their cost is inside the CPU time and the
    // energy measured: said, so that it can be weighed.
    let sampler_costs = [
        trace.as_ref().map(|(_, cost)| *cost),
        clock_trace.as_ref().map(|(_, cost)| *cost),
    ];
    let sampler_cores = sampler_costs
        .iter()
        .flatten()
        .map(|cost| cost.cpu_s / cost.wall_s.max(f64::MIN_POSITIVE))
        .reduce(|a, b| a + b);
    let trace = trace.map(|(trace, _)| trace);
    let clock_trace = clock_trace.map(|(trace, _)| trace);
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| Error::Invalid {
            what: "bench".into(),
            reason: "the daemon kept its frame observer".into(),
        })?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);

    let measured = recorder.latencies.len() as u64;
    let window_start_ns = recorder.window_start_ns.unwrap_or(recorder.window_end_ns);
    if measured == 0 {
        return Err(Error::Invalid {
            what: "bench".into(),
            reason: format!(
                "no frame was measured: the run stopped after {} frame(s) ({} warm-up asked){}",
                run.published,
                options.warmup,
                if run.source_ended {
                    ", the sequence ended (set source.loop = true)"
                } else {
                    ""
                }
            ),
        });
    }
    let measured_s = recorder.window_end_ns.saturating_sub(window_start_ns) as f64 * 1e-9;
    let mut notes = Vec::new();
    if measured < options.frames {
        notes.push(format!(
            "stopped after {measured} of {} measured frames{}",
            options.frames,
            if run.source_ended {
                " (the sequence ended)"
            } else {
                " (stop signal)"
            }
        ));
    }
    let cpu_s = recorder.cpu_at_end_s - recorder.cpu_at_start_s;
    let power = trace.as_ref().map(|trace| {
        power_summary(
            trace,
            idle_ns,
            (window_start_ns, recorder.window_end_ns),
            measured,
            options.sample_interval,
            &mut notes,
        )
    });
    let report = BenchReport {
        config,
        machine: machine_description(),
        source,
        power_mode: meters.power_mode,
        clocks: clock_trace.as_ref().map_or_else(Vec::new, |trace| {
            clock_summaries(trace, window_start_ns, recorder.window_end_ns)
        }),
        warmup_frames: options.warmup,
        frames: measured,
        measured_s,
        frames_per_s: if measured_s > 0.0 {
            measured as f64 / measured_s
        } else {
            0.0
        },
        dropped: run.dropped,
        dropped_before_inference: run.dropped_before_infer,
        failed: run.failed,
        objects_per_frame: recorder.objects as f64 / measured as f64,
        latency: stage_summaries(&recorder.latencies),
        cpu_s,
        cores_busy: if measured_s > 0.0 {
            cpu_s / measured_s
        } else {
            0.0
        },
        peak_resident_mib: peak_resident_mib(),
        sampler_cores,
        power,
        notes,
    };
    Ok(BenchRun {
        report,
        traces: Traces {
            window_start_ns,
            frames: recorder
                .published
                .into_iter()
                .zip(recorder.latencies)
                .map(|((t_publish_ns, objects), latency)| (t_publish_ns, objects, latency))
                .collect(),
            energy: trace,
            clocks: clock_trace,
        },
    })
}

/// A bench's report and the samples behind it.
#[derive(Debug)]
pub struct BenchRun {
    /// The summary.
    pub report: BenchReport,
    /// Every measured frame and sample.
    pub traces: Traces,
}

/// The latency summary of every stage over `frames`.
pub fn stage_summaries(frames: &[StageLatencies]) -> Vec<StageSummary> {
    let Some(first) = frames.first() else {
        return Vec::new();
    };
    let mut values: Vec<u64> = Vec::with_capacity(frames.len());
    first
        .named()
        .iter()
        .enumerate()
        .map(|(index, (stage, _))| {
            values.clear();
            values.extend(frames.iter().map(|frame| frame.named()[index].1));
            values.sort_unstable();
            let ms = |p: f64| percentile(&values, p).map_or(0.0, |ns| ns as f64 * 1e-6);
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
            StageSummary {
                stage,
                mean_ms: mean * 1e-6,
                p50_ms: ms(50.0),
                p90_ms: ms(90.0),
                p99_ms: ms(99.0),
                max_ms: ms(100.0),
            }
        })
        .collect()
}

/// The nearest-rank percentile of sorted `values`: the smallest value with at least `p`
/// percent of the values at or below it (None without values).
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn power_summary(
    trace: &EnergyTrace,
    idle_ns: Option<(u64, u64)>,
    (start_ns, end_ns): (u64, u64),
    frames: u64,
    interval: Duration,
    notes: &mut Vec<String>,
) -> PowerSummary {
    let seconds = |(from, to): (u64, u64)| to.saturating_sub(from) as f64 * 1e-9;
    let running_s = seconds((start_ns, end_ns));
    if running_s < 20.0 * interval.as_secs_f64() {
        notes.push(format!(
            "the measured frames took {running_s:.2} s, under 20 power samples: measure \
             more frames for a steadier energy figure"
        ));
    }
    if !trace.covers(start_ns, end_ns) {
        notes.push("the power samples do not cover the measured frames".into());
    }
    let idle = idle_ns.filter(|&window| seconds(window) > 0.0);
    let summarise = |rail: String, origin: String, energy: &dyn Fn(u64, u64) -> f64| {
        let running_j = energy(start_ns, end_ns);
        let running_w = if running_s > 0.0 {
            running_j / running_s
        } else {
            0.0
        };
        let idle_w = idle.map(|window| energy(window.0, window.1) / seconds(window));
        let per_frame = running_j / frames as f64;
        RailSummary {
            rail,
            origin,
            idle_w,
            running_w,
            energy_per_frame_j: per_frame,
            energy_per_frame_above_idle_j: idle_w
                .map(|idle_w| (running_w - idle_w) * running_s / frames as f64),
        }
    };
    let mut rails = vec![summarise(
        "whole".into(),
        trace.whole_description.clone(),
        &|from, to| trace.whole_energy_j(from, to),
    )];
    for (index, name) in trace.rails.iter().enumerate() {
        rails.push(summarise(
            name.clone(),
            trace.origins[index].clone(),
            &|from, to| trace.energy_j(index, from, to),
        ));
    }
    PowerSummary {
        whole: trace.whole_description.clone(),
        rails,
        samples: trace.samples(),
        sample_interval_ms: interval.as_secs_f64() * 1e3,
        read_errors: trace.read_errors.iter().sum(),
        skipped: trace.skipped.clone(),
    }
}

/// Each clock's settings and mean frequency over `[start_ns, end_ns]`.
fn clock_summaries(trace: &ClockTrace, start_ns: u64, end_ns: u64) -> Vec<ClockSummary> {
    trace
        .clocks
        .iter()
        .enumerate()
        .map(|(index, clock)| ClockSummary {
            clock: clock.name.clone(),
            governor: clock.governor.clone(),
            max_mhz: clock.max_hz.map(|hz| hz * 1e-6),
            mean_mhz: trace.mean_hz(index, start_ns, end_ns).map(|hz| hz * 1e-6),
        })
        .collect()
}

/// The machine in one line: the device-tree model (a Jetson's), else the CPU model; the
/// cores; the kernel.
pub fn machine_description() -> String {
    let model = std::fs::read("/proc/device-tree/model")
        .ok()
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .trim()
                .to_owned()
        })
        .filter(|model| !model.is_empty())
        .or_else(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cores} core(s), Linux {kernel}")
}

/// A thread that samples meters every `interval` until it is stopped, then hands back
/// what it gathered.
pub struct SamplingThread<T> {
    what: &'static str,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(T, SamplerCost)>>,
}

/// What a sampling thread cost: its own CPU time over its life, s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerCost {
    /// CPU time of the thread, s.
    pub cpu_s: f64,
    /// From its start to its end, s.
    pub wall_s: f64,
}

impl<T> Drop for SamplingThread<T> {
    /// A sampler dropped unfinished (the run failed) stops too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl<T: Send + 'static> SamplingThread<T> {
    /// Calls `sample(&mut state)` every `interval`, and once more when stopped; then
    /// `finish(state)` is what [`SamplingThread::finish`] returns. `what` names it in
    /// errors and the thread's name.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn spawn<S: Send + 'static>(
        what: &'static str,
        interval: Duration,
        mut state: S,
        mut sample: impl FnMut(&mut S) + Send + 'static,
        finish: impl FnOnce(S) -> T + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(format!("posed-{what}"))
            .spawn(move || {
                let (started, cpu_at_start_s) = (Instant::now(), thread_cpu_s());
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    sample(&mut state);
                }
                sample(&mut state);
                let gathered = finish(state);
                let cost = SamplerCost {
                    cpu_s: thread_cpu_s() - cpu_at_start_s,
                    wall_s: started.elapsed().as_secs_f64(),
                };
                (gathered, cost)
            })
            .map_err(|e| Error::Invalid {
                what: format!("{what} sampler"),
                reason: format!("cannot start its thread: {e}"),
            })?;
        Ok(Self {
            what,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops sampling (after one last sample) and returns what was gathered.
    ///
    /// # Errors
    /// The sampling thread panicked.
    pub fn finish(self) -> Result<T> {
        self.finish_with_cost().map(|(gathered, _)| gathered)
    }

    /// [`SamplingThread::finish`], with what the thread cost.
    ///
    /// # Errors
    /// The sampling thread panicked.
    pub fn finish_with_cost(mut self) -> Result<(T, SamplerCost)> {
        self.stop.store(true, Ordering::Relaxed);
        let panicked = || Error::Invalid {
            what: format!("{} sampler", self.what),
            reason: "its thread panicked".into(),
        };
        let handle = self.handle.take().ok_or_else(panicked)?;
        handle.join().map_err(|_| panicked())
    }
}

/// The default socket of a bench: private to this process.
pub fn private_socket() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("posed-bench-{}.sock", std::process::id()))
}

#[cfg(test)]
mod tests;

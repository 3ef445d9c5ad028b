//! The clocks a latency or energy figure depends on, read for `posed bench`: each CPU
//! frequency policy (`/sys/devices/system/cpu/cpufreq/policyN`: `scaling_cur_freq` and
//! `scaling_max_freq` in kHz, `scaling_governor`, `affected_cpus`) and each devfreq
//! device (`/sys/class/devfreq/NAME`: `cur_freq` and `max_freq` in Hz, `governor`; on a
//! Jetson the GPU, `17000000.gpu` or `17000000.ga10b` on Orin, and the engines beside
//! it), and the Jetson power mode (`nvpmodel -q`). A Jetson's latency moves with its
//! power mode and clocks (`nvpmodel`, `jetson_clocks`), so a report without them cannot
//! be compared with another.
//!
//! The current frequencies are sampled on a thread during the run and averaged over the
//! measured frames.

use std::path::Path;
use std::time::Duration;

use super::sysfs::{read_text, sorted_entries, SysfsNumber};
use super::SamplingThread;
use crate::source::monotonic_ns;
use crate::Result;

/// One clock.
#[derive(Debug)]
struct Clock {
    name: String,
    current: SysfsNumber,
    /// Hz per unit of the attribute (1000 for cpufreq's kHz, 1 for devfreq's Hz).
    hz_per_unit: f64,
    max_hz: Option<f64>,
    governor: Option<String>,
}

/// The clocks found on this system.
#[derive(Debug, Default)]
pub struct ClockMeter {
    clocks: Vec<Clock>,
}

/// What is known about one clock after a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockInfo {
    /// `cpu policy0 (cpus 0 1 2 3)`, `devfreq 17000000.gpu`.
    pub name: String,
    /// The governor, when the clock has one.
    pub governor: Option<String>,
    /// The highest frequency allowed now (the power mode's cap), Hz.
    pub max_hz: Option<f64>,
}

impl ClockMeter {
    /// Finds the clocks under `root` (`/` on a real system). None found is not an
    /// error.
    ///
    /// # Errors
    /// A folder that exists but cannot be listed.
    pub fn discover(root: &Path) -> Result<Self> {
        let mut clocks = Vec::new();
        for policy in sorted_entries(&root.join("sys/devices/system/cpu/cpufreq"))? {
            let Some(file_name) = policy.file_name().map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            if !file_name.starts_with("policy") {
                continue;
            }
            let Ok(current) = SysfsNumber::open(policy.join("scaling_cur_freq")) else {
                continue;
            };
            let cpus = read_text(&policy.join("affected_cpus")).unwrap_or_default();
            clocks.push(Clock {
                name: format!("cpu {file_name} (cpus {cpus})"),
                current,
                hz_per_unit: 1e3,
                max_hz: number(&policy.join("scaling_max_freq")).map(|khz| khz * 1e3),
                governor: read_text(&policy.join("scaling_governor")),
            });
        }
        for device in sorted_entries(&root.join("sys/class/devfreq"))? {
            let Some(file_name) = device.file_name().map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            let Ok(current) = SysfsNumber::open(device.join("cur_freq")) else {
                continue;
            };
            clocks.push(Clock {
                name: format!("devfreq {file_name}"),
                current,
                hz_per_unit: 1.0,
                max_hz: number(&device.join("max_freq")),
                governor: read_text(&device.join("governor")),
            });
        }
        Ok(Self { clocks })
    }

    /// Whether any clock was found.
    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }

    /// Starts sampling the current frequencies every `interval` on a thread of its own.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(self, interval: Duration) -> Result<SamplingThread<ClockTrace>> {
        let mut trace = ClockTrace {
            clocks: self
                .clocks
                .iter()
                .map(|clock| ClockInfo {
                    name: clock.name.clone(),
                    governor: clock.governor.clone(),
                    max_hz: clock.max_hz,
                })
                .collect(),
            t_ns: Vec::with_capacity(4096),
            hz: Vec::with_capacity(4096 * self.clocks.len()),
        };
        self.sample(&mut trace);
        SamplingThread::spawn(
            "clocks",
            interval,
            (self, trace),
            |(meter, trace)| meter.sample(trace),
            |(_, trace)| trace,
        )
    }

    /// Reads every clock now into `trace`.
    fn sample(&self, trace: &mut ClockTrace) {
        trace.t_ns.push(monotonic_ns());
        for clock in &self.clocks {
            // A failed reading is a missing value, not a zero frequency.
            let hz = clock
                .current
                .read()
                .map_or(f64::NAN, |value| value as f64 * clock.hz_per_unit);
            trace.hz.push(hz);
        }
    }
}

/// A small number attribute, as f64.
fn number(path: &Path) -> Option<f64> {
    read_text(path)?.parse::<f64>().ok()
}

/// Frequencies read over time.
#[derive(Debug, Clone)]
pub struct ClockTrace {
    /// The clocks, in the order of each sample's values.
    pub clocks: Vec<ClockInfo>,
    /// Sample instants, CLOCK_MONOTONIC ns.
    pub t_ns: Vec<u64>,
    /// Per sample, each clock's frequency (Hz; NaN where the reading failed).
    pub hz: Vec<f64>,
}

impl ClockTrace {
    /// The mean of clock `clock`'s readings taken in `[from_ns, to_ns]`; None when there
    /// is none.
    pub fn mean_hz(&self, clock: usize, from_ns: u64, to_ns: u64) -> Option<f64> {
        let stride = self.clocks.len();
        let (sum, count) = self
            .t_ns
            .iter()
            .enumerate()
            .filter(|(_, &t)| from_ns <= t && t <= to_ns)
            .map(|(sample, _)| self.hz[sample * stride + clock])
            .filter(|hz| hz.is_finite())
            .fold((0.0, 0usize), |(sum, count), hz| (sum + hz, count + 1));
        (count > 0).then(|| sum / count as f64)
    }
}

/// The Jetson power mode as `nvpmodel -q` prints it (`NV Power Mode: 15W`), when the
/// tool is installed and answers.
pub fn jetson_power_mode() -> Option<String> {
    let output = std::process::Command::new("nvpmodel")
        .arg("-q")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("NV Power Mode"))
        .map(|line| line.chars().filter(|c| !c.is_control()).take(80).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/bench/testdata")
            .join(name)
    }

    #[test]
    fn orin_nano_clocks_are_its_two_cpu_clusters_and_its_gpu() {
        let meter = ClockMeter::discover(&testdata("orin-nano")).expect("discover");
        let names: Vec<&str> = meter.clocks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cpu policy0 (cpus 0 1 2 3)",
                "cpu policy4 (cpus 4 5)",
                "devfreq 17000000.gpu"
            ]
        );
        let gpu = &meter.clocks[2];
        assert_eq!(gpu.governor.as_deref(), Some("nvhost_podgov"));
        assert_eq!(gpu.max_hz, Some(624_750_000.0));
        // cpufreq is in kHz.
        assert_eq!(meter.clocks[0].max_hz, Some(1_510_400_000.0));
        let trace = meter
            .start(Duration::from_millis(1))
            .expect("start")
            .finish()
            .expect("finish");
        let last = *trace.t_ns.last().expect("a sample");
        assert_eq!(trace.mean_hz(0, 0, last), Some(729_600_000.0));
        assert_eq!(trace.mean_hz(2, 0, last), Some(305_250_000.0));
        assert_eq!(trace.mean_hz(2, last + 1, last + 2), None);
    }

    #[test]
    fn the_mean_takes_the_window_and_skips_failed_readings() {
        let trace = ClockTrace {
            clocks: vec![ClockInfo {
                name: "gpu".into(),
                governor: None,
                max_hz: None,
            }],
            t_ns: vec![10, 20, 30, 40],
            hz: vec![100.0, f64::NAN, 300.0, 1000.0],
        };
        assert_eq!(trace.mean_hz(0, 10, 30), Some(200.0));
        assert_eq!(trace.mean_hz(0, 15, 25), None);
        assert_eq!(trace.mean_hz(0, 0, 100), Some(1400.0 / 3.0));
    }

    #[test]
    fn a_machine_without_clocks_has_none() {
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(ClockMeter::discover(empty.path())
            .expect("discover")
            .is_empty());
    }
}

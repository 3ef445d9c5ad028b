//! A bench's report as text for a terminal, and its traces as CSV files for plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::clocks::ClockTrace;
use super::power::EnergyTrace;
use super::BenchReport;
use crate::daemon::message::StageLatencies;
use crate::Result;

/// The report as text, for a terminal.
pub fn format_report(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "posed bench: {}", report.config);
    let _ = writeln!(out, "machine: {}", report.machine);
    let _ = writeln!(out, "source:  {}", report.source);
    if let Some(mode) = &report.power_mode {
        let _ = writeln!(out, "power mode: {mode}");
    }
    for clock in &report.clocks {
        let mhz = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "clock:   {}: {} MHz on average of {} MHz allowed{}",
            clock.clock,
            mhz(clock.mean_mhz),
            mhz(clock.max_mhz),
            clock
                .governor
                .as_ref()
                .map_or_else(String::new, |g| format!(", governor {g}"))
        );
    }
    let _ = writeln!(
        out,
        "{} frame(s) measured after {} warm-up, in {:.2} s: {:.2} frames/s, {:.1} objects \
         per frame, {} dropped, {} failed",
        report.frames,
        report.warmup_frames,
        report.measured_s,
        report.frames_per_s,
        report.objects_per_frame,
        report.dropped,
        report.failed
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "latency (ms)      mean       p50       p90       p99       max"
    );
    for stage in &report.latency {
        let _ = writeln!(
            out,
            "  {:<10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            stage.stage, stage.mean_ms, stage.p50_ms, stage.p90_ms, stage.p99_ms, stage.max_ms
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "cpu: {:.2} core(s) busy on average ({:.2} s of CPU time), peak resident memory \
         {:.0} MiB",
        report.cores_busy, report.cpu_s, report.peak_resident_mib
    );
    if let Some(cores) = report.sampler_cores {
        let _ = writeln!(
            out,
            "samplers: {cores:.4} core(s) busy reading the meters (inside the CPU and energy \
             figures)"
        );
    }
    match &report.power {
        None => {}
        Some(power) => {
            let _ = writeln!(
                out,
                "power: {} sample(s) every {:.0} ms, the whole is {}{}",
                power.samples,
                power.sample_interval_ms,
                power.whole,
                if power.read_errors > 0 {
                    format!(", {} failed reading(s)", power.read_errors)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                out,
                "  rail                 idle W   running W    J/frame   J/frame above idle"
            );
            let optional = |value: Option<f64>, decimals: usize| {
                value.map_or_else(|| "-".to_owned(), |v| fixed(v, decimals))
            };
            for rail in &power.rails {
                let _ = writeln!(
                    out,
                    "  {:<18} {:>8} {:>11.3} {:>10.4} {:>20}",
                    rail.rail,
                    optional(rail.idle_w, 3),
                    rail.running_w,
                    rail.energy_per_frame_j,
                    optional(rail.energy_per_frame_above_idle_j, 4)
                );
            }
            for skipped in &power.skipped {
                let _ = writeln!(out, "  not measured: {skipped}");
            }
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// `value` with `decimals` decimals, without the sign of a value that rounds to zero
/// (an energy above idle of -1e-17 J is no energy, not "-0.0000").
fn fixed(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    match text.strip_prefix('-') {
        Some(magnitude) if magnitude.bytes().all(|b| b == b'0' || b == b'.') => {
            magnitude.to_owned()
        }
        _ => text,
    }
}

/// Every measured frame and every power and clock sample of a bench, for plots (a
/// Jetson that heats up throttles its clocks minutes into a run: a summary hides it).
#[derive(Debug)]
pub struct Traces {
    /// The instant the measured frames' clock started, CLOCK_MONOTONIC ns.
    pub window_start_ns: u64,
    /// Per measured frame: publication instant (ns), objects, stage latencies.
    pub frames: Vec<(u64, usize, StageLatencies)>,
    /// Power samples.
    pub energy: Option<EnergyTrace>,
    /// Clock samples.
    pub clocks: Option<ClockTrace>,
}

impl Traces {
    /// Writes `frames.csv` (one row per measured frame: publication time, objects, each
    /// stage's latency in ms), and where sampled `power.csv` (per sample, each rail's
    /// mean power since the previous sample, W) and `clocks.csv` (each clock, MHz), all
    /// with times in seconds from the start of the measured frames (negative before).
    /// Returns the files written.
    ///
    /// # Errors
    /// A file cannot be written.
    pub fn write_csv(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let seconds = |t_ns: u64| (t_ns as f64 - self.window_start_ns as f64) * 1e-9;
        let mut written = Vec::new();
        let mut write = |name: &str, text: String| -> Result<()> {
            let path = dir.join(name);
            crate::bop::atomic::write_atomically(&path, |out| out.write_all(text.as_bytes()))?;
            written.push(path);
            Ok(())
        };

        let mut text = String::from("frame,t_s,objects");
        for (stage, _) in StageLatencies::default().named() {
            let _ = write!(text, ",{stage}_ms");
        }
        text.push('\n');
        for (index, (t_ns, objects, latency)) in self.frames.iter().enumerate() {
            let _ = write!(text, "{},{:.6},{objects}", index + 1, seconds(*t_ns));
            for (_, ns) in latency.named() {
                let _ = write!(text, ",{:.3}", ns as f64 * 1e-6);
            }
            text.push('\n');
        }
        write("frames.csv", text)?;

        if let Some(energy) = &self.energy {
            let stride = energy.rails.len();
            let mut text = String::from("t_s");
            for rail in &energy.rails {
                let _ = write!(text, ",{}_w", csv_name(rail));
            }
            text.push('\n');
            for sample in 1..energy.t_ns.len() {
                let dt_s = (energy.t_ns[sample] - energy.t_ns[sample - 1]) as f64 * 1e-9;
                let _ = write!(text, "{:.6}", seconds(energy.t_ns[sample]));
                for rail in 0..stride {
                    let before = energy.cumulative_j[(sample - 1) * stride + rail];
                    let after = energy.cumulative_j[sample * stride + rail];
                    let power_w = (after - before) / dt_s;
                    if power_w.is_finite() {
                        let _ = write!(text, ",{power_w:.4}");
                    } else {
                        text.push(',');
                    }
                }
                text.push('\n');
            }
            write("power.csv", text)?;
        }

        if let Some(clocks) = &self.clocks {
            let stride = clocks.clocks.len();
            let mut text = String::from("t_s");
            for clock in &clocks.clocks {
                let _ = write!(text, ",{}_mhz", csv_name(&clock.name));
            }
            text.push('\n');
            for (sample, t_ns) in clocks.t_ns.iter().enumerate() {
                let _ = write!(text, "{:.6}", seconds(*t_ns));
                for hz in &clocks.hz[sample * stride..(sample + 1) * stride] {
                    if hz.is_finite() {
                        let _ = write!(text, ",{:.1}", hz * 1e-6);
                    } else {
                        text.push(',');
                    }
                }
                text.push('\n');
            }
            write("clocks.csv", text)?;
        }
        Ok(written)
    }
}

/// `name` as a CSV column name: letters, digits and `_` (`cpu policy0 (cpus 0 1)` ->
/// `cpu_policy0_cpus_0_1`).
fn csv_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_round_to_zero_lose_their_sign() {
        assert_eq!(fixed(-1e-17, 4), "0.0000");
        assert_eq!(fixed(-0.0, 2), "0.00");
        assert_eq!(fixed(-0.25, 2), "-0.25");
        assert_eq!(fixed(1.23456, 3), "1.235");
    }

    #[test]
    fn csv_names_keep_letters_digits_and_single_underscores() {
        assert_eq!(
            csv_name("cpu policy0 (cpus 0 1 2 3)"),
            "cpu_policy0_cpus_0_1_2_3"
        );
        assert_eq!(csv_name("devfreq 17000000.gpu"), "devfreq_17000000_gpu");
        assert_eq!(csv_name("VDD_IN"), "VDD_IN");
        assert_eq!(csv_name("ina238 hwmon2/power1"), "ina238_hwmon2_power1");
    }
}

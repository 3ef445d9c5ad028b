//! The power meters a Linux system exposes in sysfs, found and read for `posed bench`.
//!
//! - **Jetson Orin** (JetPack 5 and 6, L4T 35 / 36): INA3221 monitors under the mainline
//!   `ina3221` hwmon driver. Each channel has a label (`in1_label` = `VDD_IN`, ...), a bus
//!   voltage in mV (`in1_input`) and a current in mA (`curr1_input`): power = V x I.
//!   Channels 4 to 7 of the driver are shunt voltages and sums, not rails. A channel
//!   labelled `NC` is not connected.
//! - **Jetson Thor and other INA2xx boards**: `ina2xx` / `ina238`-style hwmon chips with
//!   `powerN_input` in uW.
//! - **Older Jetsons** (L4T 32: Nano, TX2, Xavier): the `ina3221x` IIO driver, with
//!   `rail_name_N` and `in_powerN_input` in mW.
//! - **x86 (Intel RAPL)**: `/sys/class/powercap/intel-rapl:*` energy counters in uJ that
//!   wrap at `max_energy_range_uj`. Since Linux 5.10 only root may read them.
//!
//! Which rail is the whole: a rail that measures the module's input (`VDD_IN` on Orin
//! Nano and NX, `POM_5V_IN` on L4T 32 boards, RAPL's `psys`) when there is one; else,
//! beside INA3221 rails, the INA2xx monitors (the input they are fed from, as Thor's
//! INA238: an assumption, not checked on a Thor); else the sum of the top-level rails
//! (AGX Orin's, RAPL's packages and DRAM; a package's `core` and `uncore` sub-zones are
//! inside it and left out). The INA3221s sit on the module: the carrier board is not
//! measured.
//!
//! The sampler reads every rail at a fixed interval on its own thread and keeps, per rail,
//! the energy used since it started (trapezoids between power readings, or the counter's
//! advance), so that [`EnergyTrace::energy_j`] gives the energy between any two instants
//! of CLOCK_MONOTONIC, the clock the pipeline's timestamps use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sysfs::{read_text, sorted_entries, SysfsNumber};
use super::SamplingThread;
use crate::source::monotonic_ns;
use crate::{Error, Result};

/// Rail names that measure a whole module's (or platform's) input.
const WHOLE_INPUT_RAILS: [&str; 3] = ["VDD_IN", "POM_5V_IN", "psys"];

/// How one rail is read.
#[derive(Debug)]
enum Reading {
    /// Bus voltage (mV) and current (mA): INA3221 on hwmon.
    VoltsAmps {
        voltage_mv: SysfsNumber,
        current_ma: SysfsNumber,
    },
    /// Power in uW (hwmon `powerN_input`).
    PowerMicrowatts(SysfsNumber),
    /// Power in mW (the L4T 32 `ina3221x` IIO driver).
    PowerMilliwatts(SysfsNumber),
    /// An energy counter in uJ that wraps at `wrap_uj` (RAPL).
    EnergyMicrojoules { counter: SysfsNumber, wrap_uj: u64 },
}

/// One power rail.
#[derive(Debug)]
pub struct Rail {
    /// Its name (`VDD_IN`, `package-0`, ...).
    pub name: String,
    /// Where it was found (`ina3221 1-0040 channel 1`, `intel-rapl:0`).
    pub origin: String,
    /// Counted in the sum of the whole when no rail measures the whole input (false for
    /// a RAPL sub-zone, which its package contains).
    pub top_level: bool,
    reading: Reading,
}

/// How the whole power is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whole {
    /// One rail measures the module's input.
    Rail(usize),
    /// The sum of these rails.
    Sum(Vec<usize>),
}

/// The rails found on this system.
#[derive(Debug)]
pub struct PowerMeter {
    /// Every readable rail.
    pub rails: Vec<Rail>,
    /// Which of them make the whole.
    pub whole: Whole,
    /// What was found and not used, with why (unreadable counters, disabled channels).
    pub skipped: Vec<String>,
}

impl PowerMeter {
    /// Finds the power meters under `root` (`/` on a real system; a copy of a sysfs tree
    /// in tests). None found is not an error: `rails` is empty.
    ///
    /// # Errors
    /// A folder that exists but cannot be listed.
    pub fn discover(root: &Path) -> Result<Self> {
        let mut rails = Vec::new();
        let mut skipped = Vec::new();
        discover_hwmon(root, &mut rails, &mut skipped)?;
        discover_iio_ina3221x(root, &mut rails, &mut skipped)?;
        discover_rapl(root, &mut rails, &mut skipped)?;
        let whole = match rails
            .iter()
            .position(|rail| WHOLE_INPUT_RAILS.contains(&rail.name.as_str()))
        {
            Some(index) => Whole::Rail(index),
            None => {
                // An INA2xx next to INA3221s measures the input the INA3221 rails are
                // fed from (Jetson Thor's INA238): summing both would count twice.
                let input_monitors: Vec<usize> = rails
                    .iter()
                    .enumerate()
                    .filter(|(_, rail)| matches!(rail.reading, Reading::PowerMicrowatts(_)))
                    .map(|(index, _)| index)
                    .collect();
                let has_ina3221 = rails
                    .iter()
                    .any(|rail| matches!(rail.reading, Reading::VoltsAmps { .. }));
                if has_ina3221 && !input_monitors.is_empty() {
                    Whole::Sum(input_monitors)
                } else {
                    Whole::Sum(
                        rails
                            .iter()
                            .enumerate()
                            .filter(|(_, rail)| rail.top_level)
                            .map(|(index, _)| index)
                            .collect(),
                    )
                }
            }
        };
        Ok(Self {
            rails,
            whole,
            skipped,
        })
    }

    /// What the whole is, in words (`VDD_IN`, `the sum of 4 rails`).
    pub fn whole_description(&self) -> String {
        match &self.whole {
            Whole::Rail(index) => self.rails[*index].name.clone(),
            Whole::Sum(indices) => format!("the sum of {} rail(s)", indices.len()),
        }
    }

    /// Starts sampling every rail each `interval` on a thread of its own.
    ///
    /// # Errors
    /// A first reading fails (the rail is named), or the thread cannot start.
    pub fn start(self, interval: Duration) -> Result<SamplingThread<EnergyTrace>> {
        let mut state = SamplerState::new(&self.rails);
        state.sample(&self.rails, monotonic_ns())?;
        SamplingThread::spawn(
            "power",
            interval,
            (self, state),
            |(meter, state)| {
                // A failed reading (an I2C error) skips this rail for one sample; the
                // next good one integrates across the gap.
                let _ = state.sample(&meter.rails, monotonic_ns());
            },
            |(meter, state)| state.finish(meter),
        )
    }
}

/// Reads one rail: power in W, or a counter in uJ.
enum Value {
    PowerW(f64),
    CounterUj(u64),
}

fn read_rail(rail: &Rail) -> Result<Value> {
    Ok(match &rail.reading {
        Reading::VoltsAmps {
            voltage_mv,
            current_ma,
        } => Value::PowerW(voltage_mv.read()? as f64 * current_ma.read()? as f64 * 1e-6),
        Reading::PowerMicrowatts(number) => Value::PowerW(number.read()? as f64 * 1e-6),
        Reading::PowerMilliwatts(number) => Value::PowerW(number.read()? as f64 * 1e-3),
        Reading::EnergyMicrojoules { counter, .. } => {
            let value = counter.read()?;
            Value::CounterUj(u64::try_from(value).map_err(|_| Error::Sensor {
                path: counter.path.clone(),
                detail: format!("expected a non-negative energy counter, found {value}"),
            })?)
        }
    })
}

/// The sampler's running state: per rail the last reading and the energy so far.
struct SamplerState {
    last_t_ns: Vec<Option<u64>>,
    last_power_w: Vec<f64>,
    last_counter_uj: Vec<u64>,
    wrap_uj: Vec<u64>,
    energy_j: Vec<f64>,
    read_errors: Vec<u64>,
    t_ns: Vec<u64>,
    cumulative_j: Vec<f64>,
}

impl SamplerState {
    fn new(rails: &[Rail]) -> Self {
        let count = rails.len();
        Self {
            last_t_ns: vec![None; count],
            last_power_w: vec![0.0; count],
            last_counter_uj: vec![0; count],
            wrap_uj: rails
                .iter()
                .map(|rail| match rail.reading {
                    Reading::EnergyMicrojoules { wrap_uj, .. } => wrap_uj,
                    _ => 0,
                })
                .collect(),
            energy_j: vec![0.0; count],
            read_errors: vec![0; count],
            t_ns: Vec::with_capacity(4096),
            cumulative_j: Vec::with_capacity(4096 * count),
        }
    }

    /// Reads every rail at `t_ns`, adds each one's energy since its last reading, and
    /// records a sample. Returns the first error (after reading the other rails).
    fn sample(&mut self, rails: &[Rail], t_ns: u64) -> Result<()> {
        let mut first_error = None;
        self.t_ns.push(t_ns);
        for (index, rail) in rails.iter().enumerate() {
            match read_rail(rail) {
                Ok(value) => {
                    self.add(index, t_ns, &value);
                    self.cumulative_j.push(self.energy_j[index]);
                }
                Err(e) => {
                    // Not known here: the next good reading integrates across the gap,
                    // and the trace interpolates between the two.
                    self.cumulative_j.push(f64::NAN);
                    self.read_errors[index] += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn add(&mut self, index: usize, t_ns: u64, value: &Value) {
        let previous = self.last_t_ns[index].replace(t_ns);
        match *value {
            Value::PowerW(power_w) => {
                if let Some(previous) = previous {
                    let seconds = t_ns.saturating_sub(previous) as f64 * 1e-9;
                    self.energy_j[index] += 0.5 * (self.last_power_w[index] + power_w) * seconds;
                }
                self.last_power_w[index] = power_w;
            }
            Value::CounterUj(counter_uj) => {
                if previous.is_some() {
                    let advance = counter_advance_uj(
                        self.last_counter_uj[index],
                        counter_uj,
                        self.wrap_uj[index],
                    );
                    self.energy_j[index] += advance as f64 * 1e-6;
                }
                self.last_counter_uj[index] = counter_uj;
            }
        }
    }

    fn finish(self, meter: PowerMeter) -> EnergyTrace {
        EnergyTrace {
            rails: meter.rails.iter().map(|rail| rail.name.clone()).collect(),
            origins: meter.rails.iter().map(|rail| rail.origin.clone()).collect(),
            whole: meter.whole.clone(),
            whole_description: meter.whole_description(),
            skipped: meter.skipped,
            read_errors: self.read_errors,
            t_ns: self.t_ns,
            cumulative_j: self.cumulative_j,
        }
    }
}

/// How far a counter advanced from `before` to `after`; a counter that went down wrapped
/// at `wrap` (0: unknown, the decrease is taken as a reset and counts nothing).
pub fn counter_advance_uj(before: u64, after: u64, wrap: u64) -> u64 {
    if after >= before {
        after - before
    } else if wrap > before {
        wrap - before + after
    } else {
        0
    }
}

/// Energy used per rail over time.
#[derive(Debug, Clone)]
pub struct EnergyTrace {
    /// Rail names.
    pub rails: Vec<String>,
    /// Where each rail was found.
    pub origins: Vec<String>,
    /// Which rails make the whole.
    pub whole: Whole,
    /// The whole, in words.
    pub whole_description: String,
    /// Meters found and not used.
    pub skipped: Vec<String>,
    /// Failed readings per rail.
    pub read_errors: Vec<u64>,
    /// Sample instants, CLOCK_MONOTONIC ns.
    pub t_ns: Vec<u64>,
    /// Per sample, each rail's energy since the first sample (J), rail-major per sample;
    /// NaN where that rail's reading failed.
    pub cumulative_j: Vec<f64>,
}

impl EnergyTrace {
    /// Samples taken.
    pub fn samples(&self) -> usize {
        self.t_ns.len()
    }

    /// Rail `rail`'s energy since the first sample at `t_ns`, linear between samples and
    /// held constant outside them.
    fn cumulative_at(&self, rail: usize, t_ns: u64) -> f64 {
        let stride = self.rails.len();
        let at = |sample: usize| self.cumulative_j[sample * stride + rail];
        // The rail's good samples around `t_ns` (a failed reading left a NaN).
        let n = self.t_ns.partition_point(|&t| t <= t_ns);
        let before = (0..n).rev().find(|&i| at(i).is_finite());
        let after = (n..self.t_ns.len()).find(|&i| at(i).is_finite());
        match (before, after) {
            (Some(b), Some(a)) => {
                let (t0, t1) = (self.t_ns[b], self.t_ns[a]);
                let fraction = (t_ns - t0) as f64 / (t1 - t0) as f64;
                at(b) + (at(a) - at(b)) * fraction
            }
            (Some(only), None) | (None, Some(only)) => at(only),
            (None, None) => 0.0,
        }
    }

    /// Energy of rail `rail` between two instants (J).
    pub fn energy_j(&self, rail: usize, from_ns: u64, to_ns: u64) -> f64 {
        self.cumulative_at(rail, to_ns) - self.cumulative_at(rail, from_ns)
    }

    /// Energy of the whole between two instants (J).
    pub fn whole_energy_j(&self, from_ns: u64, to_ns: u64) -> f64 {
        match &self.whole {
            Whole::Rail(index) => self.energy_j(*index, from_ns, to_ns),
            Whole::Sum(indices) => indices
                .iter()
                .map(|&index| self.energy_j(index, from_ns, to_ns))
                .sum(),
        }
    }

    /// Whether the samples cover `[from_ns, to_ns]`.
    pub fn covers(&self, from_ns: u64, to_ns: u64) -> bool {
        matches!((self.t_ns.first(), self.t_ns.last()), (Some(&first), Some(&last)) if first <= from_ns && to_ns <= last)
    }
}

/// The device a hwmon folder belongs to (`1-0040`), else the folder's own name. The
/// `device` link names it; where there is none, the real path does
/// (`.../1-0040/hwmon/hwmon1`: `/sys/class/hwmon/hwmon1` is a link to it).
fn device_name(dir: &Path) -> String {
    let from_link = std::fs::read_link(dir.join("device"))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
    let from_path = || {
        let real = std::fs::canonicalize(dir).ok()?;
        let parent = real.parent()?;
        let device = parent.parent()?.file_name()?;
        // `/sys/class/hwmon/hwmonN` itself, when it is not a link.
        if parent.file_name()? != "hwmon" || device == "class" {
            return None;
        }
        Some(device.to_string_lossy().into_owned())
    };
    from_link.or_else(from_path).unwrap_or_else(|| {
        dir.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    })
}

/// Whether an attribute is readable now (a disabled INA3221 channel answers ENODATA, a
/// RAPL counter EACCES for users since Linux 5.10).
fn try_open(path: PathBuf, skipped: &mut Vec<String>, what: &str) -> Option<SysfsNumber> {
    match SysfsNumber::open(path.clone()).and_then(|number| number.read().map(|_| number)) {
        Ok(number) => Some(number),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            skipped.push(format!(
                "{what}: {} is readable by root only (Linux restricts RAPL counters since \
                 5.10; run as root to measure it)",
                path.display()
            ));
            None
        }
        Err(e) => {
            skipped.push(format!("{what}: {e}"));
            None
        }
    }
}

/// hwmon chips: INA3221 channels (V x I) and INA2xx power channels (uW).
fn discover_hwmon(root: &Path, rails: &mut Vec<Rail>, skipped: &mut Vec<String>) -> Result<()> {
    for dir in sorted_entries(&root.join("sys/class/hwmon"))? {
        let Some(chip) = read_text(&dir.join("name")) else {
            continue;
        };
        let device = device_name(&dir);
        if chip == "ina3221" {
            for channel in 1..=3 {
                let voltage = dir.join(format!("in{channel}_input"));
                let current = dir.join(format!("curr{channel}_input"));
                if !voltage.exists() || !current.exists() {
                    continue;
                }
                let name = read_text(&dir.join(format!("in{channel}_label")))
                    .filter(|label| !label.is_empty())
                    .unwrap_or_else(|| format!("{device}/in{channel}"));
                let origin = format!("ina3221 {device} channel {channel}");
                if name == "NC" {
                    continue;
                }
                if read_text(&dir.join(format!("in{channel}_enable"))).as_deref() == Some("0") {
                    skipped.push(format!("{name} ({origin}): channel disabled"));
                    continue;
                }
                let what = format!("{name} ({origin})");
                let (Some(voltage_mv), Some(current_ma)) = (
                    try_open(voltage, skipped, &what),
                    try_open(current, skipped, &what),
                ) else {
                    continue;
                };
                rails.push(Rail {
                    name,
                    origin,
                    top_level: true,
                    reading: Reading::VoltsAmps {
                        voltage_mv,
                        current_ma,
                    },
                });
            }
        } else if chip.starts_with("ina") {
            for channel in 1..=8 {
                let power = dir.join(format!("power{channel}_input"));
                if !power.exists() {
                    continue;
                }
                let name = read_text(&dir.join(format!("power{channel}_label")))
                    .filter(|label| !label.is_empty())
                    .unwrap_or_else(|| format!("{chip} {device}/power{channel}"));
                let origin = format!("{chip} {device} power{channel}");
                push_power_rail(
                    rails,
                    skipped,
                    (name, origin),
                    power,
                    Reading::PowerMicrowatts,
                );
            }
        }
    }
    Ok(())
}

/// Adds the top-level rail `name` read from the power attribute `path` as `reading`
/// says, when it reads.
fn push_power_rail(
    rails: &mut Vec<Rail>,
    skipped: &mut Vec<String>,
    (name, origin): (String, String),
    path: PathBuf,
    reading: fn(SysfsNumber) -> Reading,
) {
    let what = format!("{name} ({origin})");
    if let Some(number) = try_open(path, skipped, &what) {
        rails.push(Rail {
            name,
            origin,
            top_level: true,
            reading: reading(number),
        });
    }
}

/// L4T 32's `ina3221x` IIO driver: `rail_name_N`, `in_powerN_input` (mW).
fn discover_iio_ina3221x(
    root: &Path,
    rails: &mut Vec<Rail>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    for device_dir in sorted_entries(&root.join("sys/bus/i2c/drivers/ina3221x"))? {
        let device = device_dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for iio in sorted_entries(&device_dir)? {
            let is_iio = iio
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("iio:device"));
            if !is_iio {
                continue;
            }
            for channel in 0..=2 {
                let power = iio.join(format!("in_power{channel}_input"));
                if !power.exists() {
                    continue;
                }
                let name = read_text(&iio.join(format!("rail_name_{channel}")))
                    .filter(|label| !label.is_empty())
                    .unwrap_or_else(|| format!("{device}/power{channel}"));
                let origin = format!("ina3221x {device} channel {channel}");
                push_power_rail(
                    rails,
                    skipped,
                    (name, origin),
                    power,
                    Reading::PowerMilliwatts,
                );
            }
        }
    }
    Ok(())
}

/// Intel RAPL zones: `intel-rapl:N` (packages, psys) and `intel-rapl:N:M` (their parts).
fn discover_rapl(root: &Path, rails: &mut Vec<Rail>, skipped: &mut Vec<String>) -> Result<()> {
    for dir in sorted_entries(&root.join("sys/class/powercap"))? {
        let Some(zone) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(indices) = zone.strip_prefix("intel-rapl:") else {
            continue;
        };
        let Some(name) = read_text(&dir.join("name")) else {
            continue;
        };
        let wrap_uj = read_text(&dir.join("max_energy_range_uj"))
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let origin = zone.clone();
        let what = format!("{name} ({origin})");
        // A package's sub-zones (core, uncore) are inside it; DRAM is not.
        let top_level = !indices.contains(':') || name == "dram";
        if let Some(counter) = try_open(dir.join("energy_uj"), skipped, &what) {
            rails.push(Rail {
                name,
                origin,
                top_level,
                reading: Reading::EnergyMicrojoules { counter, wrap_uj },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

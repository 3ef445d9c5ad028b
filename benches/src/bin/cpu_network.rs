//! Times one pose network (B x 6 x 240 x 320 -> B x 9) on the CPU backend, on both
//! executors, and checks that they agree: for networks too large for the repository, such
//! as the EfficientNet-B3-sized refiner `tools/make_bench_networks.py` writes.
//!
//! ```text
//! cargo run --release -p posed-benches --bin cpu_network -- NETWORK.onnx \
//!     [--batch 1] [--threads 1] [--seconds 5] [--profile] [--planned-only]
//! ```
//!
//! `--threads N` runs a batch's items on N threads (the planned executor's worker
//! threads; tract's plan stays on one). `--profile` also prints the planned executor's
//! slowest steps and the time per kind of step (`POSED_PROFILE_STEPS` of them, 15 by
//! default). Compare with `benches/onnxruntime_compare.py NETWORK.onnx`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use posed_engines::cpu::{CpuExecutor, CpuModel};
use posed_engines::{CpuBackend, Model, ModelOptions, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CROP_VALUES: usize = 6 * 240 * 320;

struct Args {
    network: PathBuf,
    batch: usize,
    threads: usize,
    seconds: f64,
    profile: bool,
    planned_only: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        network: PathBuf::new(),
        batch: 1,
        threads: 1,
        seconds: 5.0,
        profile: false,
        planned_only: false,
    };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--batch" => {
                args.batch = rest
                    .next()
                    .context("--batch needs a number")?
                    .parse()
                    .context("--batch")?
            }
            "--threads" => {
                args.threads = rest
                    .next()
                    .context("--threads needs a number")?
                    .parse()
                    .context("--threads")?
            }
            "--seconds" => {
                args.seconds = rest
                    .next()
                    .context("--seconds needs a number")?
                    .parse()
                    .context("--seconds")?
            }
            "--profile" => args.profile = true,
            "--planned-only" => args.planned_only = true,
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            path => args.network = PathBuf::from(path),
        }
    }
    if args.network.as_os_str().is_empty() {
        bail!("usage: cpu_network NETWORK.onnx [--batch N] [--threads N] [--seconds S] [--profile] [--planned-only]");
    }
    Ok(args)
}

fn load(args: &Args, executor: CpuExecutor) -> anyhow::Result<(CpuModel, Duration)> {
    let network = Network::open(&args.network)
        .with_context(|| format!("opening {}", args.network.display()))?;
    let options = ModelOptions {
        max_batch: args.batch,
        ..ModelOptions::default()
    };
    let started = Instant::now();
    let (model, _) = CpuBackend::new()
        .with_executor(executor)
        .with_threads(args.threads)
        .load_with_outcome(network, options)?;
    Ok((model, started.elapsed()))
}

/// Mean time of one run over about `seconds`, and the outputs of the last run.
fn time_runs(
    model: &CpuModel,
    input: &[f32],
    batch: usize,
    seconds: f64,
) -> anyhow::Result<(Duration, Vec<f32>)> {
    let mut session = model.new_session()?;
    let mut outputs = session.allocate_outputs();
    let shape = [batch, 6, 240, 320];
    session.run(input, &shape, &mut outputs)?;
    let (mut runs, started) = (0u32, Instant::now());
    while runs < 2 || started.elapsed().as_secs_f64() < seconds {
        session.run(input, &shape, &mut outputs)?;
        runs += 1;
    }
    let per_run = started.elapsed() / runs;
    let values = outputs
        .tensors()
        .first()
        .and_then(|t| t.f32s())
        .context("the network wrote no f32 output")?
        .to_vec();
    Ok((per_run, values))
}

fn print_profile(model: &CpuModel, item: &[f32]) -> anyhow::Result<()> {
    let Some(steps) = model.profile(item, 3)? else {
        println!(
            "profile: the graph runs on tract's plan ({:?})",
            model.planned_refusal()
        );
        return Ok(());
    };
    let shown = std::env::var("POSED_PROFILE_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    print!(
        "profile: {}",
        posed_engines::cpu::profile_summary(&steps, shown)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let input: Vec<f32> = (0..args.batch * CROP_VALUES)
        .map(|_| rng.random::<f32>())
        .collect();
    println!(
        "{}, batch {}, {} thread(s) for the planned executor",
        args.network.display(),
        args.batch,
        args.threads
    );
    let executors: &[CpuExecutor] = if args.planned_only {
        &[CpuExecutor::Planned]
    } else {
        &[CpuExecutor::Planned, CpuExecutor::Tract]
    };
    let mut results = Vec::new();
    for &executor in executors {
        let (model, load_time) = load(&args, executor)?;
        let (per_run, values) = time_runs(&model, &input, args.batch, args.seconds)?;
        println!(
            "{:>8}: {:8.2} ms per run, {:6.1} crops/s; loaded in {:.2} s, {:.1} MiB of session buffers",
            model.executor().name(),
            per_run.as_secs_f64() * 1e3,
            args.batch as f64 / per_run.as_secs_f64(),
            load_time.as_secs_f64(),
            model.session_buffer_bytes() as f64 / (1024.0 * 1024.0)
        );
        if args.profile && executor == CpuExecutor::Planned {
            print_profile(&model, &input[..CROP_VALUES])?;
        }
        results.push(values);
    }
    if let [planned, tract] = &results[..] {
        let largest = planned
            .iter()
            .zip(tract)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        println!(
            "planned vs tract: largest difference {largest:.2e} (relative to max(|tract|, 1))"
        );
        if !largest.is_finite() || largest > 1e-3 {
            bail!("the executors disagree");
        }
    }
    Ok(())
}

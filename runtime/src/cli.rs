//! The `posed` command line. `main.rs` only calls [`main`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::bop::dataset::BopDataset;
use crate::bop::results::{read_results, write_results};
use crate::bop::targets::read_targets;
use crate::eval::{all_instance_targets, evaluate, EvalOptions, TargetSource};
use crate::synth::{synth_estimates, SynthOptions};

/// posed: CosyPose 6D object pose estimation at the edge.
#[derive(Debug, Parser)]
#[command(name = "posed", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate a BOP19 results CSV against a BOP dataset (AUC of ADD / ADD-S / ADD(-S),
    /// mAP@ADD-S<0.1d, BOP19 AR_MSSD and AR_MSPD).
    Eval(EvalArgs),
    /// Write synthetic estimates (ground truth plus noise, misses and false positives)
    /// as a BOP19 results CSV, for demos and benches.
    SynthResults(SynthArgs),
}

/// Arguments of `posed eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// BOP dataset folder (with models/, camera.json and the split folder).
    #[arg(long)]
    pub dataset: PathBuf,
    /// BOP19 results CSV (scene_id,im_id,obj_id,score,R,t,time).
    #[arg(long)]
    pub results: PathBuf,
    /// BOP19 targets JSON. Without it, CosyPose's meters use every ground-truth instance
    /// (top-1 estimate per image and object) and the BOP19 recalls use
    /// DATASET/test_targets_bop19.json when it exists.
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// Objects ADD(-S) treats as asymmetric although models_info.json gives them
    /// symmetries (CosyPose's YCB-V evaluation does this for the master chef can and the
    /// large marker), comma-separated ids.
    #[arg(long, value_delimiter = ',')]
    pub symmetric_as_asymmetric: Vec<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Dataset split folder.
    #[arg(long, default_value = "test")]
    pub split: String,
}

/// Arguments of `posed synth-results`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// BOP dataset folder.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output CSV (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = SynthOptions::default().seed)]
    pub seed: u64,
    /// Dataset split folder.
    #[arg(long, default_value = "test")]
    pub split: String,
}

/// Parses the process arguments and runs the command; errors are printed with their
/// causes and give exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("posed: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(args) => run_eval(&args),
        Command::SynthResults(args) => run_synth(&args),
    }
}

fn load_dataset(root: &Path, split: &str) -> anyhow::Result<BopDataset> {
    BopDataset::load(root, split)
        .with_context(|| format!("loading the BOP dataset {}", root.display()))
}

fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dataset = load_dataset(&args.dataset, &args.split)?;
    let rows = read_results(&args.results)?;
    let (cosypose_targets, bop_targets) = match &args.targets {
        Some(path) => {
            let targets = read_targets(path)?;
            (
                Some(targets.clone()),
                (targets, TargetSource::File(path.clone())),
            )
        }
        None => {
            let default = args
                .dataset
                .join(format!("{}_targets_bop19.json", args.split));
            let bop = if default.exists() {
                (read_targets(&default)?, TargetSource::File(default))
            } else {
                (all_instance_targets(&dataset), TargetSource::AllInstances)
            };
            (None, bop)
        }
    };
    let options = EvalOptions {
        cosypose_targets,
        bop_targets,
        symmetric_as_asymmetric: args
            .symmetric_as_asymmetric
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        progress: true,
    };
    let report = evaluate(&dataset, &args.results, &rows, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!(
            "posed eval: {} ({} images, {} annotated instances), {} ({} estimates)\n",
            args.dataset.display(),
            dataset
                .scenes
                .values()
                .map(|s| s.images.len())
                .sum::<usize>(),
            dataset.n_gt_instances(),
            args.results.display(),
            rows.len()
        );
        print!("{}", report.to_table());
    }
    eprintln!(
        "posed eval: {} estimates evaluated in {:.3} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_synth(args: &SynthArgs) -> anyhow::Result<()> {
    let dataset = load_dataset(&args.dataset, &args.split)?;
    let options = SynthOptions {
        seed: args.seed,
        ..SynthOptions::default()
    };
    let estimates = synth_estimates(&dataset, &options);
    write_results(&args.out, &estimates)?;
    eprintln!(
        "posed synth-results: wrote {} estimates to {}",
        estimates.len(),
        args.out.display()
    );
    Ok(())
}

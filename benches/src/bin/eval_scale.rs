//! Times `posed eval` at YCB-Video scale: the ycbv-mini scenes repeated until there are
//! about 3,000 images, with synthetic estimates (about 15,000 with the default copies).
//!
//! Usage: `cargo run --release -p posed-benches --bin eval_scale [COPIES]` (default 215).

use std::time::Instant;

use posed::bop::dataset::BopDataset;
use posed::bop::results::{read_results, write_results};
use posed::bop::targets::read_targets;
use posed::eval::{evaluate, EvalOptions, TargetSource};
use posed::synth::{synth_estimates, SynthOptions};

fn main() -> anyhow::Result<()> {
    let copies: u32 = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 215,
    };
    let dir = tempfile::tempdir()?;
    let root = posed_benches::replicate_dataset(&posed_benches::ycbv_mini(), dir.path(), copies)?;
    let dataset = BopDataset::load(&root, "test")?;
    let options = SynthOptions {
        false_positives_per_image: 1.0,
        ..SynthOptions::default()
    };
    let results_path = dir.path().join("results.csv");
    write_results(&results_path, &synth_estimates(&dataset, &options))?;

    let started = Instant::now();
    let dataset = BopDataset::load(&root, "test")?;
    let loaded = started.elapsed();
    let rows = read_results(&results_path)?;
    let read = started.elapsed();
    let targets_path = root.join("test_targets_bop19.json");
    let options = EvalOptions {
        cosypose_targets: None,
        bop_targets: (
            read_targets(&targets_path)?,
            TargetSource::File(targets_path),
        ),
        symmetric_as_asymmetric: Default::default(),
        progress: false,
    };
    let report = evaluate(&dataset, &results_path, &rows, &options)?;
    let total = started.elapsed();
    let images: usize = dataset.scenes.values().map(|s| s.images.len()).sum();
    println!(
        "eval_scale: {} images, {} annotated instances, {} estimates, {} threads",
        images,
        dataset.n_gt_instances(),
        rows.len(),
        rayon::current_num_threads()
    );
    println!(
        "eval_scale: load dataset {:.3} s, read CSV {:.3} s, evaluate {:.3} s, total {:.3} s",
        loaded.as_secs_f64(),
        (read - loaded).as_secs_f64(),
        (total - read).as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "eval_scale: AUC ADD-S {:?}, AR_MSSD {:?}",
        report.auc_adds, report.ar_mssd
    );
    Ok(())
}

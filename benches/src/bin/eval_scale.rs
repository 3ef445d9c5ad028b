//! Times `posed eval` at YCB-Video scale: the ycbv-mini scenes repeated until there are
//! about 3,000 images, with synthetic estimates (about 15,000 with the default copies).
//! VSD is on (as in `posed eval`): every copy of a scene links the original's depth
//! images, and each needed pose is rendered.
//!
//! Usage: `cargo run --release -p posed-benches --bin eval_scale [COPIES] [--no-vsd]`
//! (default 215 copies).

use std::time::Instant;

use anyhow::Context;
use posed::bop::dataset::BopDataset;
use posed::bop::results::{read_results, write_results};
use posed::bop::targets::read_targets;
use posed::eval::{evaluate, EvalOptions, TargetSource};
use posed::synth::{synth_estimates, SynthOptions};

fn main() -> anyhow::Result<()> {
    let mut copies: u32 = 215;
    let mut vsd = true;
    for arg in std::env::args().skip(1) {
        if arg == "--no-vsd" {
            vsd = false;
        } else {
            copies = arg.parse().with_context(|| {
                format!("expected a number of copies or --no-vsd, found {arg:?}")
            })?;
        }
    }
    let dir = tempfile::tempdir()?;
    let source = posed_benches::ycbv_mini();
    let root = posed_benches::replicate_dataset(&source, dir.path(), copies)?;
    link_depth_images(&source, &root)?;
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
        vsd,
        device: posed::pipeline::ComputeDevice::Cpu,
    };
    let report = evaluate(&dataset, &results_path, &rows, &options)?;
    let total = started.elapsed();
    let images: usize = dataset.scenes.values().map(|s| s.images.len()).sum();
    println!(
        "eval_scale: {} images, {} annotated instances, {} estimates, {} threads, VSD {}",
        images,
        dataset.n_gt_instances(),
        rows.len(),
        rayon::current_num_threads(),
        if vsd { "on" } else { "off" }
    );
    println!(
        "eval_scale: load dataset {:.3} s, read CSV {:.3} s, evaluate {:.3} s, total {:.3} s",
        loaded.as_secs_f64(),
        (read - loaded).as_secs_f64(),
        (total - read).as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "eval_scale: AUC ADD-S {:?}, AR_VSD {:?}, AR_MSSD {:?}, AR_MSPD {:?}, AR {:?}",
        report.auc_adds, report.ar_vsd, report.ar_mssd, report.ar_mspd, report.ar
    );
    Ok(())
}

/// Links each replicated scene's `depth` folder to the original's: scene
/// `copy * 1000 + id` is a copy of scene `id` (see `replicate_dataset`).
fn link_depth_images(source: &std::path::Path, root: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(root.join("test"))? {
        let entry = entry?;
        let Some(new_id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let original = source
            .join(format!("test/{:06}/depth", new_id % 1000))
            .canonicalize()
            .context("source depth folder")?;
        std::os::unix::fs::symlink(original, entry.path().join("depth"))?;
    }
    Ok(())
}

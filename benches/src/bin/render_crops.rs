//! Times the CPU renderer on the refiner-sized batch (five ycbv-mini objects, one per
//! 240 x 320 crop, RGB + depth + mask) and optionally writes the batch as JSON, so that
//! `benches/pybullet_compare.py` renders the very same crops with pybullet.
//!
//! Usage: `cargo run --release -p posed-benches --bin render_crops -- [--threads N]
//! [--iterations N] [--write-batch FILE.json]`. Prints one JSON line with the timing.

use std::time::Instant;

use anyhow::Context;
use posed_kernels::render::{CpuRenderer, RenderItem, Shading};

fn main() -> anyhow::Result<()> {
    let mut threads = 2_usize;
    let mut iterations = 200_usize;
    let mut write_batch = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => threads = value()?.parse()?,
            "--iterations" => iterations = value()?.parse()?,
            "--write-batch" => write_batch = Some(value()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let batch = posed_benches::refiner_crop_batch()?;
    if let Some(path) = &write_batch {
        let crops: Vec<_> = (0..batch.meshes.len())
            .map(|i| {
                serde_json::json!({
                    "ply": batch.ply_paths[i],
                    "K": batch.cameras[i].intrinsics.k.transpose().as_slice(),
                    "width": batch.cameras[i].width,
                    "height": batch.cameras[i].height,
                    "R": batch.poses[i].rotation_row_major(),
                    "t_m": batch.poses[i].translation_m.as_slice(),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&crops)?)
            .with_context(|| format!("writing {path}"))?;
    }
    let instances = batch.instances();
    let items: Vec<RenderItem<'_>> = instances
        .iter()
        .zip(&batch.cameras)
        .map(|(instances, &camera)| RenderItem { camera, instances })
        .collect();
    let mut targets = batch.targets();
    let mut renderer = CpuRenderer::new(batch.meshes, threads);
    let shading = Shading::default();
    for _ in 0..5 {
        renderer.render(&items, &mut targets, &shading)?;
    }
    let mut times_ms = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        renderer.render(&items, &mut targets, &shading)?;
        times_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times_ms.sort_by(f64::total_cmp);
    let object_pixels: Vec<usize> = targets
        .iter()
        .map(|t| t.mask().iter().filter(|&&m| m != 0).count())
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "renderer": "posed CpuRenderer",
            "threads": threads,
            "crops": items.len(),
            "median_ms_per_batch": times_ms[times_ms.len() / 2],
            "min_ms_per_batch": times_ms[0],
            "object_pixels": object_pixels,
        })
    );
    Ok(())
}

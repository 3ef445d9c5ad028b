//! Times the CUDA twins on a real GPU and prints, beside each time, the floors it is
//! bounded by (issue 3: "report per-batch time for 64 crops and the ADD-S throughput on
//! 15,000 poses, with the bytes-moved and FLOP floors beside them").
//!
//! - **Device**: name, compute capability, driver, SMs, clocks, and three bandwidths
//!   measured here (a 256 MiB device-to-device copy, counting bytes read plus written; a
//!   pageable device-to-host and host-to-device copy the size of the render outputs).
//! - **Render**: `GpuRenderer` on a refiner batch of 64 crops, 240 x 320 (the five
//!   ycbv-mini objects of `posed_benches::refiner_crop_batch`, repeated with seeded pose
//!   variations), median milliseconds per batch after a warm-up; the same batch on
//!   `CpuRenderer` (2 threads) for comparison; how many pixels the two disagree on.
//! - **ADD-S**: `GpuPoseMetrics::adds_batch` on 15,000 (gt, est) pairs of one ycbv-mini
//!   model (`posed_benches::random_pose_pairs`), pairs per second; the CPU
//!   `PoseErrorModel::adds` (k-d tree, one thread) on a subset, and the largest relative
//!   difference between the two there.
//! - **Floors**: bytes moved (host <-> device transfers; device memory read or written at
//!   least once) over the measured bandwidths, and for ADD-S the FLOP count of the brute
//!   force (`points^2 * 8` per pair, f64) over the f64 rate the CUDA programming guide's
//!   throughput table gives for this compute capability (non-FMA: `metrics.cu` is
//!   compiled with `--fmad=false`).
//!
//! - **Single-view loop**: `SingleViewPipeline` on the CPU (`--cpu-threads`) and with its
//!   geometry on the device (`with_cuda`: crops, RoIAlign, renders, updates), the 4
//!   objects of ycbv-mini's first image, 2 refiner iterations, a constant non-identity
//!   network update standing in for the network (it records the first frame's inputs):
//!   milliseconds per frame and per stage for each, whether the first frame's network
//!   inputs are equal bit for bit, and the largest difference between the final poses
//!   (the twins agree bit for bit: `PASS` needs equal inputs and a difference of 0).
//!
//! Without a CUDA device it prints `SKIPPED: no CUDA device (<reason>)` and exits 0.
//! Output: human-readable lines, then one JSON line (the last line).
//!
//! Usage: `cargo run --release -p posed-benches --bin gpu_timings -- [--crops N]
//! [--iterations N] [--warmup N] [--cpu-threads N] [--cpu-iterations N] [--pairs N]
//! [--adds-repeats N] [--cpu-pairs N] [--obj-id ID] [--seed N]` (`--help` says what each
//! does). On a lent GPU machine it runs through `benches/gpu/run.sh`, from binaries built
//! by `benches/gpu/prepare.sh` (see `docs/gpu-runs.md`).

use std::time::Instant;

use anyhow::{bail, Context};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::CudaContext;
use nalgebra::{Rotation3, Vector3};
use posed::bop::models::ModelSet;
use posed_benches::{CROP_HEIGHT, CROP_WIDTH};
use posed_kernels::cuda::{
    CompiledImage, CudaDevice, GpuPoseMetrics, GpuRenderLimits, GpuRenderer,
};
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::render::{CpuRenderer, Instance, RenderItem, RenderTarget, Shading};
use posed_kernels::symmetry::{bop_symmetry_transforms, BOP_MAX_SYM_DISC_STEP};
use posed_kernels::Pose;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Bytes per pixel the GPU renderer copies back: rgb 3, depth 4, mask 1, key 8.
const RENDER_OUTPUT_BYTES_PER_PIXEL: u64 = 16;
/// Bytes per pixel of the render outputs written once on the device (rgb, depth, mask).
const RENDER_SHADED_BYTES_PER_PIXEL: u64 = 8;
/// Bytes of a visibility key.
const RENDER_KEY_BYTES: u64 = 8;
/// `GpuItem` and `GpuInstance` of `kernels/src/cuda/render.rs` (sizes asserted there).
const RENDER_ITEM_BYTES: u64 = 40;
/// See [`RENDER_ITEM_BYTES`].
const RENDER_INSTANCE_BYTES: u64 = 84;
/// A projected vertex in device memory: 6 words (`PROJECTED_VERTEX_WORDS`).
const RENDER_PROJECTED_VERTEX_BYTES: u64 = 24;
/// Per mesh vertex: position, normal, colour (3 f32 each).
const RENDER_MESH_VERTEX_BYTES: u64 = 36;
/// Per mesh triangle: 3 u32 indices.
const RENDER_MESH_TRIANGLE_BYTES: u64 = 12;
/// Per ADD-S pair sent up: the relative pose, 12 f64.
const ADDS_DELTA_BYTES: u64 = 96;
/// Per ADD-S pair sent back: the mean, one f64.
const ADDS_RESULT_BYTES: u64 = 8;
/// Floating-point operations per (GT point, estimate point) pair of the brute-force
/// nearest neighbour: 3 subtractions, 3 products, 2 sums (the `min` not counted).
const ADDS_FLOPS_PER_POINT_PAIR: f64 = 8.0;
/// Bytes per buffer of the device-to-device copy that measures memory bandwidth.
const COPY_BYTES: usize = 256 << 20;
/// Timed repetitions of each bandwidth measurement (the median is kept).
const COPY_REPEATS: usize = 10;

/// What `--help` prints.
const USAGE: &str = "\
usage: gpu_timings [--crops N] [--iterations N] [--warmup N] [--cpu-threads N]
                   [--cpu-iterations N] [--pairs N] [--adds-repeats N] [--cpu-pairs N]
                   [--obj-id ID] [--seed N]

Times GpuRenderer and GpuPoseMetrics::adds_batch on CUDA device 0, with their CPU twins
and the bytes-moved and FLOP floors; prints SKIPPED and exits 0 without a device.

  --crops N           render batch size, 240 x 320 crops (64)
  --iterations N      timed GPU render batches; the median is reported (100)
  --warmup N          untimed GPU render batches first (10)
  --cpu-threads N     CpuRenderer threads (2)
  --cpu-iterations N  timed CPU render batches (10)
  --pairs N           ADD-S pose pairs on the GPU (15000)
  --adds-repeats N    timed GPU ADD-S runs over all pairs; the median is reported (3)
  --cpu-pairs N       pairs of the CPU ADD-S figure, one thread (500)
  --obj-id ID         ycbv-mini object of the ADD-S model (1)
  --seed N            seed of the crop poses and the pose pairs";

/// Command-line settings.
#[derive(Debug, Clone)]
struct Options {
    crops: usize,
    iterations: usize,
    warmup: usize,
    cpu_threads: usize,
    cpu_iterations: usize,
    pairs: usize,
    adds_repeats: usize,
    cpu_pairs: usize,
    obj_id: u32,
    seed: u64,
}

impl Options {
    /// The settings, or `None` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Self>> {
        let mut options = Self {
            crops: 64,
            iterations: 100,
            warmup: 10,
            cpu_threads: 2,
            cpu_iterations: 10,
            pairs: 15_000,
            adds_repeats: 3,
            cpu_pairs: 500,
            obj_id: 1,
            seed: 0x6770_7533,
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number = || -> anyhow::Result<usize> {
                value
                    .parse()
                    .with_context(|| format!("{flag}: expected a whole number, found {value:?}"))
            };
            match flag.as_str() {
                "--crops" => options.crops = number()?,
                "--iterations" => options.iterations = number()?,
                "--warmup" => options.warmup = number()?,
                "--cpu-threads" => options.cpu_threads = number()?,
                "--cpu-iterations" => options.cpu_iterations = number()?,
                "--pairs" => options.pairs = number()?,
                "--adds-repeats" => options.adds_repeats = number()?,
                "--cpu-pairs" => options.cpu_pairs = number()?,
                "--obj-id" => options.obj_id = u32::try_from(number()?)?,
                "--seed" => options.seed = u64::try_from(number()?)?,
                other => bail!(
                    "unknown argument {other}; expected --crops, --iterations, --warmup, \
                     --cpu-threads, --cpu-iterations, --pairs, --adds-repeats, --cpu-pairs, \
                     --obj-id or --seed"
                ),
            }
        }
        for (name, value) in [
            ("--crops", options.crops),
            ("--iterations", options.iterations),
            ("--cpu-threads", options.cpu_threads),
            ("--cpu-iterations", options.cpu_iterations),
            ("--pairs", options.pairs),
            ("--adds-repeats", options.adds_repeats),
            ("--cpu-pairs", options.cpu_pairs),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        Ok(Some(options))
    }
}

fn main() -> anyhow::Result<()> {
    let Some(options) = Options::parse(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let device = match CudaDevice::open(0) {
        Ok(device) => device,
        Err(error) => {
            println!("SKIPPED: no CUDA device ({error})");
            println!("{}", json!({"skipped": true, "reason": error.to_string()}));
            return Ok(());
        }
    };
    let models_dir = posed_benches::ycbv_mini().join("models");
    if !models_dir.join("models_info.json").is_file() {
        bail!(
            "{} has no models_info.json: this binary reads the ycbv-mini data at the path \
             of the tree it was built in; run it from that tree, or link that path to the \
             repository (benches/gpu/run.sh does)",
            models_dir.display()
        );
    }

    let info = DeviceInfo::query(&device, options.crops)?;
    info.print();
    let render = time_render(&device, &options, &info)?;
    let adds = time_adds(&device, &options, &info, &models_dir)?;
    let single_view = time_single_view(&device, &options);

    println!(
        "{}",
        json!({
            "skipped": false,
            "device": info.to_json(),
            "render": render,
            "adds": adds,
            "single_view": single_view,
        })
    );
    if single_view["pass"] != json!(true) {
        bail!("the single-view loop on CUDA does not match the CPU's (see above)");
    }
    Ok(())
}

/// What the device is and the bandwidths measured on it.
#[derive(Debug)]
struct DeviceInfo {
    name: String,
    compute_capability: (u32, u32),
    driver_version: (i32, i32),
    multiprocessors: Option<u32>,
    clock_khz: Option<u32>,
    memory_clock_khz: Option<u32>,
    memory_bus_bits: Option<u32>,
    total_memory_bytes: Option<usize>,
    /// Device-to-device copy, bytes read plus bytes written per second.
    device_copy_bytes_per_s: f64,
    /// Pageable device-to-host copy, bytes per second.
    d2h_bytes_per_s: f64,
    /// Pageable host-to-device copy, bytes per second.
    h2d_bytes_per_s: f64,
    /// The size of the host copies, bytes.
    host_copy_bytes: usize,
}

/// f64 add / multiply / FMA results per clock per multiprocessor, from the CUDA C++
/// programming guide's throughput table; `None` for architectures not listed here.
fn f64_results_per_clock_per_sm(compute_capability: (u32, u32)) -> Option<u32> {
    match compute_capability {
        (6, 0) | (7, 0) | (8, 0) => Some(32),
        (6, 1) | (6, 2) => Some(4),
        (7, 5) | (8, 6) | (8, 7) | (8, 9) | (12, _) => Some(2),
        (9, 0) | (10, 0) => Some(64),
        _ => None,
    }
}

impl DeviceInfo {
    fn query(device: &CudaDevice, crops: usize) -> anyhow::Result<Self> {
        // A second handle on the same primary context, for the attributes and the copies
        // (the kernels crate keeps its context to itself).
        let context = CudaContext::new(device.ordinal()).context("cuDevicePrimaryCtxRetain")?;
        let attribute = |which| {
            context
                .attribute(which)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
        };
        let multiprocessors =
            attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        let clock_khz = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
        let memory_clock_khz = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
        let memory_bus_bits =
            attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
        let total_memory_bytes = context.total_mem().ok();

        let stream = context.new_stream().context("cuStreamCreate")?;
        // Never time on zeros: fill the source with a pattern.
        let pattern: Vec<u8> = (0..COPY_BYTES)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let source = stream.clone_htod(&pattern).context("cuMemcpyHtoD")?;
        let mut destination = stream.alloc_zeros::<u8>(COPY_BYTES).context("cuMemAlloc")?;
        for _ in 0..3 {
            stream
                .memcpy_dtod(&source, &mut destination)
                .context("cuMemcpyDtoD")?;
        }
        stream.synchronize().context("cuStreamSynchronize")?;
        let mut copy_ms = Vec::with_capacity(COPY_REPEATS);
        for _ in 0..COPY_REPEATS {
            let start = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .context("cuEventRecord")?;
            stream
                .memcpy_dtod(&source, &mut destination)
                .context("cuMemcpyDtoD")?;
            let end = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .context("cuEventRecord")?;
            copy_ms.push(f64::from(
                start.elapsed_ms(&end).context("cuEventElapsedTime")?,
            ));
        }
        let device_copy_bytes_per_s = 2.0 * COPY_BYTES as f64 / (median(&mut copy_ms) * 1e-3);

        // Host copies the size of the render outputs of one batch, pageable like the
        // renderer's targets.
        let host_copy_bytes = (crops * CROP_WIDTH * CROP_HEIGHT)
            .saturating_mul(RENDER_OUTPUT_BYTES_PER_PIXEL as usize)
            .clamp(1 << 20, COPY_BYTES);
        let mut host = pattern[..host_copy_bytes].to_vec();
        let view = source.slice(..host_copy_bytes);
        let mut d2h_s = Vec::with_capacity(COPY_REPEATS);
        let mut h2d_s = Vec::with_capacity(COPY_REPEATS);
        for repeat in 0..=COPY_REPEATS {
            let started = Instant::now();
            stream
                .memcpy_dtoh(&view, host.as_mut_slice())
                .context("cuMemcpyDtoH")?;
            stream.synchronize().context("cuStreamSynchronize")?;
            let d2h = started.elapsed().as_secs_f64();
            let started = Instant::now();
            {
                let mut target = destination.slice_mut(..host_copy_bytes);
                stream
                    .memcpy_htod(host.as_slice(), &mut target)
                    .context("cuMemcpyHtoD")?;
            }
            stream.synchronize().context("cuStreamSynchronize")?;
            let h2d = started.elapsed().as_secs_f64();
            if repeat > 0 {
                d2h_s.push(d2h);
                h2d_s.push(h2d);
            }
        }
        Ok(Self {
            name: device.name().to_owned(),
            compute_capability: device.compute_capability(),
            driver_version: device.driver_version(),
            multiprocessors,
            clock_khz,
            memory_clock_khz,
            memory_bus_bits,
            total_memory_bytes,
            device_copy_bytes_per_s,
            d2h_bytes_per_s: host_copy_bytes as f64 / median(&mut d2h_s),
            h2d_bytes_per_s: host_copy_bytes as f64 / median(&mut h2d_s),
            host_copy_bytes,
        })
    }

    /// Memory bandwidth from the attributes: clock x 2 (double data rate) x bus width.
    fn attribute_bandwidth_bytes_per_s(&self) -> Option<f64> {
        Some(f64::from(self.memory_clock_khz?) * 1e3 * 2.0 * f64::from(self.memory_bus_bits?) / 8.0)
    }

    /// Peak f64 operations per second without FMA (each add or multiply one result).
    fn f64_ops_per_s(&self) -> Option<f64> {
        let per_sm = f64_results_per_clock_per_sm(self.compute_capability)?;
        Some(
            f64::from(per_sm) * f64::from(self.multiprocessors?) * f64::from(self.clock_khz?) * 1e3,
        )
    }

    fn print(&self) {
        let (major, minor) = self.compute_capability;
        let (driver_major, driver_minor) = self.driver_version;
        println!(
            "device 0: {}, compute capability {major}.{minor}, driver supports CUDA \
             {driver_major}.{driver_minor}",
            self.name
        );
        println!(
            "  {} SMs at {} MHz, {} memory; memory {} MHz x {} bits",
            show_u32(self.multiprocessors),
            show_mhz(self.clock_khz),
            self.total_memory_bytes
                .map(|b| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)))
                .unwrap_or_else(|| "? GiB".to_owned()),
            show_mhz(self.memory_clock_khz),
            show_u32(self.memory_bus_bits),
        );
        println!(
            "  memory bandwidth: {:.0} GB/s measured (256 MiB device copy, read + write), {} \
             from the attributes",
            self.device_copy_bytes_per_s / 1e9,
            self.attribute_bandwidth_bytes_per_s()
                .map(|b| format!("{:.0} GB/s", b / 1e9))
                .unwrap_or_else(|| "unknown".to_owned()),
        );
        println!(
            "  host copies ({:.1} MB, pageable): device to host {:.1} GB/s, host to device \
             {:.1} GB/s",
            self.host_copy_bytes as f64 / 1e6,
            self.d2h_bytes_per_s / 1e9,
            self.h2d_bytes_per_s / 1e9,
        );
        println!(
            "  f64 peak without FMA: {}",
            self.f64_ops_per_s()
                .map(|r| format!(
                    "{:.2} TFLOP/s ({} results/clock/SM, CUDA programming guide)",
                    r / 1e12,
                    f64_results_per_clock_per_sm(self.compute_capability).unwrap_or(0)
                ))
                .unwrap_or_else(|| "unknown for this architecture".to_owned())
        );
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "compute_capability": format!("{}.{}", self.compute_capability.0, self.compute_capability.1),
            "driver_cuda_version": format!("{}.{}", self.driver_version.0, self.driver_version.1),
            "multiprocessors": self.multiprocessors,
            "clock_mhz": self.clock_khz.map(|k| f64::from(k) / 1e3),
            "memory_clock_mhz": self.memory_clock_khz.map(|k| f64::from(k) / 1e3),
            "memory_bus_bits": self.memory_bus_bits,
            "total_memory_bytes": self.total_memory_bytes,
            "memory_bandwidth_gbs_measured": self.device_copy_bytes_per_s / 1e9,
            "memory_bandwidth_gbs_attributes": self.attribute_bandwidth_bytes_per_s().map(|b| b / 1e9),
            "d2h_gbs_pageable": self.d2h_bytes_per_s / 1e9,
            "h2d_gbs_pageable": self.h2d_bytes_per_s / 1e9,
            "f64_tflops_no_fma": self.f64_ops_per_s().map(|r| r / 1e12),
        })
    }
}

fn show_u32(value: Option<u32>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn show_mhz(khz: Option<u32>) -> String {
    khz.map_or_else(|| "?".to_owned(), |k| format!("{:.0}", f64::from(k) / 1e3))
}

/// The median of `values` (sorted in place); NaN for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn describe_image(what: &str, image: &CompiledImage) {
    println!(
        "  {what}: {} {} by NVRTC {}.{}, cache {:?}{}",
        image.source_name,
        image.target.arch(),
        image.nvrtc_version.0,
        image.nvrtc_version.1,
        image.cache,
        if image.log.is_empty() {
            String::new()
        } else {
            format!(", NVRTC log:\n{}", image.log)
        }
    );
}

/// The render batch: `crops` single-object crops cycling through the five objects, each
/// pose the object's batch pose turned by up to about 35 degrees about each axis and
/// shifted by up to 2 cm sideways and 5 cm in depth.
fn crop_poses(base: &[Pose], crops: usize, seed: u64) -> Vec<(usize, Pose)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..crops)
        .map(|i| {
            let mesh = i % base.len();
            let turn = Rotation3::from_euler_angles(
                rng.random_range(-0.6..0.6),
                rng.random_range(-0.6..0.6),
                rng.random_range(-0.6..0.6),
            );
            let shift = Vector3::new(
                rng.random_range(-0.02..0.02),
                rng.random_range(-0.02..0.02),
                rng.random_range(-0.05..0.05),
            );
            let pose = Pose {
                rotation: base[mesh].rotation * turn.matrix(),
                translation_m: base[mesh].translation_m + shift,
            };
            (mesh, pose)
        })
        .collect()
}

fn time_render(
    device: &CudaDevice,
    options: &Options,
    info: &DeviceInfo,
) -> anyhow::Result<serde_json::Value> {
    println!(
        "\nrender: {} crops of {CROP_HEIGHT} x {CROP_WIDTH} (rgb + depth + mask), ycbv-mini \
         objects",
        options.crops
    );
    let batch = posed_benches::refiner_crop_batch()?;
    if batch.meshes.is_empty() {
        bail!("the ycbv-mini crop batch has no objects");
    }
    let placed = crop_poses(&batch.poses, options.crops, options.seed);
    let instances: Vec<[Instance; 1]> = placed
        .iter()
        .map(|&(mesh, camera_from_object)| {
            [Instance {
                mesh,
                camera_from_object,
            }]
        })
        .collect();
    let items: Vec<RenderItem<'_>> = instances
        .iter()
        .zip(&placed)
        .map(|(instances, &(mesh, _))| RenderItem {
            camera: batch.cameras[mesh],
            instances,
        })
        .collect();
    let new_targets = || -> Vec<RenderTarget> {
        items
            .iter()
            .map(|item| RenderTarget::new(item.camera.width, item.camera.height))
            .collect()
    };
    let shading = Shading::default();

    let limits =
        GpuRenderLimits::for_batch(&batch.meshes, options.crops, CROP_WIDTH, CROP_HEIGHT, 1);
    let started = Instant::now();
    let mut gpu = GpuRenderer::new(device, &batch.meshes, limits).context("GpuRenderer::new")?;
    let setup_s = started.elapsed().as_secs_f64();
    println!(
        "  GpuRenderer::new: {:.1} ms (compile or cache load, mesh upload, buffers)",
        setup_s * 1e3
    );
    describe_image("kernels", gpu.compiled_image());
    let mut gpu_targets = new_targets();
    for _ in 0..options.warmup {
        gpu.render(&items, &mut gpu_targets, &shading)
            .context("GpuRenderer::render (warm-up)")?;
    }
    let mut gpu_ms = Vec::with_capacity(options.iterations);
    for _ in 0..options.iterations {
        let started = Instant::now();
        gpu.render(&items, &mut gpu_targets, &shading)
            .context("GpuRenderer::render")?;
        gpu_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let gpu_min_ms = gpu_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let gpu_median_ms = median(&mut gpu_ms);

    let mut cpu = CpuRenderer::new(batch.meshes.clone(), options.cpu_threads);
    let mut cpu_targets = new_targets();
    cpu.render(&items, &mut cpu_targets, &shading)
        .context("CpuRenderer::render (warm-up)")?;
    let mut cpu_ms = Vec::with_capacity(options.cpu_iterations);
    for _ in 0..options.cpu_iterations {
        let started = Instant::now();
        cpu.render(&items, &mut cpu_targets, &shading)
            .context("CpuRenderer::render")?;
        cpu_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_median_ms = median(&mut cpu_ms);

    // Agreement (the equivalence test is the real check; this says the timed work is right).
    let mut pixels = 0_u64;
    let mut differing = 0_u64;
    let mut object_pixels = 0_u64;
    for (c, g) in cpu_targets.iter().zip(&gpu_targets) {
        for i in 0..c.mask().len() {
            pixels += 1;
            object_pixels += u64::from(c.mask()[i] != 0);
            let same = c.mask()[i] == g.mask()[i]
                && c.depth_m()[i].to_bits() == g.depth_m()[i].to_bits()
                && c.rgb()[i] == g.rgb()[i]
                && c.keys()[i] == g.keys()[i];
            differing += u64::from(!same);
        }
    }

    // Floors. Transfers: tables up, rgb / depth / mask / keys down. Device memory, each
    // at least once: tables and the meshes in use read, projected vertices written and
    // read, keys cleared and read, outputs written, outputs and keys read by the copies.
    let n_items = items.len() as u64;
    let mut used = vec![false; batch.meshes.len()];
    let mut projected_vertices = 0_u64;
    for &(mesh, _) in &placed {
        used[mesh] = true;
        projected_vertices += batch.meshes[mesh].positions_m().len() as u64;
    }
    let mesh_bytes: u64 = batch
        .meshes
        .iter()
        .zip(&used)
        .filter(|(_, &u)| u)
        .map(|(m, _)| {
            m.positions_m().len() as u64 * RENDER_MESH_VERTEX_BYTES
                + m.triangles().len() as u64 * RENDER_MESH_TRIANGLE_BYTES
        })
        .sum();
    let triangles: u64 = placed
        .iter()
        .map(|&(mesh, _)| batch.meshes[mesh].triangles().len() as u64)
        .sum();
    let table_bytes = n_items * (RENDER_ITEM_BYTES + RENDER_INSTANCE_BYTES);
    let output_bytes = pixels * RENDER_OUTPUT_BYTES_PER_PIXEL;
    let transfer_bytes = table_bytes + output_bytes;
    let device_bytes = table_bytes
        + mesh_bytes
        + 2 * projected_vertices * RENDER_PROJECTED_VERTEX_BYTES
        + pixels * (2 * RENDER_KEY_BYTES + RENDER_SHADED_BYTES_PER_PIXEL)
        + output_bytes;
    let device_floor_ms = device_bytes as f64 / info.device_copy_bytes_per_s * 1e3;
    let transfer_floor_ms = (table_bytes as f64 / info.h2d_bytes_per_s
        + output_bytes as f64 / info.d2h_bytes_per_s)
        * 1e3;

    println!(
        "  GPU: {gpu_median_ms:.3} ms per batch (median of {}, min {gpu_min_ms:.3}), {:.1} \
         us per crop",
        options.iterations,
        gpu_median_ms * 1e3 / n_items as f64
    );
    println!(
        "  CPU ({} threads): {cpu_median_ms:.2} ms per batch (median of {}); GPU is {:.1}x",
        options.cpu_threads,
        options.cpu_iterations,
        cpu_median_ms / gpu_median_ms
    );
    println!(
        "  floors: transfers {:.1} MB (tables up, rgb/depth/mask/keys down) -> {:.3} ms at \
         the measured pageable copy rates; device memory {:.1} MB -> {:.3} ms at {:.0} GB/s",
        transfer_bytes as f64 / 1e6,
        transfer_floor_ms,
        device_bytes as f64 / 1e6,
        device_floor_ms,
        info.device_copy_bytes_per_s / 1e9
    );
    println!(
        "  work: {pixels} pixels ({object_pixels} on objects), {projected_vertices} vertices \
         projected, {triangles} triangles set up (integer raster: no FLOP floor)"
    );
    println!("  CPU vs GPU: {differing} of {pixels} pixels differ (rgb, depth, mask or key)");

    Ok(json!({
        "crops": n_items,
        "width": CROP_WIDTH,
        "height": CROP_HEIGHT,
        "iterations": options.iterations,
        "gpu_setup_ms": setup_s * 1e3,
        "gpu_median_ms_per_batch": gpu_median_ms,
        "gpu_min_ms_per_batch": gpu_min_ms,
        "cpu_threads": options.cpu_threads,
        "cpu_median_ms_per_batch": cpu_median_ms,
        "speedup_vs_cpu": cpu_median_ms / gpu_median_ms,
        "transfer_bytes": transfer_bytes,
        "transfer_floor_ms": transfer_floor_ms,
        "device_bytes": device_bytes,
        "device_floor_ms": device_floor_ms,
        "pixels": pixels,
        "object_pixels": object_pixels,
        "projected_vertices": projected_vertices,
        "triangles": triangles,
        "pixels_differing_from_cpu": differing,
    }))
}

fn time_adds(
    device: &CudaDevice,
    options: &Options,
    info: &DeviceInfo,
    models_dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let models = ModelSet::load(models_dir)?;
    let model = models
        .get(options.obj_id)
        .with_context(|| format!("{}: no object {}", models_dir.display(), options.obj_id))?;
    let points_m = &model.mesh.positions;
    let n_points = points_m.len() as u64;
    println!(
        "\nADD-S: {} pose pairs on ycbv-mini obj_{:06} ({n_points} points), up to 30 deg / \
         50 mm apart",
        options.pairs, options.obj_id
    );
    let pairs = posed_benches::random_pose_pairs(options.pairs, 30.0, 0.05, options.seed);

    let started = Instant::now();
    let mut gpu = GpuPoseMetrics::new(device, points_m).context("GpuPoseMetrics::new")?;
    let setup_s = started.elapsed().as_secs_f64();
    println!(
        "  GpuPoseMetrics::new: {:.1} ms; {} pairs per launch",
        setup_s * 1e3,
        gpu.pairs_per_launch()
    );
    describe_image("kernels", gpu.compiled_image());
    let mut gpu_out = vec![f64::NAN; pairs.len()];
    let warmup = pairs.len().min(256);
    gpu.adds_batch(&pairs[..warmup], &mut gpu_out[..warmup])
        .context("GpuPoseMetrics::adds_batch (warm-up)")?;
    let mut gpu_s = Vec::with_capacity(options.adds_repeats);
    for _ in 0..options.adds_repeats {
        gpu_out.fill(f64::NAN);
        let started = Instant::now();
        gpu.adds_batch(&pairs, &mut gpu_out)
            .context("GpuPoseMetrics::adds_batch")?;
        gpu_s.push(started.elapsed().as_secs_f64());
    }
    let gpu_median_s = median(&mut gpu_s);
    let unwritten = gpu_out.iter().filter(|v| !v.is_finite()).count();

    let symmetries = bop_symmetry_transforms(&model.info.symmetries, BOP_MAX_SYM_DISC_STEP)?;
    let cpu = PoseErrorModel::new(points_m.clone(), model.info.diameter_m, symmetries)?;
    let subset = &pairs[..options.cpu_pairs.min(pairs.len())];
    let started = Instant::now();
    let cpu_out: Vec<f64> = subset.iter().map(|(gt, est)| cpu.adds(gt, est)).collect();
    let cpu_s = started.elapsed().as_secs_f64();
    let mut identical = 0_usize;
    let mut max_relative = 0.0_f64;
    for (c, g) in cpu_out.iter().zip(&gpu_out) {
        identical += usize::from(c.to_bits() == g.to_bits());
        let relative = (c - g).abs() / c.abs().max(1e-300);
        max_relative = max_relative.max(if relative.is_nan() {
            f64::INFINITY
        } else {
            relative
        });
    }

    // Floors. FLOPs: the brute-force nearest neighbour. Transfers: a relative pose up and
    // a mean down per pair. Device memory: the model points once, deltas written and
    // read, means written and read; the implementation also writes and reads one f64 per
    // (pair, point) of scratch, counted separately.
    let n_pairs = pairs.len() as u64;
    let flops = n_pairs as f64 * (n_points * n_points) as f64 * ADDS_FLOPS_PER_POINT_PAIR;
    let flop_floor_s = info.f64_ops_per_s().map(|rate| flops / rate);
    let transfer_bytes = n_pairs * (ADDS_DELTA_BYTES + ADDS_RESULT_BYTES);
    let device_bytes = 24 * n_points + n_pairs * 2 * (ADDS_DELTA_BYTES + ADDS_RESULT_BYTES);
    let scratch_bytes = n_pairs * n_points * 16;
    let transfer_floor_s = n_pairs as f64
        * (ADDS_DELTA_BYTES as f64 / info.h2d_bytes_per_s
            + ADDS_RESULT_BYTES as f64 / info.d2h_bytes_per_s);
    let device_floor_s = device_bytes as f64 / info.device_copy_bytes_per_s;
    let scratch_floor_s = (device_bytes + scratch_bytes) as f64 / info.device_copy_bytes_per_s;

    println!(
        "  GPU: {:.1} ms for {n_pairs} pairs (median of {}): {:.0} pairs/s{}",
        gpu_median_s * 1e3,
        options.adds_repeats,
        n_pairs as f64 / gpu_median_s,
        if unwritten > 0 {
            format!(" -- {unwritten} results not finite")
        } else {
            String::new()
        }
    );
    println!(
        "  CPU (k-d tree, 1 thread): {:.0} pairs/s on {} pairs; GPU is {:.1}x",
        subset.len() as f64 / cpu_s,
        subset.len(),
        (n_pairs as f64 / gpu_median_s) / (subset.len() as f64 / cpu_s)
    );
    println!(
        "  floors: {:.3e} FLOP (f64, {n_points}^2 x 8 per pair) -> {}; transfers {:.2} MB -> \
         {:.3} ms; device memory {:.2} MB -> {:.4} ms ({:.0} MB with the per-point scratch \
         -> {:.3} ms)",
        flops,
        flop_floor_s
            .map(|s| format!("{:.1} ms at the f64 peak without FMA", s * 1e3))
            .unwrap_or_else(|| "f64 peak unknown".to_owned()),
        transfer_bytes as f64 / 1e6,
        transfer_floor_s * 1e3,
        device_bytes as f64 / 1e6,
        device_floor_s * 1e3,
        (device_bytes + scratch_bytes) as f64 / 1e6,
        scratch_floor_s * 1e3,
    );
    if let Some(floor) = flop_floor_s {
        println!(
            "  achieved {:.2} TFLOP/s, {:.0} % of the f64 peak without FMA",
            flops / gpu_median_s / 1e12,
            100.0 * floor / gpu_median_s
        );
    }
    println!(
        "  CPU vs GPU on {} pairs: {identical} bit-identical, largest relative difference \
         {max_relative:.2e}",
        subset.len()
    );

    Ok(json!({
        "obj_id": options.obj_id,
        "n_points": n_points,
        "pairs": n_pairs,
        "repeats": options.adds_repeats,
        "gpu_setup_ms": setup_s * 1e3,
        "gpu_median_s": gpu_median_s,
        "gpu_pairs_per_s": n_pairs as f64 / gpu_median_s,
        "gpu_results_not_finite": unwritten,
        "cpu_pairs": subset.len(),
        "cpu_pairs_per_s_one_thread": subset.len() as f64 / cpu_s,
        "flops": flops,
        "flop_floor_s": flop_floor_s,
        "transfer_bytes": transfer_bytes,
        "transfer_floor_s": transfer_floor_s,
        "device_bytes": device_bytes,
        "device_floor_s": device_floor_s,
        "scratch_bytes": scratch_bytes,
        "device_floor_with_scratch_s": scratch_floor_s,
        "cpu_gpu_bit_identical": identical,
        "cpu_gpu_max_relative_difference": max_relative,
    }))
}

/// The single-view loop on the CPU and with its geometry on `device`: time per frame, and
/// whether the two fed the network the same inputs and ended at the same poses. An error
/// is reported in the JSON (the render and ADD-S figures before it are kept).
fn time_single_view(device: &CudaDevice, options: &Options) -> serde_json::Value {
    match compare_single_view(device, options) {
        Ok(value) => value,
        Err(error) => {
            println!("single-view loop: FAILED: {error:#}");
            json!({"error": format!("{error:#}")})
        }
    }
}

fn compare_single_view(
    device: &CudaDevice,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    use posed::bop::dataset::{BopDataset, ImageFile};
    use posed::bop::images::read_rgb;
    use posed::pipeline::{
        ConstantPoseNetwork, ImageView, InitScheme, ObjectEstimate, PipelineOptions, PoseNetworks,
        RecordingPoseNetwork, SingleViewPipeline,
    };
    use std::sync::Mutex;

    let dataset = BopDataset::load(&posed_benches::ycbv_mini(), "test")?;
    let image = dataset
        .image(1, 0)
        .context("ycbv-mini has no scene 1 image 0")?;
    let rgb_path = dataset
        .image_file(1, 0, ImageFile::Rgb)
        .context("ycbv-mini has no RGB file for scene 1 image 0")?;
    let rgb = read_rgb(&rgb_path)?;
    let view = ImageView {
        rgb: rgb.pixels.as_flattened(),
        width: rgb.width as usize,
        height: rgb.height as usize,
        intrinsics: image.camera.intrinsics,
        mapped: None,
    };
    let given: Vec<ObjectEstimate> = image
        .gt
        .iter()
        .map(|gt| ObjectEstimate::from_pose(gt.obj_id, 1.0, gt.camera_from_object))
        .collect();
    // A small rotation, a shift of a few crop pixels and a 1 % depth change per iteration.
    let update = [1.0, 0.02, 0.0, -0.02, 1.0, 0.01, 1.5, -2.0, 1.01];
    let pipeline_options = PipelineOptions {
        coarse_iterations: 0,
        refiner_iterations: 2,
        batch_size: given.len().max(1),
        render_threads: options.cpu_threads,
        ..PipelineOptions::default()
    };
    // The first frame's inputs: 2 iterations of one batch of every object.
    let keep = 2 * given.len();
    let recording =
        || RecordingPoseNetwork::new(ConstantPoseNetwork::new(given.len().max(1), update), keep);
    let (cpu_network, cpu_inputs) = recording();
    let (gpu_network, gpu_inputs) = recording();
    let networks = |network: RecordingPoseNetwork| PoseNetworks {
        coarse: None,
        refiner: Some(Box::new(network)),
    };
    let mut on_cpu =
        SingleViewPipeline::new(&dataset.models, networks(cpu_network), pipeline_options)?;
    let mut on_gpu = SingleViewPipeline::with_cuda(
        &dataset.models,
        networks(gpu_network),
        pipeline_options,
        device,
        view.width,
        view.height,
    )?;
    let mut results = Vec::new();
    let mut poses: Vec<Vec<Pose>> = Vec::new();
    let runs = [
        ("cpu", &mut on_cpu, options.cpu_iterations),
        ("cuda", &mut on_gpu, options.iterations),
    ];
    for (name, pipeline, frames) in runs {
        let mut objects = given.clone();
        pipeline.boxes_from_poses(&view.intrinsics, &mut objects)?;
        let boxed = objects.clone();
        let frame = |pipeline: &mut SingleViewPipeline| {
            let mut objects = boxed.clone();
            pipeline.init_from_boxes(&view.intrinsics, InitScheme::ZupAutodepth, &mut objects)?;
            pipeline.run(&view, &mut objects, &mut |_, _| {})?;
            anyhow::Ok(objects)
        };
        // The first frame's network inputs are the ones compared.
        let mut last = frame(pipeline)?;
        for _ in 1..options.warmup.max(1) {
            frame(pipeline)?;
        }
        pipeline.take_timings();
        let frames = frames.max(1);
        let started = Instant::now();
        for _ in 0..frames {
            last = frame(pipeline)?;
        }
        let per_frame_ms = started.elapsed().as_secs_f64() * 1e3 / frames as f64;
        let stages = pipeline.take_timings();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / frames as f64;
        println!(
            "single-view loop on {name}: {per_frame_ms:.3} ms per frame (crops {:.3}, renders \
             {:.3}, updates {:.3} ms), {} of {} objects valid",
            ms(stages.crop),
            ms(stages.render),
            ms(stages.update),
            last.iter().filter(|o| o.valid).count(),
            last.len()
        );
        results.push(json!({
            "device": name,
            "frames": frames,
            "ms_per_frame": per_frame_ms,
            "crop_ms": ms(stages.crop),
            "render_ms": ms(stages.render),
            "update_ms": ms(stages.update),
        }));
        poses.push(last.iter().map(|o| o.camera_from_object).collect());
    }
    let mut largest_difference: f64 = 0.0;
    for (a, b) in poses[0].iter().zip(&poses[1]) {
        let rotation = (a.rotation - b.rotation).abs().max();
        let translation = (a.translation_m - b.translation_m).abs().max();
        largest_difference = largest_difference.max(rotation).max(translation);
    }
    let bits = |inputs: &Mutex<Vec<Vec<f32>>>| -> Vec<Vec<u32>> {
        inputs
            .lock()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.iter().map(|v| v.to_bits()).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    let same_inputs = bits(&cpu_inputs) == bits(&gpu_inputs);
    let agree = same_inputs && largest_difference == 0.0;
    println!(
        "single-view loop: network inputs {} bit for bit; largest pose difference \
         {largest_difference:e}: {}",
        if same_inputs { "equal" } else { "DIFFER" },
        if agree { "PASS" } else { "FAIL" }
    );
    Ok(json!({
        "objects": given.len(),
        "runs": results,
        "same_network_inputs": same_inputs,
        "largest_pose_difference": largest_difference,
        "pass": agree,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn options_parse_and_refuse_what_they_should() -> anyhow::Result<()> {
        let defaults = Options::parse(args(&[]))?.context("no --help given")?;
        assert_eq!((defaults.crops, defaults.pairs), (64, 15_000));
        assert_eq!(defaults.cpu_threads, 2);
        let set = Options::parse(args(&["--crops", "8", "--pairs", "100", "--obj-id", "2"]))?
            .context("no --help given")?;
        assert!(Options::parse(args(&["--crops", "8", "--help"]))?.is_none());
        assert_eq!((set.crops, set.pairs, set.obj_id), (8, 100, 2));
        for bad in [
            &["--crops"][..],
            &["--crops", "x"],
            &["--crops", "0"],
            &["--frobnicate", "1"],
        ] {
            assert!(Options::parse(args(bad)).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn the_median_and_the_f64_table() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
        assert_eq!(f64_results_per_clock_per_sm((8, 7)), Some(2));
        assert_eq!(f64_results_per_clock_per_sm((9, 0)), Some(64));
        assert_eq!(f64_results_per_clock_per_sm((1, 0)), None);
    }

    /// The 64 crops cycle through the objects, differ from each other, are the same for
    /// the same seed, and every object stays in its crop (the CPU renderer draws it).
    #[test]
    fn the_crop_batch_is_varied_and_every_object_is_in_view() -> anyhow::Result<()> {
        let batch = posed_benches::refiner_crop_batch()?;
        let placed = crop_poses(&batch.poses, 64, 7);
        assert_eq!(placed.len(), 64);
        assert_eq!(placed, crop_poses(&batch.poses, 64, 7));
        for (i, &(mesh, pose)) in placed.iter().enumerate() {
            assert_eq!(mesh, i % batch.meshes.len());
            assert_ne!(pose, batch.poses[mesh]);
        }
        let instances: Vec<[Instance; 1]> = placed
            .iter()
            .map(|&(mesh, camera_from_object)| {
                [Instance {
                    mesh,
                    camera_from_object,
                }]
            })
            .collect();
        let items: Vec<RenderItem<'_>> = instances
            .iter()
            .zip(&placed)
            .map(|(instances, &(mesh, _))| RenderItem {
                camera: batch.cameras[mesh],
                instances,
            })
            .collect();
        let mut targets: Vec<RenderTarget> = items
            .iter()
            .map(|item| RenderTarget::new(item.camera.width, item.camera.height))
            .collect();
        let mut renderer = CpuRenderer::new(batch.meshes, 2);
        renderer.render(&items, &mut targets, &Shading::default())?;
        for (i, target) in targets.iter().enumerate() {
            let on_object = target.mask().iter().filter(|&&m| m != 0).count();
            let border = (0..target.height())
                .flat_map(|y| [y * target.width(), y * target.width() + target.width() - 1])
                .chain(
                    (0..target.width())
                        .flat_map(|x| [x, (target.height() - 1) * target.width() + x]),
                )
                .filter(|&p| target.mask()[p] != 0)
                .count();
            assert!(on_object > 1_000, "crop {i}: {on_object} object pixels");
            assert_eq!(border, 0, "crop {i}: the object touches the crop border");
        }
        Ok(())
    }
}

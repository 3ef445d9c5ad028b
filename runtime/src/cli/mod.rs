//! The `posed` command line. `main.rs` only calls [`main`].

mod bench;
mod dataset;
mod multiview;
mod predict;
mod run;
mod signals;

pub use bench::{BenchArgs, PowerMode};
pub use dataset::DatasetCommand;
pub use multiview::MultiviewArgs;
pub use predict::{request_from, summary, PredictArgs};
pub use run::{CameraCommand, ConfigCommand, RunArgs, WatchArgs};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::bop::atomic::check_writable;
use crate::bop::dataset::BopDataset;
use crate::bop::dataset::ImageFile;
use crate::bop::images::{write_depth_png_u16, write_gray_png_u8, write_rgb_png};
use crate::bop::results::{read_results, write_results};
use crate::bop::targets::read_targets;
use crate::config::Config;
use crate::engines;
use crate::eval::{all_instance_targets, evaluate, EvalOptions, TargetSource};
use crate::overlay::{
    blend_overlay, depth_for_png, draw_contours, estimated_objects, find_image,
    ground_truth_objects, CONTOUR_RGB,
};
use crate::pipeline::ComputeDevice;
use crate::render::ObjectRenderer;
use crate::synth::{synth_estimates, SynthOptions};
use posed_kernels::render::{Light, Shading};

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
    /// mAP@ADD-S<0.1d, BOP19 AR_VSD, AR_MSSD, AR_MSPD and AR).
    Eval(EvalArgs),
    /// Write synthetic estimates (ground truth plus noise, misses and false positives)
    /// as a BOP19 results CSV, for demos and benches.
    SynthResults(SynthArgs),
    /// Draw objects over a dataset image as CosyPose's overlays do (ground-truth poses, or
    /// the estimates of a results CSV), optionally writing the rendered depth and mask.
    Render(RenderArgs),
    /// Networks and engines: check an ONNX file against its role's contract, build the
    /// engines a configuration names ahead of time, list the engine cache, run one batch.
    #[command(subcommand)]
    Engines(EnginesCommand),
    /// Estimate poses over a BOP dataset's test images with CosyPose's coarse + refiner
    /// loop and write a BOP19 results CSV (`posed eval` reads it).
    Predict(PredictArgs),
    /// Make `posed predict` inputs from a dataset's ground truth: 2D detections, initial
    /// poses (with seeded noise).
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Multi-view CosyPose: match single-view candidates (a results CSV) across the views
    /// of each scene, estimate the cameras, adjust objects and cameras together, and write
    /// every object in every view as a results CSV (`posed eval` reads it).
    Multiview(MultiviewArgs),
    /// The daemon: frames from a camera or an image sequence through the pipeline, poses
    /// out over a Unix socket (`posed run --demo` runs on the bundled data).
    Run(RunArgs),
    /// The latency and energy harness: run the daemon of a configuration for a number of
    /// frames and report per-stage latency, frame rate, CPU, memory and, where the
    /// machine has power meters (Jetson INA3221, RAPL), power and energy per frame.
    Bench(BenchArgs),
    /// Subscribe to a running daemon's pose stream and print the poses.
    Watch(WatchArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// V4L2 cameras: what they offer, to write [source] in the configuration.
    #[command(subcommand)]
    Camera(CameraCommand),
}

/// `posed engines ...`.
#[derive(Debug, Subcommand)]
pub enum EnginesCommand {
    /// Check ONNX files and their sidecars against the contracts; print what they declare.
    Check(EnginesCheckArgs),
    /// Build (or verify in the cache) the engine of every network in a configuration file,
    /// so that `posed run` starts without building.
    Build(EnginesBuildArgs),
    /// List the engine cache: what is cached, for which device and precision, how old.
    List(EnginesListArgs),
    /// Run one batch (a float32 .npy, the model's input) through a backend and write the
    /// first output as .npy, for debugging and comparing backends with other runtimes.
    Run(EnginesRunArgs),
    /// Time each step of every network of a configuration file on the CPU backend: where
    /// a network's time goes on this machine, with the configuration's threads.
    Profile(EnginesProfileArgs),
}

/// Arguments of `posed engines profile`.
#[derive(Debug, clap::Args)]
pub struct EnginesProfileArgs {
    /// Configuration file ([networks] and [engines]).
    #[arg(long)]
    pub config: PathBuf,
    /// Timed runs per network, after one to warm up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,
    /// How many of the slowest steps to list.
    #[arg(long, default_value_t = 15)]
    pub steps: usize,
    /// Threads [default: engines.cpu_threads, else the cores, at most 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cpu_threads: Option<u16>,
}

/// Arguments of `posed engines check`.
#[derive(Debug, clap::Args)]
pub struct EnginesCheckArgs {
    /// ONNX files (each with its sidecar .toml next to it).
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
}

/// Arguments of `posed engines build`.
#[derive(Debug, clap::Args)]
pub struct EnginesBuildArgs {
    /// Configuration file ([networks] and [engines]).
    #[arg(long)]
    pub config: PathBuf,
}

/// Arguments of `posed engines list`.
#[derive(Debug, clap::Args)]
pub struct EnginesListArgs {
    /// Cache directory (default: the configuration's, else $POSED_CACHE_DIR,
    /// $XDG_CACHE_HOME/posed/engines or ~/.cache/posed/engines).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Configuration file whose [engines] cache_dir to list.
    #[arg(long, conflicts_with = "cache_dir")]
    pub config: Option<PathBuf>,
}

/// Arguments of `posed engines run`.
#[derive(Debug, clap::Args)]
pub struct EnginesRunArgs {
    /// The ONNX file (with its sidecar).
    pub model: PathBuf,
    /// Input batch: float32 .npy in the contract's shape (e.g. [B, 6, 240, 320]).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy: the model's first contract output (pose_update, or boxes).
    #[arg(long)]
    pub out: PathBuf,
    /// Backend.
    #[arg(long, default_value = "cpu")]
    pub backend: posed_engines::BackendKind,
    /// Configuration file for the backend's settings (precision, cache, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Skip VSD (no rendering, no depth images): AR_VSD and the BOP19 AR are reported as
    /// undefined. For quick runs.
    #[arg(long)]
    pub no_vsd: bool,
    /// Where ADD and ADD-S are computed: `cpu`, or `cuda` (the first CUDA device; without
    /// a driver or device, a warning and the CPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: ComputeDevice,
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

/// Arguments of `posed render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// BOP dataset folder (with models/ and the split folder).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Scene id.
    #[arg(long)]
    pub scene: u32,
    /// Image id in the scene.
    #[arg(long)]
    pub image: u32,
    /// BOP19 results CSV: draw the estimates of this scene and image, in file order,
    /// instead of the ground truth of scene_gt.json. It is an error if it has none.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// With --results, draw only the estimates with score >= this.
    #[arg(long, requires = "results")]
    pub min_score: Option<f64>,
    /// Outline each object's visible mask in green (0, 255, 0): the object pixels whose
    /// left, right, upper or lower neighbour is background or another object (the image
    /// border is no outline).
    #[arg(long)]
    pub contours: bool,
    /// Colour of the rendered objects: the vertex colours as they are (albedo), or lit by
    /// a head light with pybullet's default ambient 0.6 and diffuse 0.35 (lambert).
    #[arg(long, value_enum, default_value_t = ShadingArg::Lambert)]
    pub shading: ShadingArg,
    /// Dataset split folder.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output overlay, an 8-bit RGB PNG: 0.6 * image + 0.4 * 255 where no object is
    /// rendered, 0.8 * render + 0.2 * 255 over the objects (rounded, per channel).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the rendered depth as a 16-bit PNG in the dataset's depth units
    /// (value = round(depth_mm / depth_scale) with the image's depth_scale from
    /// scene_camera.json), 0 where no object is. Depths past 65535 units saturate at 65535.
    #[arg(long)]
    pub depth_out: Option<PathBuf>,
    /// Also write the rendered instance mask as an 8-bit PNG: per pixel 1 + the index of
    /// the visible object in scene_gt.json (with --results: in the order of the estimates
    /// drawn), 0 for background.
    #[arg(long)]
    pub mask_out: Option<PathBuf>,
}

/// Values of `posed render --shading`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShadingArg {
    /// Vertex colours as they are.
    Albedo,
    /// Head light, ambient 0.6 + diffuse 0.35 (pybullet's defaults).
    Lambert,
}

impl From<ShadingArg> for Shading {
    fn from(arg: ShadingArg) -> Self {
        match arg {
            ShadingArg::Albedo => Shading::Albedo,
            ShadingArg::Lambert => Shading::Lambert(Light::default()),
        }
    }
}

/// Parses the process arguments and runs the command; errors are printed with their
/// causes and give exit status 1, a command stopped by a signal 128 + the signal.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<Stopped>() {
            // The command said what it did before it stopped.
            Some(stopped) => ExitCode::from(u8::try_from(128 + stopped.signal).unwrap_or(u8::MAX)),
            None => {
                eprintln!("posed: error: {}", error_chain(&err));
                ExitCode::FAILURE
            }
        },
    }
}

/// A command stopped early by a signal, having saved what it had done.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {signal}")]
pub struct Stopped {
    /// The signal's number.
    pub signal: i32,
}

/// The error and its causes joined by ": ", each cause left out when the message before
/// it already ends with it (the library's messages include their source's, so `{:#}`
/// would print "No such file or directory: No such file or directory").
fn error_chain(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.ends_with(&format!(": {text}")) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(args) => run_eval(&args),
        Command::SynthResults(args) => run_synth(&args),
        Command::Render(args) => run_render(&args),
        Command::Engines(command) => run_engines(command),
        Command::Predict(args) => predict::run_predict(&args),
        Command::Dataset(command) => dataset::run_dataset(command),
        Command::Multiview(args) => multiview::run_multiview(&args),
        Command::Run(args) => run::run_run(&args),
        Command::Watch(args) => run::run_watch(&args),
        Command::Bench(args) => bench::run_bench_command(&args),
        Command::Config(command) => run::run_config(&command),
        Command::Camera(command) => run::run_camera(&command),
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
        vsd: !args.no_vsd,
        device: args.device,
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

fn run_render(args: &RenderArgs) -> anyhow::Result<()> {
    // All or nothing: an output that cannot be written must not leave the others written.
    let outputs = [
        Some(&args.out),
        args.depth_out.as_ref(),
        args.mask_out.as_ref(),
    ];
    for path in outputs.into_iter().flatten() {
        check_writable(path)?;
    }
    if let Some(score) = args.min_score {
        anyhow::ensure!(
            score.is_finite(),
            "--min-score: expected a finite number, found {score}"
        );
    }
    let dataset = load_dataset(&args.dataset, &args.split)?;
    let image = find_image(&dataset, &args.split, args.scene, args.image)?;
    let objects = match &args.results {
        Some(path) => {
            let rows = read_results(path)?;
            estimated_objects(
                &dataset,
                &rows,
                path,
                args.scene,
                args.image,
                args.min_score,
            )?
        }
        None => ground_truth_objects(image),
    };
    let rgb_path = dataset
        .image_file(args.scene, args.image, ImageFile::Rgb)
        .with_context(|| format!("scene {} has no image {}", args.scene, args.image))?;
    let rgb = dataset.read_rgb(args.scene, args.image)?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut renderer = ObjectRenderer::new(&dataset.models, threads)?;
    let render = renderer.render_scene(
        &image.camera.intrinsics,
        rgb.width as usize,
        rgb.height as usize,
        &objects,
        &args.shading.into(),
    )?;
    let mut overlay =
        blend_overlay(&rgb, render).with_context(|| format!("{}", rgb_path.display()))?;
    if args.contours {
        draw_contours(&mut overlay, render, CONTOUR_RGB)
            .with_context(|| format!("{}", rgb_path.display()))?;
    }
    write_rgb_png(&args.out, &overlay)?;
    if let Some(path) = &args.depth_out {
        let depth_scale_mm = image.camera.depth_scale_mm.with_context(|| {
            format!(
                "scene {} image {}: scene_camera.json gives no depth_scale, needed for --depth-out",
                args.scene, args.image
            )
        })?;
        let (depth, saturated) = depth_for_png(render, depth_scale_mm);
        write_depth_png_u16(path, &depth, depth_scale_mm)?;
        if saturated > 0 {
            eprintln!(
                "posed render: {saturated} pixels deeper than 65535 x {depth_scale_mm} mm saturate at 65535 in {}",
                path.display()
            );
        }
    }
    if let Some(path) = &args.mask_out {
        write_gray_png_u8(path, rgb.width, rgb.height, render.mask())?;
    }
    eprintln!(
        "posed render: scene {} image {}, {} objects ({}), wrote {}",
        args.scene,
        args.image,
        objects.len(),
        match &args.results {
            Some(path) => path.display().to_string(),
            None => "ground truth".to_string(),
        },
        args.out.display()
    );
    Ok(())
}

fn run_engines(command: EnginesCommand) -> anyhow::Result<()> {
    match command {
        EnginesCommand::Check(args) => {
            let mut failed = 0;
            for path in &args.models {
                match posed_engines::Network::open(path) {
                    Ok(network) => {
                        let sidecar = network.sidecar();
                        println!(
                            "{}: ok: {} network, {} labels, sha256 {}",
                            path.display(),
                            sidecar.role,
                            sidecar.labels.len(),
                            network.sha256_hex()
                        );
                        let signature = network.signature();
                        for input in &signature.inputs {
                            println!("  input  {}: {input}", input.name);
                        }
                        for output in &signature.outputs {
                            println!("  output {}: {output}", output.name);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("posed engines check: {e}");
                    }
                }
            }
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} networks failed the check",
                args.models.len()
            );
            Ok(())
        }
        EnginesCommand::Build(args) => {
            let config = Config::load(&args.config)?;
            let networks = config.networks.by_role();
            anyhow::ensure!(
                !networks.is_empty(),
                "{}: [networks] names no network (detector, coarse or refiner)",
                args.config.display()
            );
            let options = config.engines.model_options();
            eprintln!(
                "posed engines build: {} networks, backend {}, {}, batch up to {}, cache {}",
                networks.len(),
                config.engines.backend,
                config.engines.precision.name(),
                options.max_batch,
                config.engines.cache_dir().display()
            );
            for (role, path) in networks {
                let network = posed_engines::Network::open(path)?;
                anyhow::ensure!(
                    network.sidecar().role == role,
                    "{}: configured as the {role} but its sidecar says {}",
                    path.display(),
                    network.sidecar().role
                );
                let spinner = indicatif::ProgressBar::new_spinner();
                spinner.set_message(format!("{role}: {}", path.display()));
                spinner.enable_steady_tick(std::time::Duration::from_millis(200));
                let line = spinner.clone();
                let prefix = format!("{role}: ");
                let progress: engines::ProgressLine =
                    Box::new(move |message| line.set_message(format!("{prefix}{message}")));
                let built =
                    engines::build_engine(&config.engines, network, options, Some(progress));
                spinner.finish_and_clear();
                let report = built?;
                eprintln!(
                    "  {role:<8} {}: {} in {:.2} s",
                    path.display(),
                    match report.outcome {
                        posed_engines::CacheOutcome::Hit => "cached, verified",
                        posed_engines::CacheOutcome::Built => "built",
                        posed_engines::CacheOutcome::Rebuilt =>
                            "rebuilt (the cached entry was unusable)",
                        posed_engines::CacheOutcome::BuiltByOther => "built by another process",
                    },
                    report.elapsed.as_secs_f64()
                );
                if let Some(executor) = &report.cpu_executor {
                    eprintln!("           runs on the {executor}");
                }
            }
            Ok(())
        }
        EnginesCommand::List(args) => {
            let dir = match (&args.cache_dir, &args.config) {
                (Some(dir), _) => dir.clone(),
                (None, Some(config)) => Config::load(config)?.engines.cache_dir(),
                (None, None) => posed_engines::EngineCache::default_dir(),
            };
            if !dir.exists() {
                println!(
                    "posed engines: no cache at {} (nothing built yet)",
                    dir.display()
                );
                return Ok(());
            }
            let cache = posed_engines::EngineCache::open(&dir)?;
            let entries = cache.list()?;
            println!(
                "posed engines: {} entries in {}",
                entries.len(),
                dir.display()
            );
            let now = std::time::SystemTime::now();
            for entry in &entries {
                println!("  {}", engines::describe_entry(entry, now));
            }
            Ok(())
        }
        EnginesCommand::Profile(args) => {
            let mut config = Config::load(&args.config)?;
            if let Some(threads) = args.cpu_threads {
                config.engines.cpu_threads = Some(usize::from(threads));
            }
            let networks = config.networks.by_role();
            anyhow::ensure!(
                !networks.is_empty(),
                "{}: [networks] names no network (detector, coarse or refiner)",
                args.config.display()
            );
            if config.engines.backend != posed_engines::BackendKind::Cpu {
                eprintln!(
                    "posed engines profile: times the CPU backend (the configuration's {} \
                     has profilers of its own)",
                    config.engines.backend
                );
            }
            for (role, path) in networks {
                let network = posed_engines::Network::open(path)?;
                let runs = args.runs as usize;
                let profile = engines::profile_network(&config.engines, network, runs)?;
                println!(
                    "{role} {}: one item of {:?}, {} runs on {} thread(s), {} kernels",
                    path.display(),
                    profile.item_shape.dims(),
                    runs,
                    profile.threads,
                    posed_engines::cpu::kernel_instructions()
                );
                match &profile.steps {
                    Some(steps) => {
                        let summary = posed_engines::cpu::profile_summary(steps, args.steps);
                        println!("{summary}");
                    }
                    None => println!(
                        "  runs on tract's plan, which has no per-step times: {}\n",
                        profile.refusal.as_deref().unwrap_or("as configured")
                    ),
                }
            }
            Ok(())
        }
        EnginesCommand::Run(args) => {
            let network = posed_engines::Network::open(&args.model)?;
            let (shape, input) =
                posed_engines::npy::read_npy(&args.input)?.into_f32(&args.input)?;
            let mut engines_config = match &args.config {
                Some(path) => Config::load(path)?.engines,
                None => crate::config::EnginesConfig::default(),
            };
            engines_config.backend = args.backend;
            let options = engines::options_for_input(&network, &shape);
            let started = Instant::now();
            // The CPU backend loads in milliseconds: no need to write to the cache for it.
            let model = match args.backend {
                posed_engines::BackendKind::Cpu => posed_engines::Backend::load(
                    &posed_engines::CpuBackend::new(),
                    network,
                    options,
                )?,
                posed_engines::BackendKind::TensorRt => {
                    engines::make_backend(&engines_config)?.load(network, options)?
                }
            };
            let loaded = started.elapsed();
            let started = Instant::now();
            let output = engines::run_once(model.as_ref(), &input, &shape).with_context(|| {
                format!(
                    "running {} on {}",
                    args.model.display(),
                    args.input.display()
                )
            })?;
            let ran = started.elapsed();
            posed_engines::npy::write_npy(&args.out, &output)?;
            eprintln!(
                "posed engines run: {} on {}: input {:?} -> output {:?}, load {:.1} ms, run {:.1} ms, wrote {}",
                args.model.display(),
                args.backend,
                shape,
                output.shape,
                loaded.as_secs_f64() * 1e3,
                ran.as_secs_f64() * 1e3,
                args.out.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_do_not_repeat_a_cause_the_message_already_ends_with() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(crate::Error::Io {
            path: "a.json".into(),
            source: io,
        })
        .context("loading the dataset");
        assert_eq!(
            error_chain(&err),
            "loading the dataset: a.json: cannot read: no such file"
        );
    }
}

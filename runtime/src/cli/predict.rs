//! `posed predict`: flags, merged with the configuration file's `[predict]`, `[networks]`
//! and `[engines]` (flags win), and the end-of-run summary.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use posed_engines::BackendKind;

use super::signals::{SecondSignal, StopSignals};
use crate::config::daemon::MAX_ITERATIONS;
use crate::config::Config;
use crate::pipeline::{ComputeDevice, DetectionFilter, InitScheme, PipelineOptions};
use crate::predict::{predict, ObjectSource, PredictReport, PredictRequest};

/// Arguments of `posed predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// BOP dataset folder (models/, camera.json, the split folder).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Split folder [default: test].
    #[arg(long)]
    pub split: Option<String>,
    /// Refiner network (ONNX with its sidecar).
    #[arg(long)]
    pub refiner: Option<PathBuf>,
    /// Coarse network (ONNX with its sidecar).
    #[arg(long)]
    pub coarse: Option<PathBuf>,
    /// Detector network: objects from its detections.
    #[arg(long, group = "source")]
    pub detector: Option<PathBuf>,
    /// BOP 2D-detection JSON file: objects from its boxes.
    #[arg(long, group = "source")]
    pub detections: Option<PathBuf>,
    /// BOP19 results CSV: objects at these initial poses (no coarse iterations).
    #[arg(long, group = "source")]
    pub init_poses: Option<PathBuf>,
    /// Coarse iterations [default: 1 with a coarse network, else 0].
    #[arg(long)]
    pub coarse_iterations: Option<usize>,
    /// Refiner iterations [default: 4 with a refiner network, else 0].
    #[arg(long)]
    pub refiner_iterations: Option<usize>,
    /// Initial poses from boxes: the paper's z = 1 m, or BOP20's z-up + auto-depth (use
    /// what the coarse model was trained with: its config.yaml's init_method) [default: z1].
    #[arg(long, value_enum)]
    pub init: Option<InitScheme>,
    /// Objects per network pass [default: engines.max_batch].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Keep detections scoring strictly above this [default: 0].
    #[arg(long)]
    pub detection_threshold: Option<f64>,
    /// Keep only the best detection of each object in an image.
    #[arg(long)]
    pub one_instance_per_class: bool,
    /// Keep only these object ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<u32>,
    /// Backend [default: engines.backend, else cpu].
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// CPU backend: threads a network runs on (a batch's objects side by side, or one
    /// object's large steps split) [default: engines.cpu_threads, else the cores, at
    /// most 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cpu_threads: Option<u16>,
    /// Where crops, renderings and pose updates run: `cpu`, or `cuda` (the first CUDA
    /// device; without a driver or device, a warning and the CPU) [default: cpu].
    #[arg(long, value_enum)]
    pub device: Option<ComputeDevice>,
    /// Configuration file ([predict], [networks], [engines]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Every image of the split, not only those of test_targets_bop19.json.
    #[arg(long)]
    pub all_images: bool,
    /// Stop after this many images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Results CSV (BOP19: scene_id, im_id, obj_id, score, R, t in mm, time in s).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write one results CSV per iteration into this folder (coarse-1.csv,
    /// refiner-1.csv, ...).
    #[arg(long)]
    pub save_iterations: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Merges the flags with the configuration file into a request.
pub fn request_from(args: &PredictArgs) -> anyhow::Result<PredictRequest> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let file = &config.predict;
    let or_file = |flag: &Option<PathBuf>, key: &Option<PathBuf>| flag.clone().or(key.clone());

    let Some(dataset) = or_file(&args.dataset, &file.dataset) else {
        bail!("no dataset: give --dataset DIR (or [predict] dataset in --config)");
    };
    let Some(out) = or_file(&args.out, &file.out) else {
        bail!("no output file: give --out FILE.csv (or [predict] out in --config)");
    };
    let coarse = or_file(&args.coarse, &config.networks.coarse);
    let refiner = or_file(&args.refiner, &config.networks.refiner);
    if coarse.is_none() && refiner.is_none() {
        bail!("no pose network: give --refiner FILE.onnx and/or --coarse FILE.onnx");
    }

    let source = if let Some(path) = &args.detector {
        ObjectSource::Detector(path.clone())
    } else if let Some(path) = &args.detections {
        ObjectSource::Detections(path.clone())
    } else if let Some(path) = &args.init_poses {
        ObjectSource::InitPoses(path.clone())
    } else {
        let from_file = [
            file.detections.clone().map(ObjectSource::Detections),
            file.init_poses.clone().map(ObjectSource::InitPoses),
            config.networks.detector.clone().map(ObjectSource::Detector),
        ];
        let mut given = from_file.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(source), None) => source,
            (None, _) => bail!(
                "no objects: give --detector FILE.onnx, --detections FILE.json or \
                 --init-poses FILE.csv"
            ),
            (Some(_), Some(_)) => bail!(
                "{}: more than one object source ([predict] detections, [predict] \
                 init_poses, [networks] detector): keep one, or choose with a flag",
                args.config
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ),
        }
    };

    let mut engines = config.engines.clone();
    if let Some(backend) = args.backend {
        engines.backend = backend;
    }
    if let Some(threads) = args.cpu_threads {
        engines.cpu_threads = Some(usize::from(threads));
    }
    let default_coarse =
        usize::from(coarse.is_some() && !matches!(source, ObjectSource::InitPoses(_)));
    let default_refiner = if refiner.is_some() { 4 } else { 0 };
    for (key, value) in [
        (
            "coarse iterations",
            args.coarse_iterations.or(file.coarse_iterations),
        ),
        (
            "refiner iterations",
            args.refiner_iterations.or(file.refiner_iterations),
        ),
    ] {
        if let Some(value) = value.filter(|&v| v > MAX_ITERATIONS) {
            bail!(
                "{key} (--{} or [predict]): expected 0 to {MAX_ITERATIONS}, found {value}",
                key.replace(' ', "-")
            );
        }
    }
    let pipeline = PipelineOptions {
        coarse_iterations: args
            .coarse_iterations
            .or(file.coarse_iterations)
            .unwrap_or(default_coarse),
        refiner_iterations: args
            .refiner_iterations
            .or(file.refiner_iterations)
            .unwrap_or(default_refiner),
        batch_size: args
            .batch_size
            .or(file.batch_size)
            .unwrap_or(engines.max_batch),
        ..PipelineOptions::default()
    };
    let given_threshold = args.detection_threshold.or(file.detection_threshold);
    if let Some(threshold) = given_threshold.filter(|t| !t.is_finite()) {
        bail!("--detection-threshold: expected a finite number, found {threshold}");
    }
    // CosyPose's detection threshold defaults to 0 (strictly above); initial poses are
    // filtered by score only when a threshold is given (a PoseCNN score may be 0).
    let threshold = match (given_threshold, &source) {
        (Some(threshold), _) => threshold,
        (None, ObjectSource::InitPoses(_)) => f64::NEG_INFINITY,
        (None, _) => 0.0,
    };
    let labels = if args.labels.is_empty() {
        file.labels.clone().unwrap_or_default()
    } else {
        args.labels.clone()
    };
    Ok(PredictRequest {
        dataset,
        split: args
            .split
            .clone()
            .or(file.split.clone())
            .unwrap_or_else(|| "test".to_string()),
        source,
        coarse,
        refiner,
        init: args.init.or(file.init).unwrap_or(InitScheme::Z1),
        pipeline,
        device: args.device.or(file.device).unwrap_or_default(),
        filter: DetectionFilter {
            threshold,
            one_instance_per_class: args.one_instance_per_class
                || file.one_instance_per_class.unwrap_or(false),
            obj_ids: labels,
        },
        engines,
        all_images: args.all_images,
        max_images: args.max_images,
        out,
        save_iterations: or_file(&args.save_iterations, &file.save_iterations),
    })
}

/// Runs `posed predict`. A stop signal (SIGINT, SIGTERM, SIGHUP) ends it after the image
/// in hand, with the results of the images done written and exit status 128 + the signal.
pub fn run_predict(args: &PredictArgs) -> anyhow::Result<()> {
    let request = request_from(args)?;
    // While the networks load a signal ends the process at once; then the first stops
    // the run after the image in hand, and a second ends the process at once.
    let signals = StopSignals::install(|signal| 128 + signal, SecondSignal::Exits)?;
    // Where the bar is not drawn (a log, a pipe), a line now and then says how far it is.
    let lines = !args.quiet && !std::io::stderr().is_terminal();
    let mut last_line: Option<Instant> = None;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} predict [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = predict(&request, &mut |done, total| {
        // Called with 0 once the networks are loaded.
        signals.loaded();
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        // Decided before the line goes out: a signal sent upon a line stops the run after
        // the next image, not before it.
        let flow = if signals.stopping() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        };
        if lines && (done == total || last_line.is_none_or(|t| t.elapsed() >= PROGRESS_LINE)) {
            eprintln!("posed predict: {done}/{total} images");
            last_line = Some(Instant::now());
        }
        flow
    })
    .with_context(|| format!("predicting on {}", request.dataset.display()))?;
    bar.finish_and_clear();
    print!("{}", summary(&request, &report));
    if report.images < report.images_planned {
        let (signal, name) = signals.received().unwrap_or((0, "a signal"));
        eprintln!(
            "posed predict: stopped by {name} after {} of {} images; {} holds the results of \
             those",
            report.images,
            report.images_planned,
            request.out.display()
        );
        return Err(super::Stopped { signal }.into());
    }
    Ok(())
}

/// How often a progress line is printed where the bar is not drawn.
const PROGRESS_LINE: Duration = Duration::from_secs(10);

/// The end-of-run summary: what was done and where the time went, per frame.
pub fn summary(request: &PredictRequest, report: &PredictReport) -> String {
    let frames = report.images.max(1) as f64;
    let per_frame = |d: Duration| d.as_secs_f64() * 1e3 / frames;
    let stages = &report.stages;
    let mut out = format!(
        "posed predict: {} images, {} objects, {} estimates ({} coarse + {} refiner \
         iterations, batch {}, {} backend{})\n",
        report.images,
        report.objects,
        report.estimates,
        request.pipeline.coarse_iterations,
        request.pipeline.refiner_iterations,
        request.pipeline.batch_size,
        request.engines.backend,
        if request.engines.backend == BackendKind::Cpu {
            format!(" on {} threads", request.engines.cpu_threads())
        } else {
            String::new()
        },
    );
    if report.filtered_out > 0 || report.unknown_objects > 0 || stages.invalid_objects > 0 {
        out += &format!(
            "  left out: {} detections by the filter, {} of unknown objects, {} objects \
             with no finite update\n",
            report.filtered_out, report.unknown_objects, stages.invalid_objects
        );
    }
    out += "  time per frame:\n";
    let rows = [
        ("read image", report.read),
        ("detector", report.detector),
        ("initial poses", stages.init),
        ("crops", stages.crop),
        ("renders", stages.render),
        ("coarse network", stages.coarse_network),
        ("refiner network", stages.refiner_network),
        ("pose updates", stages.update),
    ];
    for (name, duration) in rows {
        out += &format!("    {name:<16} {:>9.2} ms\n", per_frame(duration));
    }
    out += &format!(
        "    {:<16} {:>9.2} ms  ({:.2} frames/s over {:.1} s)\n",
        "all",
        per_frame(report.wall),
        frames / report.wall.as_secs_f64().max(1e-9),
        report.wall.as_secs_f64()
    );
    for path in &report.written {
        out += &format!("  wrote {}\n", path.display());
    }
    out
}

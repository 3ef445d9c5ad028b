//! `posed dataset ...`: inputs for `posed predict` made from a dataset's ground truth, so
//! that the pipeline can be exercised end to end without a detector or PoseCNN.

use std::path::PathBuf;

use anyhow::Context;

use super::load_dataset;
use crate::bop::detections::write_detections;
use crate::bop::results::write_results;
use crate::synth::{make_detections, make_init_poses, BoxSource, DetectionNoise, PoseNoise};

/// `posed dataset ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DatasetCommand {
    /// Write a BOP 2D-detection JSON file of the annotated boxes, with optional seeded
    /// noise on each edge.
    MakeDetections(MakeDetectionsArgs),
    /// Write a BOP19 results CSV of the annotated poses turned by an exact angle and
    /// shifted by an exact distance (random axis and direction, seeded).
    MakeInitPoses(MakeInitPosesArgs),
}

/// What both commands read.
#[derive(Debug, clap::Args)]
pub struct DatasetSelection {
    /// BOP dataset folder.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Split folder.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave out instances whose visible fraction is below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_visib_fract: f64,
    /// Score of every entry.
    #[arg(long, default_value_t = 1.0)]
    pub score: f64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--box-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoxSourceArg {
    /// The box of the visible part (bbox_visib), as a detector sees it.
    Visible,
    /// The box of the whole silhouette (bbox_obj).
    Full,
}

/// Arguments of `posed dataset make-detections`.
#[derive(Debug, clap::Args)]
pub struct MakeDetectionsArgs {
    #[command(flatten)]
    selection: DatasetSelection,
    /// Which annotated box.
    #[arg(long, value_enum, default_value_t = BoxSourceArg::Visible)]
    box_source: BoxSourceArg,
    /// Standard deviation of each edge's shift, as a fraction of the box side.
    #[arg(long, default_value_t = 0.0)]
    box_noise: f64,
}

/// Arguments of `posed dataset make-init-poses`.
#[derive(Debug, clap::Args)]
pub struct MakeInitPosesArgs {
    #[command(flatten)]
    selection: DatasetSelection,
    /// Rotation of every pose about a random axis through the object origin, degrees.
    #[arg(long, default_value_t = 0.0)]
    rotation_deg: f64,
    /// Shift of every pose in a random direction, millimetres.
    #[arg(long, default_value_t = 0.0)]
    translation_mm: f64,
}

/// Runs `posed dataset ...`.
pub fn run_dataset(command: DatasetCommand) -> anyhow::Result<()> {
    match command {
        DatasetCommand::MakeDetections(args) => {
            let s = &args.selection;
            let dataset = load_dataset(&s.dataset, &s.split)?;
            let noise = DetectionNoise {
                seed: s.seed,
                box_source: match args.box_source {
                    BoxSourceArg::Visible => BoxSource::Visible,
                    BoxSourceArg::Full => BoxSource::Full,
                },
                box_noise: args.box_noise,
                min_visib_fract: s.min_visib_fract,
                score: s.score,
            };
            let detections = make_detections(&dataset, &noise)?;
            write_detections(&s.out, &detections)
                .with_context(|| "writing the detections".to_string())?;
            println!(
                "wrote {} detections to {}",
                detections.len(),
                s.out.display()
            );
        }
        DatasetCommand::MakeInitPoses(args) => {
            let s = &args.selection;
            let dataset = load_dataset(&s.dataset, &s.split)?;
            let noise = PoseNoise {
                seed: s.seed,
                rotation_deg: args.rotation_deg,
                translation_mm: args.translation_mm,
                min_visib_fract: s.min_visib_fract,
                score: s.score,
            };
            let poses = make_init_poses(&dataset, &noise)?;
            write_results(&s.out, &poses).with_context(|| "writing the poses".to_string())?;
            println!("wrote {} initial poses to {}", poses.len(), s.out.display());
        }
    }
    Ok(())
}

//! Synthetic input made from a dataset's ground truth, deterministic for a seed (ChaCha8),
//! so a shipped file can be regenerated bit for bit:
//!
//! - [`synth_estimates`]: pose estimates, each instance perturbed by a random rotation and
//!   translation, some instances missed, some false positives added;
//! - [`make_detections`]: 2D detections, the annotated boxes with noisy edges;
//! - [`make_init_poses`]: initial poses for the refiner, each off the ground truth by
//!   exactly a given angle and distance.
//!
//! This is demo, test and bench input, not a pose estimator: it lets `posed eval` and
//! `posed predict` run on the bundled data without a detector, and gives the eval benches
//! YCB-Video-sized input.

use nalgebra::{Rotation3, Unit, Vector3};
use posed_kernels::Pose;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bop::dataset::{BopDataset, ImageAnnotations, Scene};
use crate::bop::detections::Detection2d;
use crate::bop::models::MM_TO_M;
use crate::bop::results::Estimate;
use crate::bop::scene::GtInfo;
use crate::{Error, Result};

/// How estimates are made from ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthOptions {
    /// Random seed.
    pub seed: u64,
    /// Largest rotation perturbation, degrees (the angle is drawn as `max * u^2`, so most
    /// estimates are good and a few are poor, as with a real method).
    pub max_rotation_deg: f64,
    /// Largest translation perturbation, millimetres (drawn as `max * u^2`).
    pub max_translation_mm: f64,
    /// Probability that an instance gets no estimate.
    pub miss_rate: f64,
    /// Expected number of false positives per image.
    pub false_positives_per_image: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 2020,
            max_rotation_deg: 20.0,
            max_translation_mm: 40.0,
            miss_rate: 0.05,
            false_positives_per_image: 0.3,
        }
    }
}

/// Makes estimates for every image of the dataset, in (scene, image, instance) order.
pub fn synth_estimates(dataset: &BopDataset, options: &SynthOptions) -> Vec<Estimate> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let obj_ids: Vec<u32> = dataset.models.objects.keys().copied().collect();
    let mut estimates = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            for instance in &image.gt {
                if rng.random::<f64>() < options.miss_rate {
                    continue;
                }
                let severity_rotation = rng.random::<f64>().powi(2);
                let severity_translation = rng.random::<f64>().powi(2);
                let delta = random_pose(
                    &mut rng,
                    options.max_rotation_deg.to_radians() * severity_rotation,
                    options.max_translation_mm * 1e-3 * severity_translation,
                );
                let gt = &instance.camera_from_object;
                // Rotation about the object origin in the camera frame, then a shift.
                let camera_from_object = Pose {
                    rotation: delta.rotation * gt.rotation,
                    translation_m: gt.translation_m + delta.translation_m,
                };
                let noise = 0.1 * rng.random::<f64>();
                let score = (1.0 - 0.5 * (severity_rotation + severity_translation) + noise)
                    .clamp(0.0, 1.0);
                estimates.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score,
                    camera_from_object,
                    time_s: -1.0,
                });
            }
            // False positives: a random object near a random annotated instance, 20 to
            // 40 cm away, with a low score.
            let mut expected = options.false_positives_per_image;
            while !image.gt.is_empty() && !obj_ids.is_empty() && rng.random::<f64>() < expected {
                expected -= 1.0;
                let anchor = &image.gt[rng.random_range(0..image.gt.len())].camera_from_object;
                let obj_id = obj_ids[rng.random_range(0..obj_ids.len())];
                let offset = random_unit(&mut rng) * rng.random_range(0.2..0.4);
                let angle_rad = std::f64::consts::PI * rng.random::<f64>();
                let rotation = random_pose(&mut rng, angle_rad, 0.0).rotation;
                estimates.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id,
                    score: 0.5 * rng.random::<f64>(),
                    camera_from_object: Pose {
                        rotation: rotation * anchor.rotation,
                        translation_m: anchor.translation_m + offset,
                    },
                    time_s: -1.0,
                });
            }
        }
    }
    estimates
}

/// Where a box made from ground truth comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxSource {
    /// The box of the visible part (`bbox_visib` of `scene_gt_info.json`), as a detector
    /// would see it.
    #[default]
    Visible,
    /// The box of the full silhouette (`bbox_obj`), which may leave the image.
    Full,
}

/// How detections are made from ground truth (see [`make_detections`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionNoise {
    /// Random seed.
    pub seed: u64,
    /// Which annotated box each detection starts from.
    pub box_source: BoxSource,
    /// Each of the four edges moves by a draw of N(0, (`box_noise` * side length)^2):
    /// left and right edges by the box width, top and bottom by its height. 0 gives the
    /// annotated boxes exactly; otherwise boxes are rounded to 1/1000 pixel (so that a
    /// written file reads back exactly).
    pub box_noise: f64,
    /// Instances whose `visib_fract` is below this get no detection.
    pub min_visib_fract: f64,
    /// The score of every detection.
    pub score: f64,
}

impl Default for DetectionNoise {
    /// The annotated visible boxes, exactly, for every instance with a visible box.
    fn default() -> Self {
        Self {
            seed: 0,
            box_source: BoxSource::Visible,
            box_noise: 0.0,
            min_visib_fract: 0.0,
            score: 1.0,
        }
    }
}

impl DetectionNoise {
    fn check(&self, dataset: &BopDataset) -> Result<()> {
        let what = "make_detections";
        check_option(dataset, what, "box_noise", self.box_noise, BOX_NOISE)?;
        check_option(
            dataset,
            what,
            "min_visib_fract",
            self.min_visib_fract,
            FRACTION,
        )?;
        check_option(dataset, what, "score", self.score, FINITE)
    }
}

/// How initial poses are made from ground truth (see [`make_init_poses`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoseNoise {
    /// Random seed.
    pub seed: u64,
    /// Each pose is turned by exactly this angle, degrees in [0, 180], about a uniform
    /// random axis through the object origin (axis in the camera frame).
    pub rotation_deg: f64,
    /// Each pose is shifted by exactly this distance, millimetres, in a uniform random
    /// direction.
    pub translation_mm: f64,
    /// Instances whose `visib_fract` is below this get no pose.
    pub min_visib_fract: f64,
    /// The score of every pose.
    pub score: f64,
}

impl Default for PoseNoise {
    /// The ground-truth poses, exactly, for every instance with a visible box.
    fn default() -> Self {
        Self {
            seed: 0,
            rotation_deg: 0.0,
            translation_mm: 0.0,
            min_visib_fract: 0.0,
            score: 1.0,
        }
    }
}

impl PoseNoise {
    fn check(&self, dataset: &BopDataset) -> Result<()> {
        let what = "make_init_poses";
        check_option(dataset, what, "rotation_deg", self.rotation_deg, HALF_TURN)?;
        check_option(
            dataset,
            what,
            "translation_mm",
            self.translation_mm,
            SHIFT_MM,
        )?;
        check_option(
            dataset,
            what,
            "min_visib_fract",
            self.min_visib_fract,
            FRACTION,
        )?;
        check_option(dataset, what, "score", self.score, FINITE)
    }
}

/// An accepted range of an option: a test and the words for the error.
type Accepted = (fn(f64) -> bool, &'static str);

const FINITE: Accepted = (f64::is_finite, "a finite number");
// Bounded so that the boxes and poses written stay finite (JSON has no infinity).
const BOX_NOISE: Accepted = (
    |v| (0.0..=10.0).contains(&v),
    "a fraction of the box side in [0, 10]",
);
const SHIFT_MM: Accepted = (|v| (0.0..=1e6).contains(&v), "a distance in [0, 1e6] mm");
const FRACTION: Accepted = (|v| (0.0..=1.0).contains(&v), "a fraction in [0, 1]");
const HALF_TURN: Accepted = (|v| (0.0..=180.0).contains(&v), "an angle in [0, 180]");

fn check_option(
    dataset: &BopDataset,
    what: &str,
    name: &str,
    value: f64,
    (accepts, expected): Accepted,
) -> Result<()> {
    if accepts(value) {
        return Ok(());
    }
    Err(Error::Dataset {
        path: dataset.root.clone(),
        detail: format!("{what}: {name}: expected {expected}, found {value}"),
    })
}

/// Makes one detection per annotated instance with a visible box (`bbox_visib` with
/// `w, h > 0`) and `visib_fract >= min_visib_fract`, in (scene, image, instance) order:
/// the annotated box of `box_source` with each edge moved by Gaussian noise (a box whose
/// edges cross is flipped back; boxes are not clipped to the image). Deterministic for
/// `noise.seed`; the noise of an instance does not depend on which other instances are
/// skipped. Needs `scene_gt_info.json` in every scene; `time_s` is -1.
pub fn make_detections(dataset: &BopDataset, noise: &DetectionNoise) -> Result<Vec<Detection2d>> {
    noise.check(dataset)?;
    let mut rng = ChaCha8Rng::seed_from_u64(noise.seed);
    let mut detections = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            let infos = gt_infos(scene, *im_id, image).and_then(|infos| {
                infos.ok_or_else(|| {
                    missing_gt_info(scene, "make_detections needs its bbox_visib / bbox_obj")
                })
            })?;
            for (instance, info) in image.gt.iter().zip(infos) {
                // Drawn for every instance, so a skipped one does not shift the others.
                let edges = [(); 4].map(|()| standard_normal(&mut rng));
                if !is_visible(info, noise.min_visib_fract) {
                    continue;
                }
                let bbox = match noise.box_source {
                    BoxSource::Visible => info.bbox_visib,
                    BoxSource::Full => info.bbox_obj,
                };
                detections.push(Detection2d {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score: noise.score,
                    bbox_xywh: jitter_box(bbox, edges, noise.box_noise),
                    time_s: -1.0,
                });
            }
        }
    }
    Ok(detections)
}

/// Makes one initial pose per annotated instance, in (scene, image, instance) order: the
/// ground truth turned by exactly `rotation_deg` about a uniform random axis through the
/// object origin, then shifted by exactly `translation_mm` in a uniform random direction.
/// Instances without a visible box or with `visib_fract < min_visib_fract` are skipped;
/// without `scene_gt_info.json` every instance is kept, unless `min_visib_fract > 0`,
/// which is an error. Deterministic for `noise.seed`; the noise of an instance does not
/// depend on which other instances are skipped. `time_s` is -1.
pub fn make_init_poses(dataset: &BopDataset, noise: &PoseNoise) -> Result<Vec<Estimate>> {
    noise.check(dataset)?;
    let mut rng = ChaCha8Rng::seed_from_u64(noise.seed);
    let angle_rad = noise.rotation_deg.to_radians();
    let length_m = noise.translation_mm * MM_TO_M;
    let mut estimates = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            let infos = gt_infos(scene, *im_id, image)?;
            if infos.is_none() && noise.min_visib_fract > 0.0 {
                return Err(missing_gt_info(
                    scene,
                    "make_init_poses needs its visib_fract when min_visib_fract > 0",
                ));
            }
            for (gt_idx, instance) in image.gt.iter().enumerate() {
                // Drawn for every instance, so a skipped one does not shift the others.
                let delta = random_pose(&mut rng, angle_rad, length_m);
                if infos.is_some_and(|infos| !is_visible(&infos[gt_idx], noise.min_visib_fract)) {
                    continue;
                }
                let gt = &instance.camera_from_object;
                estimates.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score: noise.score,
                    camera_from_object: Pose {
                        rotation: delta.rotation * gt.rotation,
                        translation_m: gt.translation_m + delta.translation_m,
                    },
                    time_s: -1.0,
                });
            }
        }
    }
    Ok(estimates)
}

/// The image's `scene_gt_info.json` entries, one per instance, or `None` when the scene
/// has no such file.
fn gt_infos<'a>(
    scene: &Scene,
    im_id: u32,
    image: &'a ImageAnnotations,
) -> Result<Option<&'a [GtInfo]>> {
    match image.gt_info.as_deref() {
        Some(infos) if infos.len() != image.gt.len() => Err(Error::Dataset {
            path: scene.dir.join("scene_gt_info.json"),
            detail: format!(
                "image {im_id}: expected {} entries (one per scene_gt.json instance), found {}",
                image.gt.len(),
                infos.len()
            ),
        }),
        infos => Ok(infos),
    }
}

fn missing_gt_info(scene: &Scene, why: &str) -> Error {
    Error::Dataset {
        path: scene.dir.clone(),
        detail: format!("no scene_gt_info.json: {why}"),
    }
}

/// Whether an instance has a visible box and is visible enough.
fn is_visible(info: &GtInfo, min_visib_fract: f64) -> bool {
    let [_, _, w, h] = info.bbox_visib;
    w > 0.0 && h > 0.0 && info.visib_fract >= min_visib_fract
}

/// Noisy boxes are rounded to 1/1000 pixel. serde_json (built without its
/// `float_roundtrip` feature) reads numbers of 16 or 17 significant digits back up to one
/// ulp off; a multiple of 1/1000 is written with few digits and reads back exactly, so a
/// detections file holds exactly the boxes made here.
const BOX_STEPS_PER_PX: f64 = 1000.0;

/// Moves the edges of `[x, y, w, h]` by `sigma` times the side length times the standard
/// normal draws `[left, top, right, bottom]`, then rounds to 1/1000 pixel. Exact for
/// `sigma` = 0.
fn jitter_box(bbox: [f64; 4], edges: [f64; 4], sigma: f64) -> [f64; 4] {
    if sigma == 0.0 {
        return bbox;
    }
    let [x, y, w, h] = bbox;
    let [left, top, right, bottom] = edges;
    let (x, w) = jitter_span(x, w, left, right, sigma);
    let (y, h) = jitter_span(y, h, top, bottom, sigma);
    // Dividing the rounded integer (not multiplying by 1e-3) gives the f64 nearest to
    // the decimal, which is what a parser reads back.
    [x, y, w, h].map(|v| (v * BOX_STEPS_PER_PX).round() / BOX_STEPS_PER_PX)
}

/// Moves both ends of the span `[start, start + length]` by `sigma * length` times `low`
/// and `high`.
fn jitter_span(start: f64, length: f64, low: f64, high: f64, sigma: f64) -> (f64, f64) {
    let scale = sigma * length;
    let start = start + scale * low;
    let length = length + scale * (high - low);
    if length < 0.0 {
        // The ends crossed: the box spans them the other way round.
        (start + length, -length)
    } else {
        (start, length)
    }
}

/// A standard normal draw (Box-Muller; `rand_distr` is not a dependency).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A rotation of `angle_rad` about a uniform random axis and a translation of `length_m`
/// in a uniform random direction.
fn random_pose(rng: &mut ChaCha8Rng, angle_rad: f64, length_m: f64) -> Pose {
    let axis = Unit::new_normalize(random_unit(rng));
    Pose {
        rotation: *Rotation3::from_axis_angle(&axis, angle_rad).matrix(),
        translation_m: random_unit(rng) * length_m,
    }
}

/// A uniform random unit vector (rejection sampling in the unit ball).
fn random_unit(rng: &mut ChaCha8Rng) -> Vector3<f64> {
    loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm = v.norm();
        if (1e-3..=1.0).contains(&norm) {
            return v / norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use posed_kernels::metrics::{rotation_error_deg, translation_error_m};

    use super::*;
    use crate::bop::detections::{read_detections, write_detections};
    use crate::bop::scene::GtInstance;

    /// The bundled YCB-Video excerpt, loaded once for all tests.
    fn ycbv() -> &'static BopDataset {
        static DATASET: OnceLock<BopDataset> = OnceLock::new();
        DATASET.get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            BopDataset::load(&root.join("data/ycbv-mini"), "test").expect("ycbv-mini loads")
        })
    }

    /// Every instance with its gt_info, in (scene, image, instance) order.
    fn instances(dataset: &BopDataset) -> Vec<(u32, u32, &GtInstance, &GtInfo)> {
        let mut out = Vec::new();
        for (scene_id, scene) in &dataset.scenes {
            for (im_id, image) in &scene.images {
                let infos = image.gt_info.as_ref().expect("ycbv-mini has scene_gt_info");
                for (instance, info) in image.gt.iter().zip(infos) {
                    out.push((*scene_id, *im_id, instance, info));
                }
            }
        }
        out
    }

    fn without_gt_info(dataset: &BopDataset) -> BopDataset {
        let mut bare = dataset.clone();
        for scene in bare.scenes.values_mut() {
            for image in scene.images.values_mut() {
                image.gt_info = None;
            }
        }
        bare
    }

    #[test]
    fn zero_noise_detections_are_the_annotated_boxes() {
        let dataset = ycbv();
        let all = instances(dataset);
        // ycbv-mini: 62 instances, all with a visible box, some barely visible.
        assert_eq!(all.len(), 62);
        for source in [BoxSource::Visible, BoxSource::Full] {
            let noise = DetectionNoise {
                box_source: source,
                score: 0.5,
                ..DetectionNoise::default()
            };
            let detections = make_detections(dataset, &noise).expect("detections");
            assert_eq!(detections.len(), all.len());
            for (d, (scene_id, im_id, instance, info)) in detections.iter().zip(&all) {
                let bbox = match source {
                    BoxSource::Visible => info.bbox_visib,
                    BoxSource::Full => info.bbox_obj,
                };
                assert_eq!(
                    d,
                    &Detection2d {
                        scene_id: *scene_id,
                        im_id: *im_id,
                        obj_id: instance.obj_id,
                        score: 0.5,
                        bbox_xywh: bbox,
                        time_s: -1.0,
                    }
                );
            }
        }
    }

    #[test]
    fn min_visib_fract_skips_the_hidden_instances() {
        let dataset = ycbv();
        for min_visib_fract in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let visible: Vec<_> = instances(dataset)
                .into_iter()
                .filter(|(.., info)| info.visib_fract >= min_visib_fract)
                .map(|(scene_id, im_id, instance, _)| (scene_id, im_id, instance.obj_id))
                .collect();
            let detections = make_detections(
                dataset,
                &DetectionNoise {
                    min_visib_fract,
                    box_noise: 0.2,
                    ..DetectionNoise::default()
                },
            )
            .expect("detections");
            let poses = make_init_poses(
                dataset,
                &PoseNoise {
                    min_visib_fract,
                    rotation_deg: 10.0,
                    ..PoseNoise::default()
                },
            )
            .expect("poses");
            let ids: Vec<_> = detections
                .iter()
                .map(|d| (d.scene_id, d.im_id, d.obj_id))
                .collect();
            assert_eq!(
                ids, visible,
                "detections, min_visib_fract {min_visib_fract}"
            );
            let ids: Vec<_> = poses
                .iter()
                .map(|e| (e.scene_id, e.im_id, e.obj_id))
                .collect();
            assert_eq!(ids, visible, "poses, min_visib_fract {min_visib_fract}");
        }
        // The cut really removes something on this data.
        let kept = |min_visib_fract| {
            make_detections(
                dataset,
                &DetectionNoise {
                    min_visib_fract,
                    ..DetectionNoise::default()
                },
            )
            .expect("detections")
            .len()
        };
        assert!(kept(0.5) < kept(0.0));
    }

    #[test]
    fn skipping_does_not_change_the_noise_of_kept_instances() {
        let dataset = ycbv();
        let noise = DetectionNoise {
            seed: 7,
            box_noise: 0.1,
            ..DetectionNoise::default()
        };
        let all = make_detections(dataset, &noise).expect("all");
        let some = make_detections(
            dataset,
            &DetectionNoise {
                min_visib_fract: 0.9,
                ..noise
            },
        )
        .expect("some");
        assert!(some.len() < all.len());
        assert!(some.iter().all(|d| all.contains(d)));
    }

    #[test]
    fn zero_noise_init_poses_are_the_ground_truth() {
        let dataset = ycbv();
        let all = instances(dataset);
        let poses = make_init_poses(dataset, &PoseNoise::default()).expect("poses");
        assert_eq!(poses.len(), all.len());
        for (e, (scene_id, im_id, instance, _)) in poses.iter().zip(&all) {
            assert_eq!(
                e,
                &Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score: 1.0,
                    camera_from_object: instance.camera_from_object,
                    time_s: -1.0,
                }
            );
        }
    }

    #[test]
    fn init_poses_are_off_by_exactly_the_noise() {
        let dataset = ycbv();
        let all = instances(dataset);
        for (rotation_deg, translation_mm) in [(5.0, 0.0), (5.0, 20.0), (0.0, 3.5), (180.0, 100.0)]
        {
            let noise = PoseNoise {
                seed: 3,
                rotation_deg,
                translation_mm,
                ..PoseNoise::default()
            };
            let poses = make_init_poses(dataset, &noise).expect("poses");
            assert_eq!(poses.len(), all.len());
            for (e, (.., instance, _)) in poses.iter().zip(&all) {
                let gt = &instance.camera_from_object;
                let est = &e.camera_from_object;
                // The turn, from the trace: exact at every angle.
                let cos = ((est.rotation * gt.rotation.transpose()).trace() - 1.0) / 2.0;
                assert!(
                    (cos - rotation_deg.to_radians().cos()).abs() < 1e-12,
                    "cos {cos}"
                );
                // The metric's acos loses half the digits near 0 and 180 degrees (its
                // slope is infinite there), so it is checked in between; no turn must
                // leave the rotation untouched.
                if rotation_deg == 0.0 {
                    assert_eq!(est.rotation, gt.rotation);
                } else if rotation_deg < 180.0 {
                    let re = rotation_error_deg(gt, est);
                    assert!(
                        (re - rotation_deg).abs() < 1e-9,
                        "rotation error {re} deg, expected {rotation_deg}"
                    );
                }
                let te_mm = translation_error_m(gt, est) / MM_TO_M;
                assert!(
                    (te_mm - translation_mm).abs() < 1e-9,
                    "translation error {te_mm} mm, expected {translation_mm}"
                );
                let defect = (est.rotation.transpose() * est.rotation
                    - nalgebra::Matrix3::identity())
                .amax();
                assert!(defect < 1e-12 && (est.rotation.determinant() - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        let dataset = ycbv();
        let boxes = |seed| {
            let noise = DetectionNoise {
                seed,
                box_noise: 0.1,
                ..DetectionNoise::default()
            };
            make_detections(dataset, &noise).expect("detections")
        };
        assert_eq!(boxes(1), boxes(1));
        assert_ne!(boxes(1), boxes(2));
        let poses = |seed| {
            let noise = PoseNoise {
                seed,
                rotation_deg: 5.0,
                translation_mm: 10.0,
                ..PoseNoise::default()
            };
            make_init_poses(dataset, &noise).expect("poses")
        };
        assert_eq!(poses(1), poses(1));
        let (a, b) = (poses(1), poses(2));
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(a, b)| a.camera_from_object != b.camera_from_object));
    }

    #[test]
    fn box_noise_moves_each_edge_by_its_side_length() {
        let dataset = ycbv();
        let sigma = 0.1;
        let noisy = make_detections(
            dataset,
            &DetectionNoise {
                seed: 11,
                box_noise: sigma,
                ..DetectionNoise::default()
            },
        )
        .expect("detections");
        // Edge moves in units of the side length: should be N(0, sigma^2).
        let mut moves = Vec::new();
        for (d, (.., info)) in noisy.iter().zip(instances(dataset)) {
            let [x, y, w, h] = info.bbox_visib;
            let [x1, y1, x2, y2] = d.bbox_xyxy();
            moves.extend([
                (x1 - x) / w,
                (x2 - x - w) / w,
                (y1 - y) / h,
                (y2 - y - h) / h,
            ]);
        }
        let n = moves.len() as f64;
        let mean = moves.iter().sum::<f64>() / n;
        let std = (moves.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.03, "mean edge move {mean}");
        assert!((std / sigma - 1.0).abs() < 0.2, "edge move std {std}");

        // A written file reads back bit for bit.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("detections.json");
        write_detections(&path, &noisy).expect("writes");
        assert_eq!(read_detections(&path).expect("reads"), noisy);

        // Noise larger than the box flips crossed edges back: sizes stay >= 0.
        let wild = make_detections(
            dataset,
            &DetectionNoise {
                box_noise: 3.0,
                ..DetectionNoise::default()
            },
        )
        .expect("detections");
        assert!(wild
            .iter()
            .all(|d| d.bbox_xywh[2] >= 0.0 && d.bbox_xywh[3] >= 0.0));
    }

    #[test]
    fn standard_normal_has_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(draws.iter().all(|d| d.is_finite()));
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn missing_gt_info_is_an_error_only_where_it_is_needed() {
        let bare = without_gt_info(ycbv());
        let first_scene = bare.scenes.values().next().expect("a scene").dir.clone();
        for source in [BoxSource::Visible, BoxSource::Full] {
            let noise = DetectionNoise {
                box_source: source,
                ..DetectionNoise::default()
            };
            match make_detections(&bare, &noise) {
                Err(Error::Dataset { path, detail }) => {
                    assert_eq!(path, first_scene);
                    assert!(detail.contains("scene_gt_info.json"), "{detail}");
                }
                other => panic!("expected Error::Dataset, got {other:?}"),
            }
        }
        // Without a visibility cut every instance gets a pose.
        let poses = make_init_poses(&bare, &PoseNoise::default()).expect("poses");
        assert_eq!(poses.len(), bare.n_gt_instances());
        let noise = PoseNoise {
            min_visib_fract: 0.1,
            ..PoseNoise::default()
        };
        match make_init_poses(&bare, &noise) {
            Err(Error::Dataset { path, detail }) => {
                assert_eq!(path, first_scene);
                assert!(detail.contains("min_visib_fract"), "{detail}");
            }
            other => panic!("expected Error::Dataset, got {other:?}"),
        }
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let dataset = ycbv();
        let message = |result: Result<usize>| match result {
            Err(err @ Error::Dataset { .. }) => err.to_string(),
            other => panic!("expected Error::Dataset, got {other:?}"),
        };
        let detections =
            |noise: DetectionNoise| message(make_detections(dataset, &noise).map(|d| d.len()));
        let poses = |noise: PoseNoise| message(make_init_poses(dataset, &noise).map(|e| e.len()));
        let d = DetectionNoise::default();
        let p = PoseNoise::default();
        let cases = [
            (
                detections(DetectionNoise {
                    box_noise: -0.1,
                    ..d
                }),
                "box_noise: expected a fraction of the box side in [0, 10], found -0.1",
            ),
            (
                detections(DetectionNoise {
                    box_noise: 10.5,
                    ..d
                }),
                "box_noise: expected a fraction of the box side in [0, 10], found 10.5",
            ),
            (
                detections(DetectionNoise {
                    min_visib_fract: 1.5,
                    ..d
                }),
                "min_visib_fract: expected a fraction in [0, 1], found 1.5",
            ),
            (
                detections(DetectionNoise {
                    score: f64::INFINITY,
                    ..d
                }),
                "score: expected a finite number, found inf",
            ),
            (
                poses(PoseNoise {
                    rotation_deg: 181.0,
                    ..p
                }),
                "rotation_deg: expected an angle in [0, 180], found 181",
            ),
            (
                poses(PoseNoise {
                    rotation_deg: f64::NAN,
                    ..p
                }),
                "rotation_deg: expected an angle in [0, 180], found NaN",
            ),
            (
                poses(PoseNoise {
                    translation_mm: -1.0,
                    ..p
                }),
                "translation_mm: expected a distance in [0, 1e6] mm, found -1",
            ),
            (
                poses(PoseNoise {
                    min_visib_fract: f64::NAN,
                    ..p
                }),
                "min_visib_fract: expected a fraction in [0, 1], found NaN",
            ),
        ];
        for (message, expected) in cases {
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(
                message.contains("ycbv-mini"),
                "{message:?} names no dataset"
            );
        }
    }
}

//! Multi-view CosyPose (spec C): single-view candidates from several views of one scene
//! become one consistent scene: objects with world poses, cameras with poses, and every
//! object reprojected into every camera of its view group.
//!
//! 1. Candidates below the score threshold (0.3) are set aside.
//! 2. [`matching`]: RANSAC over every ordered pair of views finds their relative pose and
//!    which candidates are the same object (spec C.1).
//! 3. [`bundle`]: per group of views linked by accepted pairs, Levenberg-Marquardt moves
//!    the objects' and cameras' poses to agree with every candidate (spec C.2).
//!
//! Where CosyPose's results depend on the C++ library it was built with (the order of
//! RANSAC seeds, `std::shuffle`) posed follows libstdc++ before GCC 10; CosyPose's own
//! quirks (hypothesis 0 never wins, spec F.5) are kept. See the README's "`posed
//! multiview`" for what differs.

mod bundle;
mod matching;

use std::collections::{BTreeMap, BTreeSet};

use posed_kernels::cosypose::sample::Mt19937;
use posed_kernels::symmetry::{cosypose_symmetry_transforms, COSYPOSE_CONTINUOUS_SAMPLES};
use posed_kernels::{Intrinsics, Pose};

pub use matching::ViewPair;

use crate::bop::models::ModelInfo;
use crate::{Error, Result};

/// A single-view pose estimate of one object in one view.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The view (image id) it was estimated in.
    pub view_id: u32,
    /// The object's label (BOP object id).
    pub obj_id: u32,
    /// Its score; candidates below [`MultiviewOptions::score_threshold`] are not matched.
    pub score: f64,
    /// `T_CO`, metres.
    pub camera_from_object: Pose,
}

/// One view: its camera intrinsics and, when known, its pose in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The view (image id).
    pub view_id: u32,
    /// Its camera.
    pub intrinsics: Intrinsics,
    /// `T_WC`, when the camera poses are known ([`MultiviewOptions::known_cameras`]).
    pub world_from_camera: Option<Pose>,
}

/// What the matching and the adjustment see of an object: the 8 corners of its model's
/// axis-aligned box and its symmetries.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectGeometry {
    /// The box corners, metres, object frame.
    pub corners_m: [[f64; 3]; 8],
    /// The identity and the object's symmetries, 64 samples per continuous symmetry (as
    /// CosyPose's multi-view mesh database, `n_sym=64`).
    pub symmetries: Vec<Pose>,
}

impl ObjectGeometry {
    /// The geometry of a `models_info.json` entry.
    pub fn from_info(obj_id: u32, info: &ModelInfo) -> Result<ObjectGeometry> {
        let symmetries =
            cosypose_symmetry_transforms(&info.symmetries, COSYPOSE_CONTINUOUS_SAMPLES).map_err(
                |source| Error::Kernel {
                    context: format!("symmetries of object {obj_id}"),
                    source,
                },
            )?;
        Ok(ObjectGeometry {
            corners_m: info.aabb_corners_m(),
            symmetries,
        })
    }
}

/// CosyPose's multi-view settings (`predict_scene_state` and its evaluation defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiviewOptions {
    /// Candidates scoring below this are not matched (they stay in the output).
    pub score_threshold: f64,
    /// RANSAC seeds per ordered view pair.
    pub ransac_iterations: usize,
    /// Two candidates agree when their symmetric mean corner distance is at most this.
    pub inlier_distance_m: f64,
    /// A view pair needs at least this many one-to-one inlier matches.
    pub min_inliers: usize,
    /// Levenberg-Marquardt iterations at most.
    pub ba_iterations: usize,
    /// Use the views' known camera poses (no RANSAC over camera poses, cameras fixed in
    /// the adjustment).
    pub known_cameras: bool,
    /// Objects closer than this to a higher-scoring one are dropped from the scene's
    /// object list (label-agnostic 3D NMS of `predicted_scene.json`; the reprojected
    /// estimates are not filtered).
    pub nms_distance_m: f64,
}

impl Default for MultiviewOptions {
    fn default() -> Self {
        MultiviewOptions {
            score_threshold: 0.3,
            ransac_iterations: 2000,
            inlier_distance_m: 0.02,
            min_inliers: 3,
            ba_iterations: 100,
            known_cameras: false,
            nms_distance_m: 0.04,
        }
    }
}

/// An object of the reconstructed scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    /// The object's label (BOP object id).
    pub obj_id: u32,
    /// The sum of its candidates' scores.
    pub score: f64,
    /// `T_WO`, metres, in the view group's world frame.
    pub world_from_object: Pose,
    /// Its candidates, as indices into the candidates given to [`reconstruct_scene`].
    pub candidates: Vec<usize>,
}

/// A camera of the reconstructed scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneCamera {
    /// The view (image id).
    pub view_id: u32,
    /// `T_WC`, metres.
    pub world_from_camera: Pose,
    /// Its intrinsics.
    pub intrinsics: Intrinsics,
}

/// Views linked by accepted pairs, adjusted together. Its world frame is one of its
/// cameras (with known cameras too, as in CosyPose).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewGroup {
    /// Its cameras, in the order the views were given.
    pub cameras: Vec<SceneCamera>,
    /// Its objects, in the order matching found them.
    pub objects: Vec<SceneObject>,
    /// The truncated reprojection cost before and after the adjustment, squared pixels.
    pub initial_cost_px2: f64,
    /// See `initial_cost_px2`.
    pub final_cost_px2: f64,
    /// Levenberg-Marquardt iterations run.
    pub ba_iterations: usize,
}

impl ViewGroup {
    /// The objects after label-agnostic 3D NMS: by descending score, each dropped when its
    /// position is at most `distance_m` from one kept before it (`predicted_scene.json`).
    pub fn objects_after_nms(&self, distance_m: f64) -> Vec<&SceneObject> {
        let mut order: Vec<&SceneObject> = self.objects.iter().collect();
        order.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<&SceneObject> = Vec::new();
        for object in order {
            let position = object.world_from_object.translation_m;
            if kept
                .iter()
                .all(|k| (k.world_from_object.translation_m - position).norm() > distance_m)
            {
                kept.push(object);
            }
        }
        kept
    }

    /// Every object in every camera of the group (`ba_output`): `T_CO = T_WC^-1 T_WO`,
    /// scored the object's score plus one so that these outrank single-view candidates.
    pub fn reprojected(&self) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(self.cameras.len() * self.objects.len());
        for camera in &self.cameras {
            let camera_from_world = camera.world_from_camera.inverse();
            for object in &self.objects {
                out.push(Candidate {
                    view_id: camera.view_id,
                    obj_id: object.obj_id,
                    score: object.score + 1.0,
                    camera_from_object: camera_from_world.compose(&object.world_from_object),
                });
            }
        }
        out
    }
}

/// The reconstruction of one scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneReconstruction {
    /// The view pairs RANSAC accepted, ordered by (view1, view2). Their inliers index the
    /// candidates at or above the score threshold, in the order given.
    pub pairs: Vec<ViewPair>,
    /// The view groups with objects.
    pub groups: Vec<ViewGroup>,
}

impl SceneReconstruction {
    /// Every group's [`ViewGroup::reprojected`], group after group.
    pub fn reprojected(&self) -> Vec<Candidate> {
        self.groups
            .iter()
            .flat_map(ViewGroup::reprojected)
            .collect()
    }
}

/// Reconstructs one scene from its single-view `candidates` (spec C). `views` must hold
/// every view a candidate names (with its camera pose when `options.known_cameras`),
/// `geometry` every object.
///
/// # Errors
/// A candidate whose view or object is missing, a view whose known pose is missing, a
/// non-finite pose or score, or options out of range; each names what it is about.
pub fn reconstruct_scene(
    candidates: &[Candidate],
    views: &[View],
    geometry: &BTreeMap<u32, ObjectGeometry>,
    options: &MultiviewOptions,
) -> Result<SceneReconstruction> {
    check_options(options)?;
    let views_by_id: BTreeMap<u32, &View> = views.iter().map(|v| (v.view_id, v)).collect();
    if views_by_id.len() != views.len() {
        return Err(invalid("the views".into(), "a view id is given twice"));
    }
    for (index, candidate) in candidates.iter().enumerate() {
        let what = || {
            format!(
                "candidate {index} (view {}, object {})",
                candidate.view_id, candidate.obj_id
            )
        };
        let Some(view) = views_by_id.get(&candidate.view_id) else {
            return Err(invalid(what(), "no camera is given for its view"));
        };
        if options.known_cameras && view.world_from_camera.is_none() {
            return Err(invalid(what(), "its view's camera pose is not known"));
        }
        if !geometry.contains_key(&candidate.obj_id) {
            return Err(invalid(what(), "its object is not among the models"));
        }
        let pose = &candidate.camera_from_object;
        let finite = pose
            .rotation
            .iter()
            .chain(pose.translation_m.iter())
            .all(|v| v.is_finite());
        if !finite || !candidate.score.is_finite() {
            return Err(invalid(what(), "its pose or score is not finite"));
        }
    }

    // Stage 1: the candidates that take part, remembering where they came from.
    let kept: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].score >= options.score_threshold)
        .collect();
    let kept_candidates: Vec<Candidate> = kept.iter().map(|&i| candidates[i].clone()).collect();
    let known: Option<BTreeMap<u32, Pose>> = options.known_cameras.then(|| {
        views
            .iter()
            .filter_map(|v| Some((v.view_id, v.world_from_camera?)))
            .collect()
    });

    // Stage 2.
    let matching::Matching { pairs, objects } =
        matching::match_candidates(&kept_candidates, geometry, known.as_ref(), options);

    // Stage 3, per view group.
    let mut groups = Vec::new();
    for group_views in matching::view_groups(&pairs) {
        let in_group: BTreeSet<u32> = group_views.iter().copied().collect();
        let group_objects: Vec<&Vec<usize>> = objects
            .iter()
            .filter(|members| {
                members
                    .iter()
                    .all(|&c| in_group.contains(&kept_candidates[c].view_id))
            })
            .collect();
        if group_objects.is_empty() {
            continue;
        }
        // The cameras are the group's views that see one of its objects.
        let seen: BTreeSet<u32> = group_objects
            .iter()
            .flat_map(|members| members.iter().map(|&c| kept_candidates[c].view_id))
            .collect();
        // In the order given (CosyPose keeps its cameras' order: the view group's
        // permuted order in its evaluation).
        let group_views: Vec<&View> = views.iter().filter(|v| seen.contains(&v.view_id)).collect();
        let view_index: BTreeMap<u32, usize> = group_views
            .iter()
            .enumerate()
            .map(|(i, view)| (view.view_id, i))
            .collect();
        let observations = group_objects
            .iter()
            .enumerate()
            .flat_map(|(object, members)| members.iter().map(move |&c| (object, c)))
            .map(|(object, c)| bundle::Observation {
                object,
                view: view_index[&kept_candidates[c].view_id],
                camera_from_object: kept_candidates[c].camera_from_object,
            })
            .collect();
        let problem = bundle::BundleProblem {
            views: group_views
                .iter()
                .map(|v| (v.view_id, v.intrinsics))
                .collect(),
            objects: group_objects
                .iter()
                .map(|members| &geometry[&kept_candidates[members[0]].obj_id])
                .collect(),
            observations,
            optimize_cameras: !options.known_cameras,
        };
        let adjusted = problem.solve(&pairs, options.ba_iterations)?;
        groups.push(ViewGroup {
            cameras: group_views
                .iter()
                .zip(&adjusted.world_from_camera)
                .map(|(view, pose)| SceneCamera {
                    view_id: view.view_id,
                    world_from_camera: *pose,
                    intrinsics: view.intrinsics,
                })
                .collect(),
            objects: group_objects
                .iter()
                .zip(&adjusted.world_from_object)
                .map(|(members, pose)| SceneObject {
                    obj_id: kept_candidates[members[0]].obj_id,
                    score: members.iter().map(|&c| kept_candidates[c].score).sum(),
                    world_from_object: *pose,
                    candidates: members.iter().map(|&c| kept[c]).collect(),
                })
                .collect(),
            initial_cost_px2: adjusted.initial_cost_px2,
            final_cost_px2: adjusted.final_cost_px2,
            ba_iterations: adjusted.iterations,
        });
    }
    Ok(SceneReconstruction { pairs, groups })
}

/// CosyPose's evaluation groups (`MultiViewWrapper`): per scene, in ascending scene order,
/// the scene's image ids (ascending) permuted by one numpy `RandomState(0)` shared by all
/// scenes, then cut into runs of `n_views` (the last may be shorter). `None` keeps each
/// scene whole, its images in ascending order.
pub fn view_groups_of_scenes(
    images: &BTreeMap<u32, Vec<u32>>,
    n_views: Option<usize>,
) -> Vec<(u32, Vec<u32>)> {
    let mut rng = Mt19937::new(0);
    let mut groups = Vec::new();
    for (&scene_id, image_ids) in images {
        let mut image_ids = image_ids.clone();
        image_ids.sort_unstable();
        match n_views {
            None => groups.push((scene_id, image_ids)),
            Some(n) => {
                let order = bundle::numpy_permutation(&mut rng, image_ids.len());
                let permuted: Vec<u32> = order.iter().map(|&i| image_ids[i]).collect();
                for chunk in permuted.chunks(n.max(1)) {
                    groups.push((scene_id, chunk.to_vec()));
                }
            }
        }
    }
    groups
}

fn check_options(options: &MultiviewOptions) -> Result<()> {
    let positive = |what: &str, value: f64| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(invalid(
                what.into(),
                &format!("must be a positive number, not {value}"),
            ))
        }
    };
    positive("multi-view inlier distance", options.inlier_distance_m)?;
    positive("multi-view NMS distance", options.nms_distance_m)?;
    if !options.score_threshold.is_finite() {
        return Err(invalid(
            "multi-view score threshold".into(),
            "must be a finite number",
        ));
    }
    if options.min_inliers < 1 {
        return Err(invalid(
            "multi-view minimum inliers".into(),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn invalid(what: String, reason: &str) -> Error {
    Error::Invalid {
        what,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;

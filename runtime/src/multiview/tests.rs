//! Multi-view reconstruction of the bundled ycbv-mini scene 1 (8 views of 3-4 YCB objects
//! whose camera poses are known): from its ground truth, exact and with seeded noise.

use std::path::PathBuf;

use nalgebra::{Rotation3, Unit, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::bop::dataset::BopDataset;

struct Fixture {
    candidates: Vec<Candidate>,
    views: Vec<View>,
    geometry: BTreeMap<u32, ObjectGeometry>,
    /// Ground truth `T_CO` per (view, object), for the views that list the object.
    truth: BTreeMap<(u32, u32), Pose>,
}

impl Fixture {
    /// Every candidate moved by [`perturb`] (seeded).
    fn perturb_candidates(&mut self, seed: u64, degrees: f64, shift_m: f64, depth: f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for candidate in &mut self.candidates {
            candidate.camera_from_object = perturb(
                &candidate.camera_from_object,
                &mut rng,
                degrees,
                shift_m,
                depth,
            );
        }
    }

    fn reconstruct(&self, options: &MultiviewOptions) -> SceneReconstruction {
        reconstruct_scene(&self.candidates, &self.views, &self.geometry, options)
            .expect("reconstructs")
    }

    /// The known `T_WC` of a view.
    fn world_from_camera(&self, view_id: u32) -> Pose {
        self.views
            .iter()
            .find(|v| v.view_id == view_id)
            .and_then(|v| v.world_from_camera)
            .expect("known camera")
    }

    /// The true `T_CO` of `obj_id` in `view_id`, through the known camera poses when the
    /// view does not list the object (it is outside the image).
    fn truth_in(&self, view_id: u32, obj_id: u32) -> Pose {
        if let Some(pose) = self.truth.get(&(view_id, obj_id)) {
            return *pose;
        }
        let (&(seen_in, _), camera_from_object) = self
            .truth
            .iter()
            .find(|((_, o), _)| *o == obj_id)
            .expect("the object is seen");
        self.world_from_camera(view_id)
            .inverse()
            .compose(&self.world_from_camera(seen_in))
            .compose(camera_from_object)
    }
}

fn fixture(image_ids: &[u32]) -> Fixture {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini");
    let dataset = BopDataset::load(&root, "test").expect("ycbv-mini");
    let geometry = dataset
        .models
        .objects
        .iter()
        .map(|(&id, model)| {
            (
                id,
                ObjectGeometry::from_info(id, &model.info).expect("geometry"),
            )
        })
        .collect();
    let mut candidates = Vec::new();
    let mut views = Vec::new();
    let mut truth = BTreeMap::new();
    for &im_id in image_ids {
        let image = dataset.image(1, im_id).expect("image of scene 1");
        views.push(View {
            view_id: im_id,
            intrinsics: image.camera.intrinsics,
            world_from_camera: image.camera.camera_from_world.map(|p| p.inverse()),
        });
        for gt in &image.gt {
            truth.insert((im_id, gt.obj_id), gt.camera_from_object);
            candidates.push(Candidate {
                view_id: im_id,
                obj_id: gt.obj_id,
                score: 0.9,
                camera_from_object: gt.camera_from_object,
            });
        }
    }
    Fixture {
        candidates,
        views,
        geometry,
        truth,
    }
}

/// Mean distance between the box corners of two poses of `obj_id`, metres.
fn corner_error_m(fixture: &Fixture, obj_id: u32, a: &Pose, b: &Pose) -> f64 {
    let corners = &fixture.geometry[&obj_id].corners_m;
    corners
        .iter()
        .map(|x| (a.transform_point(x) - b.transform_point(x)).norm())
        .sum::<f64>()
        / 8.0
}

fn pose_gap(a: &Pose, b: &Pose) -> (f64, f64) {
    let rotation = (a.rotation.transpose() * b.rotation - nalgebra::Matrix3::identity()).amax();
    (rotation, (a.translation_m - b.translation_m).norm())
}

const VIEWS: [u32; 5] = [0, 1, 2, 3, 4];

#[test]
fn exact_candidates_give_the_true_cameras_and_objects() {
    let fixture = fixture(&VIEWS);
    let options = MultiviewOptions::default();
    let scene = fixture.reconstruct(&options);
    // Every ordered view pair shares at least 3 objects here, so every one is accepted
    // (but the first pair can lose its first hypothesis to CosyPose's quirk, not its
    // pose), with the relative pose of the ground truth.
    assert!(scene.pairs.len() >= VIEWS.len() * (VIEWS.len() - 1) - 1);
    for pair in &scene.pairs {
        let truth = fixture
            .world_from_camera(pair.view1)
            .inverse()
            .compose(&fixture.world_from_camera(pair.view2));
        let (rotation, translation_m) = pose_gap(&pair.camera1_from_camera2, &truth);
        assert!(rotation < 1e-4 && translation_m < 1e-4, "pair {pair:?}");
        assert!(pair.inliers.len() >= 3);
    }
    assert_eq!(scene.groups.len(), 1);
    let group = &scene.groups[0];
    assert_eq!(
        group.cameras.iter().map(|c| c.view_id).collect::<Vec<_>>(),
        VIEWS
    );
    // One object per ground-truth object seen in two views or more, with every view
    // that sees it.
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, obj_id) in fixture.truth.keys() {
        *seen.entry(*obj_id).or_default() += 1;
    }
    let expected: Vec<(u32, usize)> = seen.into_iter().filter(|(_, n)| *n >= 2).collect();
    let mut found: Vec<(u32, usize)> = group
        .objects
        .iter()
        .map(|o| (o.obj_id, o.candidates.len()))
        .collect();
    found.sort_unstable();
    assert_eq!(found, expected);
    for object in &group.objects {
        assert!((object.score - 0.9 * object.candidates.len() as f64).abs() < 1e-12);
    }
    assert!(group.final_cost_px2 < 1e-6, "{}", group.final_cost_px2);
    // Reprojected into every camera, each object lands on its ground truth.
    for estimate in group.reprojected() {
        let truth = fixture.truth_in(estimate.view_id, estimate.obj_id);
        let error = corner_error_m(
            &fixture,
            estimate.obj_id,
            &estimate.camera_from_object,
            &truth,
        );
        assert!(error < 1e-4, "{estimate:?}: {error} m");
    }
}

/// Rotates a pose about a random axis by `degrees`, shifts it by `shift_m` in a random
/// direction, and moves it along the camera ray by up to `depth_fraction` of its depth:
/// single-view estimates err most in depth.
fn perturb(
    pose: &Pose,
    rng: &mut ChaCha8Rng,
    degrees: f64,
    shift_m: f64,
    depth_fraction: f64,
) -> Pose {
    let mut direction = || {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        Unit::new_normalize(v)
    };
    let axis = direction();
    let shift = direction().into_inner() * shift_m;
    Pose {
        rotation: Rotation3::from_axis_angle(&axis, degrees.to_radians()).matrix() * pose.rotation,
        translation_m: (pose.translation_m + shift)
            * (1.0 + rng.random_range(-depth_fraction..depth_fraction)),
    }
}

#[test]
fn noisy_candidates_are_pulled_together() {
    let mut fixture = fixture(&VIEWS);
    fixture.perturb_candidates(7, 1.0, 0.002, 0.015);
    // A false positive with a high score, and a low-scoring one that is not matched.
    let mut stray = fixture.candidates[0].clone();
    stray.camera_from_object.translation_m += Vector3::new(0.15, 0.0, 0.0);
    fixture.candidates.push(stray);
    let mut weak = fixture.candidates[1].clone();
    weak.score = 0.1;
    fixture.candidates.push(weak);
    let input_error: Vec<f64> = fixture.candidates[..fixture.candidates.len() - 2]
        .iter()
        .map(|c| {
            let truth = fixture.truth[&(c.view_id, c.obj_id)];
            corner_error_m(&fixture, c.obj_id, &c.camera_from_object, &truth)
        })
        .collect();
    let scene = fixture.reconstruct(&MultiviewOptions::default());
    assert_eq!(scene.groups.len(), 1);
    let group = &scene.groups[0];
    let n = fixture.candidates.len();
    for object in &group.objects {
        assert!(
            !object.candidates.contains(&(n - 2)) && !object.candidates.contains(&(n - 1)),
            "the stray and the weak candidate stay out of the objects"
        );
    }
    assert!(group.final_cost_px2 < group.initial_cost_px2);
    let output_error: Vec<f64> = group
        .reprojected()
        .iter()
        .map(|e| {
            let truth = fixture.truth_in(e.view_id, e.obj_id);
            corner_error_m(&fixture, e.obj_id, &e.camera_from_object, &truth)
        })
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&output_error) < 0.7 * mean(&input_error),
        "in {:.4} m, out {:.4} m",
        mean(&input_error),
        mean(&output_error)
    );
    // The cameras agree with the truth up to the world frame.
    for (rotation, translation_m) in camera_gaps(&fixture, group) {
        assert!(
            rotation < 0.02 && translation_m < 0.02,
            "{rotation} {translation_m}"
        );
    }
}

/// How far each camera of `group` is from the truth, relative to the group's first
/// camera (the world frames differ): rotation (largest entry of `R_a^T R_b - I`) and
/// translation in metres.
fn camera_gaps(fixture: &Fixture, group: &ViewGroup) -> Vec<(f64, f64)> {
    let first = &group.cameras[0];
    let truth_first = fixture.world_from_camera(first.view_id);
    group
        .cameras
        .iter()
        .map(|camera| {
            let estimated = first
                .world_from_camera
                .inverse()
                .compose(&camera.world_from_camera);
            let expected = truth_first
                .inverse()
                .compose(&fixture.world_from_camera(camera.view_id));
            pose_gap(&estimated, &expected)
        })
        .collect()
}

#[test]
fn known_cameras_stay_where_they_are() {
    let mut fixture = fixture(&VIEWS);
    fixture.perturb_candidates(11, 1.0, 0.003, 0.01);
    let options = MultiviewOptions {
        known_cameras: true,
        ..MultiviewOptions::default()
    };
    let scene = fixture.reconstruct(&options);
    let group = &scene.groups[0];
    // The world is the first camera of CosyPose's order, but relative poses are the
    // known ones exactly.
    for (rotation, translation_m) in camera_gaps(&fixture, group) {
        assert!(
            rotation < 1e-9 && translation_m < 1e-9,
            "{rotation} {translation_m}"
        );
    }
}

#[test]
fn a_single_view_has_no_multi_view_objects() {
    let fixture = fixture(&[0]);
    let scene = fixture.reconstruct(&MultiviewOptions::default());
    assert!(scene.pairs.is_empty());
    assert!(scene.groups.is_empty());
}

/// The error of reconstructing `fixture`'s scene with its candidates and views changed.
fn error_with(
    fixture: &Fixture,
    change: impl FnOnce(&mut Vec<Candidate>, &mut Vec<View>, &mut MultiviewOptions),
) -> String {
    let (mut candidates, mut views) = (fixture.candidates.clone(), fixture.views.clone());
    let mut options = MultiviewOptions::default();
    change(&mut candidates, &mut views, &mut options);
    reconstruct_scene(&candidates, &views, &fixture.geometry, &options)
        .expect_err("bad input is refused")
        .to_string()
}

#[test]
fn bad_candidates_are_named() {
    let fixture = fixture(&[0, 1]);
    let error = error_with(&fixture, |c, _, _| c[2].view_id = 99);
    assert!(
        error.contains("candidate 2 (view 99") && error.contains("no camera"),
        "{error}"
    );
    let error = error_with(&fixture, |c, _, _| c[0].obj_id = 77);
    assert!(
        error.contains("object 77") && error.contains("not among the models"),
        "{error}"
    );
    let error = error_with(&fixture, |c, _, _| {
        c[1].camera_from_object.translation_m.x = f64::NAN;
    });
    assert!(
        error.contains("candidate 1") && error.contains("not finite"),
        "{error}"
    );
    let error = error_with(&fixture, |_, v, o| {
        v[1].world_from_camera = None;
        o.known_cameras = true;
    });
    assert!(error.contains("camera pose is not known"), "{error}");
    let error = error_with(&fixture, |_, _, o| o.inlier_distance_m = -1.0);
    assert!(error.contains("inlier distance"), "{error}");
}

#[test]
fn nms_keeps_the_best_of_close_objects() {
    let object = |obj_id: u32, score: f64, x: f64| SceneObject {
        obj_id,
        score,
        world_from_object: Pose {
            rotation: nalgebra::Matrix3::identity(),
            translation_m: Vector3::new(x, 0.0, 0.0),
        },
        candidates: vec![],
    };
    let group = ViewGroup {
        cameras: vec![],
        objects: vec![
            object(1, 1.0, 0.0),
            object(2, 2.0, 0.03),
            object(3, 0.5, 0.2),
        ],
        initial_cost_px2: 0.0,
        final_cost_px2: 0.0,
        ba_iterations: 0,
    };
    let kept: Vec<u32> = group
        .objects_after_nms(0.04)
        .iter()
        .map(|o| o.obj_id)
        .collect();
    assert_eq!(kept, [2, 3]);
}

#[test]
fn cameras_keep_the_order_the_views_were_given_in() {
    // CosyPose's evaluation hands its cameras over in the view group's permuted order,
    // which the adjustment's initial order and world camera follow.
    let fixture = fixture(&[3, 1, 0]);
    let scene = fixture.reconstruct(&MultiviewOptions::default());
    let order: Vec<u32> = scene.groups[0].cameras.iter().map(|c| c.view_id).collect();
    assert_eq!(order, [3, 1, 0]);
    let mut twice = fixture.views.clone();
    twice.push(twice[0].clone());
    let error = reconstruct_scene(
        &fixture.candidates,
        &twice,
        &fixture.geometry,
        &MultiviewOptions::default(),
    )
    .expect_err("a view given twice")
    .to_string();
    assert!(error.contains("given twice"), "{error}");
}

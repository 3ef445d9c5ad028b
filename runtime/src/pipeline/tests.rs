//! The single-view loop on the bundled ycbv-mini scene: what the network sees, what its
//! answer does to the pose, batching, and degenerate answers.

use std::path::PathBuf;

use posed_engines::{Backend, CpuBackend, ModelOptions, Network, Session};
use posed_kernels::cosypose::crop::{crop_box, k_crop, project_robust, roi_align_rgb8};
use posed_kernels::cosypose::{CROP_HEIGHT, CROP_WIDTH};
use posed_kernels::Pose;

use super::*;
use crate::bop::dataset::{BopDataset, ImageFile};
use crate::bop::images::{read_rgb, RgbImage};

const PLANE: usize = CROP_HEIGHT * CROP_WIDTH;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Scene {
    dataset: BopDataset,
    rgb: RgbImage,
    intrinsics: posed_kernels::Intrinsics,
    /// Ground truth of scene 1, image 0.
    objects: Vec<ObjectEstimate>,
}

fn scene() -> Scene {
    let dataset = BopDataset::load(&root().join("data/ycbv-mini"), "test").expect("dataset");
    let image = dataset.image(1, 0).expect("image 0 of scene 1");
    let objects = image
        .gt
        .iter()
        .map(|gt| ObjectEstimate::from_pose(gt.obj_id, 1.0, gt.camera_from_object))
        .collect();
    let intrinsics = image.camera.intrinsics;
    let path = dataset.image_file(1, 0, ImageFile::Rgb).expect("rgb path");
    let rgb = read_rgb(&path).expect("rgb");
    Scene {
        dataset,
        rgb,
        intrinsics,
        objects,
    }
}

impl Scene {
    fn view(&self) -> ImageView<'_> {
        ImageView {
            rgb: self.rgb.pixels.as_flattened(),
            width: self.rgb.width as usize,
            height: self.rgb.height as usize,
            intrinsics: self.intrinsics,
            mapped: None,
        }
    }

    fn pipeline(
        &self,
        refiner: Box<dyn Session>,
        iterations: usize,
        batch: usize,
    ) -> SingleViewPipeline {
        let options = PipelineOptions {
            coarse_iterations: 0,
            refiner_iterations: iterations,
            batch_size: batch,
            render_threads: 2,
            ..PipelineOptions::default()
        };
        let networks = PoseNetworks {
            coarse: None,
            refiner: Some(refiner),
        };
        SingleViewPipeline::new(&self.dataset.models, networks, options).expect("pipeline")
    }
}

/// Channels 0-2 are RoIAlign of the camera image over the crop box of the current pose;
/// channels 3-5 are the rendering at `K_crop`, in [0, 1], with the object origin at the
/// crop centre (spec A.2: the crop is centred on the projected origin).
#[test]
fn the_network_sees_the_crop_and_the_rendering() {
    let scene = scene();
    let (network, inputs) = RecordingPoseNetwork::new(ConstantPoseNetwork::identity(4), usize::MAX);
    let mut pipeline = scene.pipeline(Box::new(network), 1, 4);
    let mut objects = scene.objects.clone();
    pipeline
        .run(&scene.view(), &mut objects, &mut |_, _| {})
        .expect("run");
    let inputs = inputs.lock().expect("lock");
    assert_eq!(inputs.len(), objects.len());
    let view = scene.view();
    for (object, input) in objects.iter().zip(inputs.iter()) {
        let points = pipeline.points().get(object.obj_id).expect("points");
        let pose = &object.camera_from_object;
        let crop = crop_box(&view.intrinsics, pose, points, view.width, view.height).expect("crop");
        let mut expected = vec![0.0f32; 3 * PLANE];
        roi_align_rgb8(view.rgb, view.width, view.height, &crop, &mut expected).expect("roi");
        assert_eq!(&input[..3 * PLANE], &expected[..], "obj {}", object.obj_id);

        let rendered = &input[3 * PLANE..];
        assert!(rendered.iter().all(|v| (0.0..=1.0).contains(v)));
        let k = k_crop(&view.intrinsics, &crop).expect("k_crop");
        let [u, v] = project_robust(&k, pose, &nalgebra::Vector3::zeros());
        assert!(
            (u - (CROP_WIDTH as f64 - 1.0) / 2.0).abs() < 1e-6,
            "u = {u}"
        );
        assert!(
            (v - (CROP_HEIGHT as f64 - 1.0) / 2.0).abs() < 1e-6,
            "v = {v}"
        );
        let covered = (0..PLANE)
            .filter(|&p| rendered[p] + rendered[PLANE + p] + rendered[2 * PLANE + p] > 0.0)
            .count();
        // The object fills a good part of its crop (lambda = 1.4 leaves a margin).
        assert!(
            covered > PLANE / 10 && covered < PLANE,
            "obj {}: {covered} rendered pixels",
            object.obj_id
        );
    }
}

/// One update with `(I6, vx = 3, vy = -2, vz = 0.9)`: the rotation stays, the depth is
/// scaled by 0.9, and the origin's projection under the crop's intrinsics moves by
/// (3, -2) crop pixels (spec A.3's interpretation).
#[test]
fn a_network_answer_moves_the_origin_in_crop_pixels() {
    let scene = scene();
    let update = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 3.0, -2.0, 0.9];
    let mut pipeline = scene.pipeline(Box::new(ConstantPoseNetwork::new(8, update)), 1, 8);
    let before = scene.objects.clone();
    let mut after = scene.objects.clone();
    pipeline
        .run(&scene.view(), &mut after, &mut |_, _| {})
        .expect("run");
    let view = scene.view();
    for (old, new) in before.iter().zip(&after) {
        assert!(new.valid);
        let points = pipeline.points().get(old.obj_id).expect("points");
        let pose = &old.camera_from_object;
        let crop = crop_box(&view.intrinsics, pose, points, view.width, view.height).expect("crop");
        let k = k_crop(&view.intrinsics, &crop).expect("k_crop");
        let origin = nalgebra::Vector3::zeros();
        let [u0, v0] = project_robust(&k, pose, &origin);
        let [u1, v1] = project_robust(&k, &new.camera_from_object, &origin);
        assert!((u1 - u0 - 3.0).abs() < 1e-9, "du = {}", u1 - u0);
        assert!((v1 - v0 + 2.0).abs() < 1e-9, "dv = {}", v1 - v0);
        let ratio = new.camera_from_object.translation_m.z / pose.translation_m.z;
        assert!((ratio - 0.9).abs() < 1e-6, "depth ratio {ratio}");
        assert_eq!(new.camera_from_object.rotation, pose.rotation);
    }
}

/// The batch size changes nothing: a real network (the tiny random-weight refiner on the
/// CPU backend) gives the same poses in batches of 1, 2 and 5.
#[test]
fn batching_does_not_change_the_poses() {
    let scene = scene();
    let network =
        Network::open(&root().join("data/networks/refiner-tiny.onnx")).expect("refiner-tiny");
    let model = CpuBackend::new()
        .load(network, ModelOptions::default())
        .expect("load");
    let mut results = Vec::new();
    for batch in [1, 2, 5] {
        let mut pipeline = scene.pipeline(model.new_session().expect("session"), 2, batch);
        assert_eq!(pipeline.batch_size(), batch);
        let mut objects = scene.objects.clone();
        let mut seen = Vec::new();
        pipeline
            .run(&scene.view(), &mut objects, &mut |iteration, current| {
                seen.push((iteration, current.len()));
            })
            .expect("run");
        let refiner = |number| Iteration {
            stage: Stage::Refiner,
            number,
        };
        assert_eq!(
            seen,
            [(refiner(1), objects.len()), (refiner(2), objects.len())]
        );
        results.push(objects);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    assert_ne!(
        results[0], scene.objects,
        "the random weights move the poses"
    );
}

/// A degenerate answer (a1 = 0) invalidates the object instead of failing the frame; it
/// keeps its last pose and sits out later iterations.
#[test]
fn degenerate_answers_invalidate_objects() {
    let scene = scene();
    let mut pipeline = scene.pipeline(Box::new(ConstantPoseNetwork::new(8, [0.0; 9])), 2, 8);
    let mut objects = scene.objects.clone();
    pipeline
        .run(&scene.view(), &mut objects, &mut |_, _| {})
        .expect("run");
    assert!(objects.iter().all(|o| !o.valid));
    for (object, given) in objects.iter().zip(&scene.objects) {
        assert_eq!(object.camera_from_object, given.camera_from_object);
    }
    assert_eq!(pipeline.take_timings().invalid_objects, objects.len());
}

/// A pose so far off the image that its crop box overflows f32 (RoIAlign's type)
/// invalidates that object only, as on the CUDA path.
#[test]
fn a_crop_beyond_f32_invalidates_the_object_not_the_frame() {
    let scene = scene();
    let mut pipeline = scene.pipeline(Box::new(ConstantPoseNetwork::identity(8)), 1, 8);
    let mut objects = scene.objects.clone();
    objects[0].camera_from_object.translation_m.x = 1e300;
    pipeline
        .run(&scene.view(), &mut objects, &mut |_, _| {})
        .expect("the frame runs");
    assert!(!objects[0].valid);
    assert!(objects[1..].iter().all(|o| o.valid));
    assert_eq!(pipeline.take_timings().invalid_objects, 1);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let scene = scene();
    let mut pipeline = scene.pipeline(Box::new(ConstantPoseNetwork::identity(4)), 1, 4);
    let mut objects = vec![ObjectEstimate::from_pose(99, 1.0, Pose::identity())];
    let err = pipeline
        .run(&scene.view(), &mut objects, &mut |_, _| {})
        .expect_err("unknown object");
    assert!(err.to_string().contains("object 99"), "{err}");

    let mut short = scene.view();
    short.rgb = &short.rgb[1..];
    let err = pipeline
        .run(&short, &mut scene.objects.clone(), &mut |_, _| {})
        .expect_err("short image");
    assert!(err.to_string().contains("RGB image bytes"), "{err}");

    let networks = PoseNetworks {
        coarse: None,
        refiner: None,
    };
    let err = SingleViewPipeline::new(&scene.dataset.models, networks, PipelineOptions::default())
        .expect_err("no networks");
    assert!(err.to_string().contains("no coarse network"), "{err}");
}

/// Initial poses from boxes: z = 1 m centred on the box, or z-up at the depth where the
/// model fills the box; boxes from given poses enclose the projected points.
#[test]
fn initial_poses_and_boxes() {
    let scene = scene();
    let mut pipeline = scene.pipeline(Box::new(ConstantPoseNetwork::identity(4)), 1, 4);
    let mut objects = scene.objects.clone();
    pipeline
        .boxes_from_poses(&scene.intrinsics, &mut objects)
        .expect("boxes");
    let truth = objects.clone();
    for scheme in [InitScheme::Z1, InitScheme::ZupAutodepth] {
        pipeline
            .init_from_boxes(&scene.intrinsics, scheme, &mut objects)
            .expect("init");
        for (object, truth) in objects.iter().zip(&truth) {
            let b = object.bbox_xyxy;
            let [u, v] = scene
                .intrinsics
                .project(&object.camera_from_object.translation_m);
            assert!((u - (b[0] + b[2]) / 2.0).abs() < 1e-9);
            assert!((v - (b[1] + b[3]) / 2.0).abs() < 1e-9);
            let z = object.camera_from_object.translation_m.z;
            match scheme {
                InitScheme::Z1 => assert_eq!(z, 1.0),
                // Auto-depth lands near the true depth (the box is the model's own
                // projection; the rotation differs, so only roughly).
                InitScheme::ZupAutodepth => {
                    let true_z = truth.camera_from_object.translation_m.z;
                    assert!((z / true_z - 1.0).abs() < 0.5, "z {z} vs {true_z}");
                }
            }
        }
    }
    assert!(pipeline.take_timings().init > std::time::Duration::ZERO);
}

#[test]
fn labels_name_bop_objects() {
    assert_eq!(obj_id_of_label("obj_000001"), Some(1));
    assert_eq!(obj_id_of_label("ycbv-obj_000021"), Some(21));
    assert_eq!(obj_id_of_label("obj_"), None);
    assert_eq!(obj_id_of_label("mug"), None);
    assert_eq!(obj_id_of_label("obj_12a"), None);
    assert_eq!(object_label(7), "obj_000007");
}

//! A warm frame of the single-view loop allocates nothing: initial poses, crops, renders,
//! the refiner network (`data/networks/refiner-tiny.onnx` on the CPU backend's planned
//! executor) and the pose updates, for 5 objects and 2 refiner iterations on the bundled
//! ycbv-mini image, counted with a global allocator over every thread (the renderer's
//! workers included).

use std::path::PathBuf;

use nalgebra::Vector3;
use posed::bop::dataset::{BopDataset, ImageFile};
use posed::bop::images::read_rgb;
use posed::pipeline::{
    ImageView, InitScheme, ObjectEstimate, PipelineOptions, PoseNetworks, SingleViewPipeline,
};
use posed_engines::{Backend, CpuBackend, ModelOptions, Network};
use posed_kernels::alloc_count::{self, allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

// A binary of its own without libtest (Cargo.toml: `harness = false`), see
// `run_test_without_harness`.
fn main() {
    alloc_count::run_test_without_harness(
        "a_warm_frame_allocates_nothing",
        a_warm_frame_allocates_nothing,
    );
}

fn a_warm_frame_allocates_nothing() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini");
    let dataset = BopDataset::load(&root, "test").expect("ycbv-mini");
    let image = dataset.image(1, 0).expect("scene 1 image 0");
    let rgb = read_rgb(&dataset.image_file(1, 0, ImageFile::Rgb).expect("path")).expect("rgb");
    let view = ImageView {
        rgb: rgb.pixels.as_flattened(),
        width: rgb.width as usize,
        height: rgb.height as usize,
        intrinsics: image.camera.intrinsics,
        mapped: None,
    };
    // The image's 4 annotated objects and a second instance of the first, 5 in all.
    let mut given: Vec<ObjectEstimate> = image
        .gt
        .iter()
        .map(|gt| ObjectEstimate::from_pose(gt.obj_id, 1.0, gt.camera_from_object))
        .collect();
    let mut twin = given[0];
    twin.camera_from_object.translation_m += Vector3::new(0.05, 0.0, 0.0);
    given.push(twin);
    assert_eq!(given.len(), 5);

    let options = PipelineOptions {
        coarse_iterations: 0,
        refiner_iterations: 2,
        batch_size: 5,
        render_threads: 2,
        ..PipelineOptions::default()
    };
    let refiner = Network::open(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks/refiner-tiny.onnx"),
    )
    .expect("refiner-tiny");
    let model_options = ModelOptions {
        max_batch: 5,
        ..ModelOptions::default()
    };
    let refiner = CpuBackend::new()
        .load(refiner, model_options)
        .expect("load")
        .new_session()
        .expect("session");
    let networks = PoseNetworks {
        coarse: None,
        refiner: Some(refiner),
    };
    let mut pipeline = SingleViewPipeline::new(&dataset.models, networks, options).expect("new");
    pipeline
        .boxes_from_poses(&view.intrinsics, &mut given)
        .expect("boxes");
    let mut objects = Vec::with_capacity(16);
    let mut iterations_seen = 0;
    let mut frame = |pipeline: &mut SingleViewPipeline, objects: &mut Vec<ObjectEstimate>| {
        objects.clear();
        objects.extend_from_slice(&given);
        pipeline
            .init_from_boxes(&view.intrinsics, InitScheme::ZupAutodepth, objects)
            .expect("init");
        pipeline
            .run(&view, objects, &mut |_, _| iterations_seen += 1)
            .expect("frame");
        pipeline.take_timings()
    };
    for _ in 0..2 {
        frame(&mut pipeline, &mut objects);
    }
    let before = allocations();
    let frames = 5;
    for _ in 0..frames {
        let timings = frame(&mut pipeline, &mut objects);
        assert_eq!(timings.invalid_objects, 0);
    }
    let counted = allocations() - before;
    assert_eq!(
        counted, 0,
        "{counted} allocations over {frames} warm frames"
    );
    // The counter does count: one allocation here is seen.
    let probe = std::hint::black_box(vec![0u8; 64]);
    assert!(allocations() > before + counted, "{}", probe.len());
    assert_eq!(iterations_seen, 2 * (frames + 2));
    assert!(objects.iter().all(|o| o.valid));
}

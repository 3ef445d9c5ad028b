//! The single-view loop without its network: initial poses (z-up + auto-depth), crops,
//! renders and pose updates for 5 objects and 2 refiner iterations on the bundled
//! ycbv-mini image (640 x 480), on the CPU, with a constant pose network standing in for
//! the real one. Prints the per-stage split and the heap allocations of a warm frame
//! (counted over every thread; `runtime/tests/pipeline_alloc.rs` asserts they are zero).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::Vector3;
use posed::bop::dataset::{BopDataset, ImageFile};
use posed::bop::images::read_rgb;
use posed::pipeline::{
    ConstantPoseNetwork, ImageView, InitScheme, ObjectEstimate, PipelineOptions, PoseNetworks,
    SingleViewPipeline, StageTimings,
};
use posed_kernels::alloc_count::{allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn frame_without_network(c: &mut Criterion) {
    let dataset = BopDataset::load(&posed_benches::ycbv_mini(), "test").expect("ycbv-mini");
    let image = dataset.image(1, 0).expect("scene 1 image 0");
    let rgb = read_rgb(&dataset.image_file(1, 0, ImageFile::Rgb).expect("path")).expect("rgb");
    let view = ImageView {
        rgb: rgb.pixels.as_flattened(),
        width: rgb.width as usize,
        height: rgb.height as usize,
        intrinsics: image.camera.intrinsics,
        mapped: None,
    };
    let mut given: Vec<ObjectEstimate> = image
        .gt
        .iter()
        .map(|gt| ObjectEstimate::from_pose(gt.obj_id, 1.0, gt.camera_from_object))
        .collect();
    let mut twin = given[0];
    twin.camera_from_object.translation_m += Vector3::new(0.05, 0.0, 0.0);
    given.push(twin);

    for threads in [1, 2, 4] {
        let options = PipelineOptions {
            coarse_iterations: 0,
            refiner_iterations: 2,
            batch_size: 5,
            render_threads: threads,
            ..PipelineOptions::default()
        };
        let networks = PoseNetworks {
            coarse: None,
            refiner: Some(Box::new(ConstantPoseNetwork::identity(5))),
        };
        let mut pipeline =
            SingleViewPipeline::new(&dataset.models, networks, options).expect("pipeline");
        pipeline
            .boxes_from_poses(&view.intrinsics, &mut given)
            .expect("boxes");
        let mut objects = Vec::with_capacity(16);
        let mut frame = |pipeline: &mut SingleViewPipeline| {
            objects.clear();
            objects.extend_from_slice(&given);
            pipeline
                .init_from_boxes(&view.intrinsics, InitScheme::ZupAutodepth, &mut objects)
                .expect("init");
            pipeline
                .run(&view, &mut objects, &mut |_, _| {})
                .expect("frame");
        };
        frame(&mut pipeline);
        pipeline.take_timings();

        let frames = 20;
        let before = allocations();
        for _ in 0..frames {
            frame(&mut pipeline);
        }
        let allocations = allocations() - before;
        let stages: StageTimings = pipeline.take_timings();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / frames as f64;
        println!(
            "pipeline/5_objects_2_refiner_iterations/{threads}_threads: per frame init {:.3} ms, \
             crops {:.3} ms, renders {:.3} ms, updates {:.3} ms; {} heap allocations per warm frame",
            ms(stages.init),
            ms(stages.crop),
            ms(stages.render),
            ms(stages.update),
            allocations as f64 / frames as f64
        );

        c.bench_function(
            &format!("pipeline/5_objects_2_refiner_iterations/without_network/{threads}_threads"),
            |b| b.iter(|| frame(&mut pipeline)),
        );
    }
}

criterion_group!(benches, frame_without_network);
criterion_main!(benches);

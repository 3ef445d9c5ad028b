//! CPU renderer: the refiner-sized batch (five ycbv-mini objects, one per 240 x 320 crop)
//! and a whole 640 x 480 ycbv-mini scene, with RGB + depth + mask, on 2 threads.

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use posed::bop::dataset::BopDataset;
use posed::render::ObjectRenderer;
use posed_kernels::render::{CpuRenderer, RenderItem, Shading};

fn crops(c: &mut Criterion) {
    let batch = posed_benches::refiner_crop_batch().expect("ycbv-mini models");
    let instances = batch.instances();
    let items: Vec<RenderItem<'_>> = instances
        .iter()
        .zip(&batch.cameras)
        .map(|(instances, &camera)| RenderItem { camera, instances })
        .collect();
    let mut targets = batch.targets();
    let mut renderer = CpuRenderer::new(batch.meshes, 2);
    for (name, shading) in [("lambert", Shading::default()), ("albedo", Shading::Albedo)] {
        c.bench_function(&format!("render/5_crops_240x320/{name}"), |b| {
            b.iter(|| {
                renderer
                    .render(&items, &mut targets, &shading)
                    .expect("render")
            })
        });
    }
}

fn scene(c: &mut Criterion) {
    let dataset = BopDataset::load(&posed_benches::ycbv_mini(), "test").expect("ycbv-mini");
    let mut renderer = ObjectRenderer::new(&dataset.models, 2).expect("meshes");
    let image = &dataset.scenes[&1].images[&0];
    let objects: Vec<_> = image
        .gt
        .iter()
        .map(|gt| (gt.obj_id, gt.camera_from_object))
        .collect();
    let (width, height) = (
        dataset.camera.width as usize,
        dataset.camera.height as usize,
    );
    let k = image.camera.intrinsics;
    c.bench_function("render/scene_640x480", |b| {
        b.iter(|| {
            renderer
                .render_scene(&k, width, height, &objects, &Shading::default())
                .expect("render")
                .mask()
                .len()
        })
    });
}

criterion_group!(benches, crops, scene);
criterion_main!(benches);

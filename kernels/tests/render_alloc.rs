//! A warmed-up CPU renderer allocates nothing per frame: proved with a counting global
//! allocator over a refiner-sized batch (5 objects, 240 x 320 crops, 2 threads).

use nalgebra::{Rotation3, Vector3};
use posed_kernels::alloc_count::{self, allocations, CountingAllocator};
use posed_kernels::render::{
    Camera, CpuRenderer, Instance, Mesh, RenderItem, RenderTarget, Shading,
};
use posed_kernels::{Intrinsics, Pose};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

// A binary of its own without libtest (Cargo.toml: `harness = false`), see
// `run_test_without_harness`.
fn main() {
    alloc_count::run_test_without_harness(
        "a_warmed_up_frame_allocates_nothing",
        a_warmed_up_frame_allocates_nothing,
    );
}

fn a_warmed_up_frame_allocates_nothing() {
    let meshes: Vec<Mesh> = (0..5)
        .map(|i| Mesh::uv_sphere(0.05 + 0.01 * i as f32, 40, 80).expect("sphere"))
        .collect();
    let mut renderer = CpuRenderer::new(meshes, 2);
    let camera = Camera {
        intrinsics: Intrinsics::from_row_major(&[
            300.0, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0,
        ]),
        width: 320,
        height: 240,
    };
    let mut targets = vec![RenderTarget::new(320, 240); 5];
    let poses: Vec<[Instance; 1]> = (0..5)
        .map(|i| {
            [Instance {
                mesh: i,
                camera_from_object: Pose {
                    rotation: *Rotation3::from_euler_angles(0.1 * i as f64, 0.2, 0.3).matrix(),
                    translation_m: Vector3::new(0.01 * i as f64, 0.0, 0.5),
                },
            }]
        })
        .collect();
    let items: Vec<RenderItem<'_>> = poses
        .iter()
        .map(|instances| RenderItem { camera, instances })
        .collect();
    let shading = Shading::default();
    for _ in 0..3 {
        renderer
            .render(&items, &mut targets, &shading)
            .expect("render");
    }
    let before = allocations();
    for _ in 0..50 {
        renderer
            .render(&items, &mut targets, &shading)
            .expect("render");
    }
    let allocations = allocations() - before;
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 50 warmed-up frames"
    );
    assert!(targets.iter().all(|t| t.mask().contains(&1)));
}

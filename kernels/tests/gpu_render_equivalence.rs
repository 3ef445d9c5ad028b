//! The CUDA renderer (`GpuRenderer`, `kernels/cuda/render.cu`) against its CPU twin
//! (`CpuRenderer`), on the five ycbv-mini models (positions, normals and baked vertex
//! colours from the PLY files) in seeded random poses: several images per batch, several
//! objects per image (occluding each other, crossing the image border, cut by the near
//! and far planes, and exact copies at the same pose, whose ties the lower instance must
//! win), both shadings, a ycbv-sized camera and a CosyPose-sized crop camera. The targets
//! hold a stale render (every pixel covered) before the GPU draws, so a pixel the GPU
//! forgets to write shows. Bad input must give the CPU's errors and draw nothing.
//!
//! Where no GPU or driver is present the GPU comparisons print
//! `SKIPPED: no CUDA device (<reason>)` and pass; the model reader and the scenes are
//! still checked against the CPU renderer.

#![cfg(feature = "cuda")]

mod common;

use common::{model_path, open_or_skip, read_ply};
use nalgebra::{Rotation3, Vector3};
use posed_kernels::cuda::{GpuRenderLimits, GpuRenderer};
use posed_kernels::render::{
    Camera, CpuRenderer, Instance, Mesh, RenderItem, RenderTarget, Shading, EMPTY_KEY,
    MAX_INSTANCES_PER_IMAGE,
};
use posed_kernels::{Intrinsics, KernelError, Pose};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The largest fraction of pixels (over the whole batch) allowed to differ in any of key,
/// depth, mask or colour. Zero differences are expected: every step is exact integer
/// arithmetic or an IEEE-rounded f32 operation in the CPU's order (`--fmad=false`, explicit
/// `__fdiv_rn` / `__fsqrt_rn` / `__ll2float_rn`), and the visibility is a minimum over the
/// same keys whatever order threads run in. Two steps rest on CUDA's implementation
/// rather than on IEEE: `roundf` in the vertex snapping (documented exact, half away from
/// zero, as Rust's `f32::round`) and the float-to-byte conversion; a difference there
/// would move a triangle edge by 1/256 px and hand a pixel on it to its neighbour, or
/// change a colour by one level. A real bug (FMA contraction, another operation order, a
/// lost key update, a pixel not written) shows in far more pixels than this.
const MAX_DIFFERING_PIXEL_FRACTION: f64 = 1e-4;

const SEED: u64 = 0x0bad_5eed_7e4d;
const MODELS: usize = 5;

/// The five models, then a backdrop: a 10 m square, 5 m away it covers any image here.
fn meshes() -> Vec<Mesh> {
    let mut meshes: Vec<Mesh> = (0..MODELS)
        .map(|index| {
            let ply = read_ply(&model_path(index));
            Mesh::new(
                ply.positions_m,
                ply.triangles,
                Some(ply.normals),
                Some(&ply.colors),
            )
            .expect("model mesh")
        })
        .collect();
    let half = 5.0;
    meshes.push(
        Mesh::new(
            vec![
                [-half, -half, 0.0],
                [half, -half, 0.0],
                [half, half, 0.0],
                [-half, half, 0.0],
            ],
            vec![[0, 1, 2], [0, 2, 3]],
            None,
            Some(&[[171, 171, 171]; 4]),
        )
        .expect("backdrop"),
    );
    meshes
}

const BACKDROP: usize = MODELS;

/// YCB-Video's camera (ycbv-mini's scene_camera.json), 640 x 480.
fn ycbv_camera() -> Camera {
    Camera {
        intrinsics: Intrinsics::from_row_major(&[
            1066.778, 0.0, 312.9869, 0.0, 1067.487, 241.3109, 0.0, 0.0, 1.0,
        ]),
        width: 640,
        height: 480,
    }
}

/// A CosyPose-style crop camera, 320 x 240, with a little skew.
fn crop_camera() -> Camera {
    Camera {
        intrinsics: Intrinsics::from_row_major(&[
            612.25, 0.75, 151.125, 0.0, 611.5, 127.875, 0.0, 0.0, 1.0,
        ]),
        width: 320,
        height: 240,
    }
}

fn random_rotation(rng: &mut ChaCha8Rng) -> Rotation3<f64> {
    let axis = loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm: f64 = v.norm();
        if norm > 0.1 && norm <= 1.0 {
            break v / norm;
        }
    };
    Rotation3::new(axis * rng.random_range(0.0..std::f64::consts::PI))
}

/// An object somewhere in view of `camera` at a depth in `z_m`.
fn random_instance(rng: &mut ChaCha8Rng, camera: &Camera, z_m: (f64, f64)) -> Instance {
    let k = &camera.intrinsics.k;
    let z = rng.random_range(z_m.0..z_m.1);
    let u = rng.random_range(-0.1..1.1) * camera.width as f64;
    let v = rng.random_range(-0.1..1.1) * camera.height as f64;
    let y = (v - k[(1, 2)]) / k[(1, 1)] * z;
    let x = (u - k[(0, 2)] - k[(0, 1)] * y / z) / k[(0, 0)] * z;
    Instance {
        mesh: rng.random_range(0..MODELS),
        camera_from_object: Pose {
            rotation: *random_rotation(rng).matrix(),
            translation_m: Vector3::new(x, y, z),
        },
    }
}

/// The batch: per item a camera and its objects.
fn scenes() -> Vec<(Camera, Vec<Instance>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut scenes = Vec::new();
    // Cluttered ycbv images: 6 objects each, overlapping.
    for _ in 0..3 {
        let camera = ycbv_camera();
        let instances = (0..6)
            .map(|_| random_instance(&mut rng, &camera, (0.5, 1.3)))
            .collect();
        scenes.push((camera, instances));
    }
    // Refiner crops: one object filling the crop, plus a neighbour.
    for _ in 0..3 {
        let camera = crop_camera();
        let mut main = random_instance(&mut rng, &camera, (0.6, 0.9));
        main.camera_from_object.translation_m.x *= 0.1;
        main.camera_from_object.translation_m.y *= 0.1;
        let neighbour = random_instance(&mut rng, &camera, (0.5, 1.0));
        scenes.push((camera, vec![main, neighbour]));
    }
    // Exact copies at one pose (ties: the lower instance wins), and the same model at
    // another pose.
    let camera = ycbv_camera();
    let copy = random_instance(&mut rng, &camera, (0.7, 0.8));
    let other = random_instance(&mut rng, &camera, (0.7, 0.8));
    scenes.push((camera, vec![copy, copy, other, copy]));
    // Cut by the near plane (1 cm) and by the far plane (10 m).
    let near = Instance {
        mesh: 1,
        camera_from_object: Pose {
            rotation: *random_rotation(&mut rng).matrix(),
            translation_m: Vector3::new(0.0, 0.0, 0.08),
        },
    };
    let far = Instance {
        mesh: 2,
        camera_from_object: Pose {
            rotation: *random_rotation(&mut rng).matrix(),
            translation_m: Vector3::new(0.05, -0.02, 9.97),
        },
    };
    scenes.push((crop_camera(), vec![far, near]));
    // Nothing to draw.
    scenes.push((crop_camera(), Vec::new()));
    scenes
}

fn items(scenes: &[(Camera, Vec<Instance>)]) -> Vec<RenderItem<'_>> {
    scenes
        .iter()
        .map(|(camera, instances)| RenderItem {
            camera: *camera,
            instances,
        })
        .collect()
}

/// Targets holding a stale render: the backdrop over every pixel, mask 1, keys set.
fn stale_targets(cpu: &mut CpuRenderer, items: &[RenderItem<'_>]) -> Vec<RenderTarget> {
    let backdrop = [Instance {
        mesh: BACKDROP,
        camera_from_object: Pose {
            rotation: *Rotation3::from_euler_angles(0.1, -0.2, 0.3).matrix(),
            translation_m: Vector3::new(0.0, 0.0, 5.0),
        },
    }];
    let stale_items: Vec<RenderItem<'_>> = items
        .iter()
        .map(|item| RenderItem {
            camera: item.camera,
            instances: &backdrop,
        })
        .collect();
    let mut targets: Vec<RenderTarget> = items
        .iter()
        .map(|item| RenderTarget::new(item.camera.width, item.camera.height))
        .collect();
    cpu.render(&stale_items, &mut targets, &Shading::default())
        .expect("stale render");
    for target in &targets {
        assert!(
            target.mask().iter().all(|&m| m == 1),
            "the backdrop covers all"
        );
        assert!(target.keys().iter().all(|&k| k != EMPTY_KEY));
    }
    targets
}

fn fresh_targets(items: &[RenderItem<'_>]) -> Vec<RenderTarget> {
    items
        .iter()
        .map(|item| RenderTarget::new(item.camera.width, item.camera.height))
        .collect()
}

/// Compares GPU targets with CPU targets pixel by pixel; asserts the named tolerance and
/// returns the number of differing pixels.
fn compare(label: &str, cpu: &[RenderTarget], gpu: &[RenderTarget]) -> usize {
    let mut pixels = 0;
    let mut differing = 0;
    let mut shown = 0;
    for (item, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        let width = c.width();
        for i in 0..c.keys().len() {
            pixels += 1;
            let same = c.keys()[i] == g.keys()[i]
                && c.depth_m()[i].to_bits() == g.depth_m()[i].to_bits()
                && c.mask()[i] == g.mask()[i]
                && c.rgb()[i] == g.rgb()[i];
            if !same {
                differing += 1;
                if shown < 10 {
                    shown += 1;
                    eprintln!(
                        "{label}: item {item} pixel ({}, {}): CPU key {:#018x} depth {} mask {} \
                         rgb {:?}; GPU key {:#018x} depth {} mask {} rgb {:?}",
                        i % width,
                        i / width,
                        c.keys()[i],
                        c.depth_m()[i],
                        c.mask()[i],
                        c.rgb()[i],
                        g.keys()[i],
                        g.depth_m()[i],
                        g.mask()[i],
                        g.rgb()[i]
                    );
                }
            }
        }
    }
    let fraction = differing as f64 / pixels.max(1) as f64;
    eprintln!(
        "{label}: {pixels} pixels, {} bit-identical, {differing} differ ({fraction:e}; \
         allowed {MAX_DIFFERING_PIXEL_FRACTION:e})",
        pixels - differing
    );
    assert!(
        fraction <= MAX_DIFFERING_PIXEL_FRACTION,
        "{label}: {differing} of {pixels} pixels differ"
    );
    differing
}

#[test]
fn the_models_load_and_the_scenes_cover_what_they_should() {
    // Runs everywhere: the reader, the scenes and the stale targets are what the GPU
    // comparison relies on.
    let meshes = meshes();
    for (index, expected) in [3785, 3902, 3902, 3901, 3888].iter().enumerate() {
        assert_eq!(
            meshes[index].positions_m().len(),
            *expected,
            "model {index}"
        );
        assert_eq!(meshes[index].triangles().len(), 7800, "model {index}");
    }
    let scenes = scenes();
    let items = items(&scenes);
    let mut cpu = CpuRenderer::new(meshes, 2);
    let mut targets = stale_targets(&mut cpu, &items);
    cpu.render(&items, &mut targets, &Shading::default())
        .expect("CPU render");
    let covered: Vec<usize> = targets
        .iter()
        .map(|t| t.mask().iter().filter(|&&m| m != 0).count())
        .collect();
    eprintln!("covered pixels per item: {covered:?}");
    // Every item but the empty one shows something; the empty one was cleared.
    assert!(covered[..covered.len() - 1].iter().all(|&c| c > 200));
    assert_eq!(covered[covered.len() - 1], 0);
    // Occlusion: some cluttered image shows at least 4 different objects.
    assert!(targets[..3].iter().any(|t| {
        let mut seen = [false; 7];
        t.mask().iter().for_each(|&m| seen[usize::from(m)] = true);
        seen[1..].iter().filter(|&&s| s).count() >= 4
    }));
    // The copies: instance 1 (mask 1) wins every tie, so copies 2 and 4 never show.
    let copies = &targets[6];
    assert!(copies.mask().contains(&1));
    assert!(!copies.mask().contains(&2) && !copies.mask().contains(&4));
    // Near and far planes: both objects of item 7 straddle their plane.
    for (instance, plane_m) in scenes[7].1.iter().zip([10.0, 0.01]) {
        let z: Vec<f64> = cpu.meshes()[instance.mesh]
            .positions_m()
            .iter()
            .map(|p| {
                instance
                    .camera_from_object
                    .transform_point(&p.map(f64::from))
                    .z
            })
            .collect();
        assert!(z.iter().any(|&z| z < plane_m) && z.iter().any(|&z| z > plane_m));
    }
    assert!(targets[7]
        .depth_m()
        .iter()
        .all(|&d| d == 0.0 || (0.01..=10.0).contains(&d)));
}

#[test]
fn gpu_render_matches_the_cpu_twin() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let meshes = meshes();
    let scenes = scenes();
    let items = items(&scenes);
    let limits = GpuRenderLimits::for_batch(&meshes, items.len(), 640, 480, 6);
    let mut gpu = GpuRenderer::new(&device, &meshes, limits).expect("GPU renderer");
    let image = gpu.compiled_image();
    eprintln!(
        "render.cu: {} ({:?}), NVRTC {}.{}",
        image.target, image.cache, image.nvrtc_version.0, image.nvrtc_version.1
    );
    assert_eq!(image.log, "", "NVRTC warnings");
    let mut cpu = CpuRenderer::new(meshes, 2);

    for shading in [Shading::Albedo, Shading::default()] {
        let mut expected = fresh_targets(&items);
        cpu.render(&items, &mut expected, &shading)
            .expect("CPU render");
        // Over a stale render, twice (the second time over its own output).
        let mut targets = stale_targets(&mut cpu, &items);
        gpu.render(&items, &mut targets, &shading)
            .expect("GPU render");
        let label = format!("{shading:?}");
        compare(&label, &expected, &targets);
        gpu.render(&items, &mut targets, &shading)
            .expect("GPU render again");
        compare(&format!("{label}, again"), &expected, &targets);
    }
}

#[test]
fn gpu_render_in_small_chunks_matches_the_cpu_twin() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let meshes = meshes();
    let scenes = scenes();
    let items = items(&scenes);
    // Two crops' worth of pixels, seven instances: the batch goes in several chunks, the
    // 640 x 480 images one at a time.
    let limits = GpuRenderLimits {
        max_items: 3,
        max_pixels: 640 * 480 + 320 * 240,
        max_instances: 7,
        max_vertices: 7 * 4000,
    };
    let mut gpu = GpuRenderer::new(&device, &meshes, limits).expect("GPU renderer");
    let mut cpu = CpuRenderer::new(meshes, 2);
    let shading = Shading::default();
    let mut expected = fresh_targets(&items);
    cpu.render(&items, &mut expected, &shading)
        .expect("CPU render");
    let mut targets = stale_targets(&mut cpu, &items);
    gpu.render(&items, &mut targets, &shading)
        .expect("GPU render");
    compare("small chunks", &expected, &targets);
}

#[test]
fn gpu_render_refuses_what_the_cpu_twin_refuses() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let meshes = meshes();
    let mesh_count = meshes.len();
    let limits = GpuRenderLimits::for_batch(&meshes, 2, 640, 480, 6);
    let mut gpu = GpuRenderer::new(&device, &meshes, limits).expect("GPU renderer");
    let mut cpu = CpuRenderer::new(meshes, 1);
    let scenes = scenes();
    let good = scenes[0].1[0];
    let camera = ycbv_camera();

    let nan_pose = {
        let mut pose = good;
        pose.camera_from_object.translation_m.y = f64::NAN;
        pose
    };
    let bad_mesh = Instance {
        mesh: mesh_count,
        ..good
    };
    let crowd = vec![good; MAX_INSTANCES_PER_IMAGE + 1];
    let mut nan_camera = camera;
    nan_camera.intrinsics.k[(0, 2)] = f64::INFINITY;
    // (what is wrong, the items, the target sizes)
    type Case<'a> = (&'static str, Vec<RenderItem<'a>>, Vec<(usize, usize)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "target count",
            vec![RenderItem {
                camera,
                instances: std::slice::from_ref(&good),
            }],
            vec![],
        ),
        (
            "target size",
            vec![RenderItem {
                camera,
                instances: std::slice::from_ref(&good),
            }],
            vec![(640, 479)],
        ),
        (
            "mesh index",
            vec![RenderItem {
                camera,
                instances: std::slice::from_ref(&bad_mesh),
            }],
            vec![(640, 480)],
        ),
        (
            "NaN pose, after a good item",
            vec![
                RenderItem {
                    camera,
                    instances: std::slice::from_ref(&good),
                },
                RenderItem {
                    camera,
                    instances: std::slice::from_ref(&nan_pose),
                },
            ],
            vec![(640, 480), (640, 480)],
        ),
        (
            "infinite intrinsics",
            vec![RenderItem {
                camera: nan_camera,
                instances: std::slice::from_ref(&good),
            }],
            vec![(640, 480)],
        ),
        (
            "too many instances",
            vec![RenderItem {
                camera,
                instances: &crowd,
            }],
            vec![(640, 480)],
        ),
    ];
    for (label, items, sizes) in &cases {
        let make = || -> Vec<RenderTarget> {
            sizes
                .iter()
                .map(|&(w, h)| RenderTarget::new(w, h))
                .collect()
        };
        let (mut cpu_targets, mut gpu_targets) = (make(), make());
        let cpu_error = cpu
            .render(items, &mut cpu_targets, &Shading::default())
            .expect_err(label);
        let gpu_error = gpu
            .render(items, &mut gpu_targets, &Shading::default())
            .expect_err(label);
        eprintln!("{label}: {gpu_error}");
        assert_eq!(gpu_error, cpu_error, "{label}");
        // Nothing drawn.
        assert_eq!(gpu_targets, make(), "{label}");
    }

    // Beyond the GPU limits: an item with more pixels than a chunk holds.
    let small = GpuRenderLimits {
        max_pixels: 320 * 240,
        ..limits
    };
    let mut gpu_small = GpuRenderer::new(&device, cpu.meshes(), small).expect("GPU renderer");
    let items = [RenderItem {
        camera,
        instances: std::slice::from_ref(&good),
    }];
    let mut targets = vec![RenderTarget::new(640, 480)];
    match gpu_small.render(&items, &mut targets, &Shading::default()) {
        Err(KernelError::LimitExceeded { limit, found, .. }) => {
            assert_eq!((limit, found), (320 * 240, 640 * 480));
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert!(targets[0].mask().iter().all(|&m| m == 0));
    // Bad limits are refused at creation.
    assert!(matches!(
        GpuRenderer::new(
            &device,
            cpu.meshes(),
            GpuRenderLimits {
                max_items: 0,
                ..limits
            }
        ),
        Err(KernelError::InvalidValue { .. })
    ));
    // An empty batch is fine.
    gpu.render(&[], &mut [], &Shading::default())
        .expect("empty batch");
}

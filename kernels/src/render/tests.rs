use nalgebra::{Matrix3, Rotation3, Vector3};

use super::*;

const WIDTH: usize = 64;
const HEIGHT: usize = 48;

fn camera(width: usize, height: usize) -> Camera {
    Camera {
        intrinsics: Intrinsics::from_row_major(&[
            100.0,
            0.0,
            (width / 2) as f64,
            0.0,
            100.0,
            (height / 2) as f64,
            0.0,
            0.0,
            1.0,
        ]),
        width,
        height,
    }
}

fn at(translation_m: [f64; 3]) -> Pose {
    Pose {
        rotation: Matrix3::identity(),
        translation_m: Vector3::from(translation_m),
    }
}

/// A square in the object's z = 0 plane, `half_m` from the centre, two triangles.
fn square(half_m: f32, color: [u8; 3]) -> Mesh {
    Mesh::new(
        vec![
            [-half_m, -half_m, 0.0],
            [half_m, -half_m, 0.0],
            [half_m, half_m, 0.0],
            [-half_m, half_m, 0.0],
        ],
        vec![[0, 1, 2], [0, 2, 3]],
        None,
        Some(&[color; 4]),
    )
    .unwrap()
}

fn sphere(radius_m: f32, rings: u32, segments: u32) -> Mesh {
    Mesh::uv_sphere(radius_m, rings, segments).unwrap()
}

fn render_one(
    renderer: &mut CpuRenderer,
    camera: Camera,
    instances: &[Instance],
    shading: &Shading,
) -> RenderTarget {
    let mut targets = vec![RenderTarget::new(camera.width, camera.height)];
    renderer
        .render(&[RenderItem { camera, instances }], &mut targets, shading)
        .unwrap();
    targets.pop().unwrap()
}

#[test]
fn a_fronto_parallel_square_covers_the_pixel_centres_inside_it() {
    // Half-size 0.05 m at 1 m with f = 100: corners at +-5 px around (32, 24), so the
    // square spans columns 27..37 and rows 19..29; top-left rule: 27..=36, 19..=28.
    let mut renderer = CpuRenderer::new(vec![square(0.05, [10, 20, 30])], 2);
    let instances = [Instance {
        mesh: 0,
        camera_from_object: at([0.0, 0.0, 1.0]),
    }];
    let target = render_one(
        &mut renderer,
        camera(WIDTH, HEIGHT),
        &instances,
        &Shading::Albedo,
    );
    for v in 0..HEIGHT {
        for u in 0..WIDTH {
            let i = v * WIDTH + u;
            let inside = (27..=36).contains(&u) && (19..=28).contains(&v);
            assert_eq!(target.mask()[i], u8::from(inside), "pixel ({u}, {v})");
            if inside {
                assert_eq!(target.rgb()[i], [10, 20, 30]);
                assert!((target.depth_m()[i] - 1.0).abs() < 1e-6);
            } else {
                assert_eq!(target.rgb()[i], [0, 0, 0]);
                assert_eq!(target.depth_m()[i], 0.0);
            }
        }
    }
}

#[test]
fn depth_on_a_tilted_plane_is_perspective_correct() {
    // The square tilted 60 degrees about y: the plane through (0, 0, 1) with normal n.
    let rotation = Rotation3::from_axis_angle(&Vector3::y_axis(), 60_f64.to_radians());
    let pose = Pose {
        rotation: *rotation.matrix(),
        translation_m: Vector3::new(0.0, 0.0, 1.0),
    };
    let normal = rotation * Vector3::z();
    let cam = camera(WIDTH, HEIGHT);
    let mut renderer = CpuRenderer::new(vec![square(0.2, [255; 3])], 1);
    let instances = [Instance {
        mesh: 0,
        camera_from_object: pose,
    }];
    let target = render_one(&mut renderer, cam, &instances, &Shading::Albedo);
    let mut checked = 0;
    for v in 0..HEIGHT {
        for u in 0..WIDTH {
            let depth = target.depth_m()[v * WIDTH + u];
            if depth == 0.0 {
                continue;
            }
            // Ray (x, y, 1) meets n . X = n . t at z = n . t / n . ray.
            let ray = Vector3::new((u as f64 - 32.0) / 100.0, (v as f64 - 24.0) / 100.0, 1.0);
            let expected = normal.dot(&pose.translation_m) / normal.dot(&ray);
            // Vertices snap to 1/256 px, which on this steep plane (about 14 mm of depth
            // per pixel) moves the surface by up to ~0.03 mm.
            assert!(
                (f64::from(depth) - expected).abs() < 5e-5,
                "({u}, {v}): {depth} vs {expected}"
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn nearer_objects_occlude_farther_ones_whatever_their_order() {
    let meshes = vec![square(0.1, [255, 0, 0]), square(0.05, [0, 0, 255])];
    let mut renderer = CpuRenderer::new(meshes, 2);
    let far_red = Instance {
        mesh: 0,
        camera_from_object: at([0.0, 0.0, 1.0]),
    };
    let near_blue = Instance {
        mesh: 1,
        camera_from_object: at([0.0, 0.0, 0.8]),
    };
    let cam = camera(WIDTH, HEIGHT);
    let first = render_one(&mut renderer, cam, &[far_red, near_blue], &Shading::Albedo);
    let second = render_one(&mut renderer, cam, &[near_blue, far_red], &Shading::Albedo);
    let centre = 24 * WIDTH + 32;
    assert_eq!(first.rgb()[centre], [0, 0, 255]);
    assert_eq!(first.mask()[centre], 2);
    assert_eq!(second.mask()[centre], 1);
    assert!((first.depth_m()[centre] - 0.8).abs() < 1e-6);
    assert_eq!(first.rgb(), second.rgb());
    assert_eq!(first.depth_m(), second.depth_m());
    // Red shows around the blue square.
    assert_eq!(first.rgb()[24 * WIDTH + 24], [255, 0, 0]);
}

#[test]
fn a_sphere_silhouette_matches_its_analytic_disc() {
    // A sphere of radius r at distance d on the optical axis projects to a disc of radius
    // f r / sqrt(d^2 - r^2). The tessellation (64 x 128) is inside the true sphere by
    // at most r (1 - cos(pi / 128)), about 0.03 %: compare areas at 1 %.
    let (radius, distance, focal) = (0.1_f64, 0.5_f64, 100.0_f64);
    let mut renderer = CpuRenderer::new(vec![sphere(radius as f32, 64, 128)], 2);
    let instances = [Instance {
        mesh: 0,
        camera_from_object: at([0.0, 0.0, distance]),
    }];
    let target = render_one(
        &mut renderer,
        camera(WIDTH, HEIGHT),
        &instances,
        &Shading::Albedo,
    );
    let disc_radius = focal * radius / (distance * distance - radius * radius).sqrt();
    let expected_area = std::f64::consts::PI * disc_radius * disc_radius;
    let area = target.mask().iter().filter(|&&m| m == 1).count() as f64;
    assert!(
        (area - expected_area).abs() < 0.01 * expected_area,
        "{area} vs {expected_area}"
    );
    // The nearest point is the sphere's front, at d - r.
    let centre_depth = target.depth_m()[24 * WIDTH + 32];
    assert!((f64::from(centre_depth) - (distance - radius)).abs() < 1e-4);
}

#[test]
fn the_result_does_not_depend_on_the_thread_count() {
    let pose = Pose {
        rotation: *Rotation3::from_euler_angles(0.3, -0.5, 1.1).matrix(),
        translation_m: Vector3::new(0.02, -0.01, 0.45),
    };
    let instances = [
        Instance {
            mesh: 0,
            camera_from_object: pose,
        },
        Instance {
            mesh: 1,
            camera_from_object: at([0.03, 0.0, 0.3]),
        },
    ];
    let cam = camera(96, 72);
    let mut outputs = Vec::new();
    for threads in [1, 2, 5] {
        let mut renderer =
            CpuRenderer::new(vec![sphere(0.08, 24, 48), square(0.03, [9; 3])], threads);
        outputs.push(render_one(
            &mut renderer,
            cam,
            &instances,
            &Shading::default(),
        ));
    }
    assert!(outputs.windows(2).all(|pair| pair[0] == pair[1]));
    assert!(outputs[0].mask().contains(&2));
}

#[test]
fn many_items_are_rendered_in_chunks() {
    let mut renderer = CpuRenderer::new(vec![square(0.05, [1, 2, 3])], 2);
    let instances: Vec<[Instance; 1]> = (0..300)
        .map(|i| {
            [Instance {
                mesh: 0,
                camera_from_object: at([0.0, 0.0, 1.0 + i as f64 * 0.01]),
            }]
        })
        .collect();
    let cam = camera(16, 12);
    let items: Vec<RenderItem<'_>> = instances
        .iter()
        .map(|instances| RenderItem {
            camera: cam,
            instances,
        })
        .collect();
    let mut targets = vec![RenderTarget::new(16, 12); items.len()];
    renderer
        .render(&items, &mut targets, &Shading::Albedo)
        .unwrap();
    for (i, target) in targets.iter().enumerate() {
        let depth = target.depth_m()[6 * 16 + 8];
        assert!(
            (f64::from(depth) - (1.0 + i as f64 * 0.01)).abs() < 1e-6,
            "item {i}"
        );
    }
}

#[test]
fn objects_behind_the_camera_or_beyond_the_far_plane_are_not_drawn() {
    let mut renderer = CpuRenderer::new(vec![square(0.05, [255; 3])], 1);
    let cam = camera(WIDTH, HEIGHT);
    for z in [-1.0, 0.005, 10.5] {
        let instances = [Instance {
            mesh: 0,
            camera_from_object: at([0.0, 0.0, z]),
        }];
        let target = render_one(&mut renderer, cam, &instances, &Shading::Albedo);
        assert!(target.mask().iter().all(|&m| m == 0), "z = {z}");
    }
}

#[test]
fn bad_requests_are_errors_and_draw_nothing() {
    let mut renderer = CpuRenderer::new(vec![square(0.05, [255; 3])], 1);
    let cam = camera(WIDTH, HEIGHT);
    let good = [Instance {
        mesh: 0,
        camera_from_object: at([0.0, 0.0, 1.0]),
    }];
    let item = RenderItem {
        camera: cam,
        instances: &good,
    };
    let mut wrong_size = vec![RenderTarget::new(WIDTH, HEIGHT - 1)];
    assert!(matches!(
        renderer.render(&[item], &mut wrong_size, &Shading::Albedo),
        Err(KernelError::SizeMismatch { .. })
    ));
    assert!(matches!(
        renderer.render(&[item], &mut [], &Shading::Albedo),
        Err(KernelError::SizeMismatch { .. })
    ));
    let bad_mesh = [Instance { mesh: 3, ..good[0] }];
    let mut target = vec![RenderTarget::new(WIDTH, HEIGHT)];
    let bad_item = RenderItem {
        camera: cam,
        instances: &bad_mesh,
    };
    assert!(matches!(
        renderer.render(&[bad_item], &mut target, &Shading::Albedo),
        Err(KernelError::InvalidMesh { .. })
    ));
    let nan_pose = [Instance {
        mesh: 0,
        camera_from_object: at([0.0, f64::NAN, 1.0]),
    }];
    let nan_item = RenderItem {
        camera: cam,
        instances: &nan_pose,
    };
    assert!(matches!(
        renderer.render(&[nan_item], &mut target, &Shading::Albedo),
        Err(KernelError::NotFinite { .. })
    ));
    let crowd = vec![good[0]; MAX_INSTANCES_PER_IMAGE + 1];
    let crowd_item = RenderItem {
        camera: cam,
        instances: &crowd,
    };
    assert!(matches!(
        renderer.render(&[crowd_item], &mut target, &Shading::Albedo),
        Err(KernelError::LimitExceeded { .. })
    ));
    assert!(target[0].mask().iter().all(|&m| m == 0));
}

#[test]
fn back_face_culling_changes_nothing_on_a_closed_mesh() {
    let instances = [Instance {
        mesh: 0,
        camera_from_object: Pose {
            rotation: *Rotation3::from_euler_angles(0.7, 0.1, -0.4).matrix(),
            translation_m: Vector3::new(0.01, 0.02, 0.5),
        },
    }];
    let cam = camera(WIDTH, HEIGHT);
    let culled = sphere(0.1, 16, 24);
    assert!(culled.cull_back_faces());
    let both = culled.clone().draw_both_sides();
    let mut first = CpuRenderer::new(vec![culled], 1);
    let mut second = CpuRenderer::new(vec![both], 1);
    let a = render_one(&mut first, cam, &instances, &Shading::default());
    let b = render_one(&mut second, cam, &instances, &Shading::default());
    assert_eq!(a.rgb(), b.rgb());
    assert_eq!(a.depth_m(), b.depth_m());
    assert_eq!(a.mask(), b.mask());
    assert!(a.mask().contains(&1));
}

#[test]
fn a_renderer_without_meshes_draws_background() {
    let mut renderer = CpuRenderer::new(Vec::new(), 2);
    let target = render_one(&mut renderer, camera(8, 6), &[], &Shading::default());
    assert!(target.mask().iter().all(|&m| m == 0));
    assert!(target.depth_m().iter().all(|&d| d == 0.0));
}

/// 2 x 2 texels: red, green on the top row; blue, grey on the bottom row.
fn quad_texture() -> Texture {
    Texture::new(
        2,
        2,
        vec![[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 100, 100]],
    )
    .unwrap()
}

/// `(u, v)` of [`square`]'s corners with the identity pose: the object's -y is the top of
/// the image, where `v = 1`.
const SQUARE_UVS: [[f32; 2]; 4] = [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]];

fn textured_square(half_m: f32, texture: Texture) -> Mesh {
    square(half_m, [1, 2, 3])
        .with_texture(texture, TextureCoords::PerVertex(SQUARE_UVS.to_vec()))
        .unwrap()
}

#[test]
fn bilinear_samples_hit_texel_centres_and_average_between_them() {
    let texture = quad_texture();
    // Texel centres: (u, v) = ((x + 0.5) / 2, 1 - (y + 0.5) / 2).
    assert_eq!(sample_bilinear(&texture, [0.25, 0.75]), [255.0, 0.0, 0.0]);
    assert_eq!(sample_bilinear(&texture, [0.75, 0.75]), [0.0, 255.0, 0.0]);
    assert_eq!(sample_bilinear(&texture, [0.25, 0.25]), [0.0, 0.0, 255.0]);
    assert_eq!(sample_bilinear(&texture, [0.75, 0.25]), [100.0; 3]);
    // The midpoint: the mean of the four.
    assert_eq!(sample_bilinear(&texture, [0.5, 0.5]), [88.75; 3]);
    // Halfway along the top row.
    assert_eq!(sample_bilinear(&texture, [0.5, 0.75]), [127.5, 127.5, 0.0]);
}

#[test]
fn bilinear_samples_clamp_to_the_edge() {
    let texture = quad_texture();
    // The corners of [0, 1]^2 and far outside it: the corner texels.
    assert_eq!(sample_bilinear(&texture, [0.0, 1.0]), [255.0, 0.0, 0.0]);
    assert_eq!(sample_bilinear(&texture, [-3.0, 7.0]), [255.0, 0.0, 0.0]);
    assert_eq!(sample_bilinear(&texture, [1.0, 0.0]), [100.0; 3]);
    assert_eq!(sample_bilinear(&texture, [40.0, -2.5]), [100.0; 3]);
    // Beyond the right edge, halfway down: the right column's mean.
    assert_eq!(sample_bilinear(&texture, [1.5, 0.5]), [50.0, 177.5, 50.0]);
    // NaN clamps to texel 0 and its weight is NaN: black after shading.
    let nan = sample_bilinear(&texture, [f32::NAN, 0.5]);
    assert!(nan.iter().all(|v| v.is_nan()));
    assert_eq!(
        shade_albedo(
            &Shading::Albedo,
            nan,
            [1.0, 0.0, 0.0],
            [[0.0; 3]; 3],
            [0.0; 3]
        ),
        [0, 0, 0]
    );
    // A 1 x 1 texture is a constant.
    let one = Texture::new(1, 1, vec![[9, 8, 7]]).unwrap();
    assert_eq!(sample_bilinear(&one, [0.3, 0.9]), [9.0, 8.0, 7.0]);
}

#[test]
fn a_textured_square_shows_its_texture_the_right_way_up() {
    // Half-size 0.1 m at 1 m, f = 100: columns 22..42 and rows 14..34 of the image.
    let mut renderer = CpuRenderer::new(vec![textured_square(0.1, quad_texture())], 1);
    let instances = [Instance {
        mesh: 0,
        camera_from_object: at([0.0, 0.0, 1.0]),
    }];
    let target = render_one(
        &mut renderer,
        camera(WIDTH, HEIGHT),
        &instances,
        &Shading::Albedo,
    );
    let rgb = |u: usize, v: usize| target.rgb()[v * WIDTH + u];
    // Quarters of the square away from the centre lines: one texel each (clamped or a
    // texel-centre region), top left red, top right green, bottom left blue.
    assert_eq!(rgb(24, 16), [255, 0, 0]);
    assert_eq!(rgb(40, 16), [0, 255, 0]);
    assert_eq!(rgb(24, 32), [0, 0, 255]);
    assert_eq!(rgb(40, 32), [100, 100, 100]);
    // The centre: the mean of the four texels, 88.75 (rounded, up to the interpolation).
    for channel in rgb(32, 24) {
        assert!((88..=90).contains(&channel), "{:?}", rgb(32, 24));
    }
    // Along the top row of texels, halfway across: red and green mixed.
    let top_middle = rgb(32, 16);
    assert!(top_middle[0].abs_diff(128) <= 2 && top_middle[1].abs_diff(128) <= 2);
    assert_eq!(top_middle[2], 0);
    // The vertex colours are not used, the background stays black.
    assert_eq!(rgb(0, 0), [0, 0, 0]);
    // Lambert scales the texture colour as it scales vertex colours (head light: 0.95).
    let lit = render_one(
        &mut renderer,
        camera(WIDTH, HEIGHT),
        &instances,
        &Shading::default(),
    );
    assert_eq!(lit.rgb()[16 * WIDTH + 24], [242, 0, 0]);
}

#[test]
fn per_vertex_and_per_corner_coordinates_render_the_same() {
    let per_vertex = textured_square(0.1, quad_texture());
    let corners: Vec<[[f32; 2]; 3]> = [[0_usize, 1, 2], [0, 2, 3]]
        .iter()
        .map(|t| t.map(|i| SQUARE_UVS[i]))
        .collect();
    let per_corner = square(0.1, [1, 2, 3])
        .with_texture(quad_texture(), TextureCoords::PerCorner(corners))
        .unwrap();
    assert_eq!(per_vertex.corner_uvs(), per_corner.corner_uvs());
    let mut renderer = CpuRenderer::new(vec![per_vertex, per_corner], 2);
    let pose = Pose {
        rotation: *Rotation3::from_euler_angles(0.3, -0.4, 0.2).matrix(),
        translation_m: Vector3::new(0.01, -0.02, 0.8),
    };
    let images: Vec<RenderTarget> = (0..2)
        .map(|mesh| {
            let instances = [Instance {
                mesh,
                camera_from_object: pose,
            }];
            render_one(
                &mut renderer,
                camera(WIDTH, HEIGHT),
                &instances,
                &Shading::default(),
            )
        })
        .collect();
    assert_eq!(images[0].rgb(), images[1].rgb());
    assert!(images[0].mask().iter().filter(|&&m| m != 0).count() > 300);
}

#[test]
fn per_corner_coordinates_follow_triangles_that_new_turned_around() {
    // A tetrahedron wound inwards: `Mesh::new` swaps corners 1 and 2 of every triangle.
    let positions = vec![
        [0.0, 0.0, 0.0],
        [0.1, 0.0, 0.0],
        [0.0, 0.1, 0.0],
        [0.0, 0.0, 0.1],
    ];
    let inwards = vec![[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]];
    let uvs = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]];
    let corners: Vec<[[f32; 2]; 3]> = inwards
        .iter()
        .map(|t: &[u32; 3]| t.map(|i| uvs[i as usize]))
        .collect();
    let mesh = Mesh::new(positions, inwards.clone(), None, None).unwrap();
    assert_ne!(mesh.triangles(), inwards.as_slice());
    let per_corner = mesh
        .clone()
        .with_texture(quad_texture(), TextureCoords::PerCorner(corners))
        .unwrap();
    let per_vertex = mesh
        .with_texture(quad_texture(), TextureCoords::PerVertex(uvs.to_vec()))
        .unwrap();
    assert_eq!(per_corner.corner_uvs(), per_vertex.corner_uvs());
}

#[test]
fn bad_textures_and_coordinates_are_errors() {
    assert!(matches!(
        Texture::new(0, 2, vec![]),
        Err(KernelError::InvalidValue { .. })
    ));
    assert!(matches!(
        Texture::new(2, 2, vec![[0; 3]; 3]),
        Err(KernelError::SizeMismatch {
            expected: 4,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        Texture::new(MAX_TEXTURE_SIDE + 1, 1, vec![[0; 3]; MAX_TEXTURE_SIDE + 1]),
        Err(KernelError::LimitExceeded { .. })
    ));
    let mesh = square(0.1, [1, 2, 3]);
    assert!(matches!(
        mesh.clone()
            .with_texture(quad_texture(), TextureCoords::PerVertex(vec![[0.0; 2]; 3])),
        Err(KernelError::SizeMismatch {
            expected: 4,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        mesh.clone().with_texture(
            quad_texture(),
            TextureCoords::PerCorner(vec![[[0.0; 2]; 3]])
        ),
        Err(KernelError::SizeMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let mut uvs = SQUARE_UVS.to_vec();
    uvs[2][1] = f32::INFINITY;
    assert!(matches!(
        mesh.with_texture(quad_texture(), TextureCoords::PerVertex(uvs)),
        Err(KernelError::NotFinite { .. })
    ));
}

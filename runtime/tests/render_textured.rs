//! Textured BOP models: a PLY naming a `TextureFile` with texture coordinates renders its
//! texture (face `texcoord` or vertex `texture_u, texture_v`), the right way up; a PLY
//! naming a texture that is not there is an error naming both files.

use std::path::PathBuf;

use posed::bop::models::ModelSet;
use posed::render::ObjectRenderer;
use posed_kernels::render::Shading;
use posed_kernels::{Intrinsics, Pose};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bop/testdata/textured")
}

const WIDTH: usize = 64;
const HEIGHT: usize = 48;

#[test]
fn textured_squares_render_their_texture() {
    let models = ModelSet::load(&fixtures()).expect("the fixtures load");
    let mut renderer = ObjectRenderer::new(&models, 2).expect("meshes with textures");
    let intrinsics =
        Intrinsics::from_row_major(&[100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0]);
    // The 100 mm square at 0.5 m, f = 100: columns 22..42 and rows 14..34.
    let pose = Pose::from_row_major(
        &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.5],
    );
    let mut images = Vec::new();
    for obj_id in [1, 2] {
        let target = renderer
            .render_scene(
                &intrinsics,
                WIDTH,
                HEIGHT,
                &[(obj_id, pose)],
                &Shading::Albedo,
            )
            .expect("renders");
        let rgb = |u: usize, v: usize| target.rgb()[v * WIDTH + u];
        // quad.png: red, green on the top row; blue, grey on the bottom row (v = 1 is
        // the top of the image).
        assert_eq!(rgb(24, 16), [255, 0, 0], "object {obj_id}");
        assert_eq!(rgb(40, 16), [0, 255, 0], "object {obj_id}");
        assert_eq!(rgb(24, 32), [0, 0, 255], "object {obj_id}");
        assert_eq!(rgb(40, 32), [100, 100, 100], "object {obj_id}");
        // The centre: the mean of the four texels (88.75), not the white material.
        for channel in rgb(32, 24) {
            assert!(
                (88..=90).contains(&channel),
                "object {obj_id}: {:?}",
                rgb(32, 24)
            );
        }
        assert_eq!(rgb(5, 5), [0, 0, 0]);
        assert_eq!(target.mask().iter().filter(|&&m| m == 1).count(), 400);
        images.push(target.rgb().to_vec());
    }
    // Face and vertex texture coordinates give the same picture.
    assert_eq!(images[0], images[1]);
}

#[test]
fn a_missing_texture_is_an_error_naming_the_ply_and_the_texture() {
    let dir = fixtures().join("missing");
    let models = ModelSet::load(&dir).expect("the PLY itself is fine");
    let error = ObjectRenderer::new(&models, 1)
        .expect_err("the texture file does not exist")
        .to_string();
    assert!(error.contains("obj_000001.ply"), "{error}");
    assert!(error.contains("absent.png"), "{error}");
    assert!(error.contains("texture"), "{error}");
}

//! `posed render` run as a binary on the bundled ycbv-mini dataset: the written mask
//! against the dataset's `mask_visib/`, the written depth against its depth PNG, results
//! files, and the errors for a bad scene, image or results file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::posed;
use posed::bop::dataset::{BopDataset, ImageFile};
use posed::bop::images::{read_mask, read_rgb};

/// Scene and image the checks run on.
const SCENE: u32 = 1;
const IMAGE: u32 = 0;
/// The written mask agrees with `mask_visib/` on this share of the pixels of each
/// visible instance (the union of both masks: the intersection over union).
const MIN_MASK_AGREEMENT: f64 = 0.99;
/// Median |written depth - dataset depth| over the rendered objects, in depth units
/// (0.1 mm in ycbv-mini).
const MAX_MEDIAN_DEPTH_DIFF_UNITS: u16 = 5;

fn dataset_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini")
}

fn results_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/results/ycbv-mini-synthetic.csv")
}

fn dataset() -> BopDataset {
    BopDataset::load(&dataset_dir(), "test").expect("ycbv-mini loads")
}

/// `posed render --dataset ycbv-mini --scene S --image I` plus `extra`.
fn render(scene: u32, image: u32, extra: &[&str]) -> Output {
    posed()
        .arg("render")
        .arg("--dataset")
        .arg(dataset_dir())
        .args(["--scene", &scene.to_string(), "--image", &image.to_string()])
        .args(extra)
        .output()
        .expect("posed runs")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_gray8(path: &Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path).expect("8-bit PNG");
    assert_eq!(image.color(), image::ColorType::L8, "{}", path.display());
    let gray = image.into_luma8();
    (gray.width(), gray.height(), gray.into_raw())
}

fn read_gray16(path: &Path) -> (u32, u32, Vec<u16>) {
    let image = image::open(path).expect("16-bit PNG");
    assert_eq!(image.color(), image::ColorType::L16, "{}", path.display());
    let gray = image.into_luma16();
    (gray.width(), gray.height(), gray.into_raw())
}

#[test]
fn ground_truth_mask_and_depth_match_the_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, depth_out, mask_out) = (
        dir.path().join("overlay.png"),
        dir.path().join("depth.png"),
        dir.path().join("mask.png"),
    );
    let output = render(
        SCENE,
        IMAGE,
        &[
            "--contours",
            "--out",
            path_arg(&out),
            "--depth-out",
            path_arg(&depth_out),
            "--mask-out",
            path_arg(&mask_out),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    let dataset = dataset();
    let annotations = dataset.image(SCENE, IMAGE).expect("image");
    let rgb_path = dataset
        .image_file(SCENE, IMAGE, ImageFile::Rgb)
        .expect("rgb path");
    let rgb = read_rgb(&rgb_path).expect("dataset image");
    let overlay = read_rgb(&out).expect("overlay");
    assert_eq!((overlay.width, overlay.height), (rgb.width, rgb.height));

    // The mask: 1 + gt_idx per visible instance, against mask_visib.
    let (width, height, mask) = read_gray8(&mask_out);
    assert_eq!((width, height), (rgb.width, rgb.height));
    assert!(mask.iter().all(|&m| usize::from(m) <= annotations.gt.len()));
    let mut checked = 0;
    for gt_idx in 0..annotations.gt.len() {
        let path = dataset
            .image_file(SCENE, IMAGE, ImageFile::MaskVisib { gt_idx })
            .expect("mask_visib path");
        let expected = read_mask(&path).expect("mask_visib");
        if expected.count() == 0 {
            continue;
        }
        let label = u8::try_from(gt_idx + 1).expect("few instances");
        let (mut agree, mut union) = (0_usize, 0_usize);
        for (&m, &inside) in mask.iter().zip(&expected.inside) {
            let ours = m == label;
            union += usize::from(ours || inside);
            agree += usize::from(ours && inside);
        }
        let share = agree as f64 / union as f64;
        eprintln!("gt {gt_idx}: {agree} of {union} pixels agree ({share:.4})");
        assert!(
            share >= MIN_MASK_AGREEMENT,
            "gt {gt_idx}: only {share:.4} of the pixels agree with {}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "{checked} visible instances checked");

    // Outside the objects the overlay is the washed-out image.
    for (i, (&o, &m)) in overlay.pixels.iter().zip(&mask).enumerate() {
        if m == 0 {
            let expected = rgb.pixels[i].map(|x| (f64::from(x) * 0.6 + 102.0).round() as u8);
            assert_eq!(o, expected, "pixel {i}");
        }
    }

    // The depth: dataset units, 0 exactly off the objects, close to the dataset's depth.
    let (width, height, depth) = read_gray16(&depth_out);
    assert_eq!((width, height), (rgb.width, rgb.height));
    let depth_path = dataset
        .image_file(SCENE, IMAGE, ImageFile::Depth)
        .expect("depth path");
    let (_, _, expected_depth) = read_gray16(&depth_path);
    let mut diffs = Vec::new();
    for ((&d, &e), &m) in depth.iter().zip(&expected_depth).zip(&mask) {
        if m == 0 {
            assert_eq!(d, 0);
        } else {
            assert!(d > 0);
            diffs.push(d.abs_diff(e));
        }
    }
    diffs.sort_unstable();
    let median = diffs[diffs.len() / 2];
    eprintln!(
        "depth: {} object pixels, median |diff| {median} units",
        diffs.len()
    );
    assert!(
        median <= MAX_MEDIAN_DEPTH_DIFF_UNITS,
        "median |depth diff| {median} units"
    );
}

#[test]
fn results_file_estimates_are_drawn_in_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, mask_out) = (dir.path().join("overlay.png"), dir.path().join("mask.png"));
    let results = results_csv();
    let output = render(
        SCENE,
        IMAGE,
        &[
            "--results",
            path_arg(&results),
            "--shading",
            "albedo",
            "--out",
            path_arg(&out),
            "--mask-out",
            path_arg(&mask_out),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let rows = posed::bop::results::read_results(&results).expect("results");
    let n = rows
        .iter()
        .filter(|row| row.estimate.scene_id == SCENE && row.estimate.im_id == IMAGE)
        .count();
    assert!(n > 0);
    let (_, _, mask) = read_gray8(&mask_out);
    let max = mask.iter().copied().max().expect("pixels");
    assert!(
        usize::from(max) <= n && max > 0,
        "mask values up to {max}, {n} estimates"
    );
    assert!(read_rgb(&out).is_ok());

    // --min-score keeps the high-scored estimates only.
    let best = rows
        .iter()
        .filter(|row| row.estimate.scene_id == SCENE && row.estimate.im_id == IMAGE)
        .map(|row| row.estimate.score)
        .fold(f64::NEG_INFINITY, f64::max);
    let output = render(
        SCENE,
        IMAGE,
        &[
            "--results",
            path_arg(&results),
            "--min-score",
            &best.to_string(),
            "--out",
            path_arg(&out),
            "--mask-out",
            path_arg(&mask_out),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let (_, _, mask) = read_gray8(&mask_out);
    assert!(mask.iter().all(|&m| m <= 1) && mask.contains(&1));
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("overlay.png");
    let out_arg = ["--out", path_arg(&out)];

    let output = render(7, IMAGE, &out_arg);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("no scene 7") && message.contains("the scenes are 1, 2"),
        "{message}"
    );

    let output = render(SCENE, 70, &out_arg);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("scene 1 has no image 70"), "{message}");

    // A results file without estimates for the image names the file and the image.
    let csv = dir.path().join("other-image.csv");
    std::fs::write(
        &csv,
        "scene_id,im_id,obj_id,score,R,t,time\n2,3,1,0.9,1 0 0 0 1 0 0 0 1,0 0 800,-1\n",
    )
    .expect("write csv");
    let output = render(
        SCENE,
        IMAGE,
        &["--results", path_arg(&csv), "--out", path_arg(&out)],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("other-image.csv") && message.contains("scene 1 image 0"),
        "{message}"
    );

    // An object the dataset has no model for names the CSV line.
    let csv = dir.path().join("unknown-object.csv");
    std::fs::write(
        &csv,
        "scene_id,im_id,obj_id,score,R,t,time\n1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 800,-1\n1,0,42,0.9,1 0 0 0 1 0 0 0 1,0 0 800,-1\n",
    )
    .expect("write csv");
    let output = render(
        SCENE,
        IMAGE,
        &["--results", path_arg(&csv), "--out", path_arg(&out)],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("unknown-object.csv:3") && message.contains("obj_id 42"),
        "{message}"
    );
    assert!(!out.exists(), "nothing is written on error");

    // An output that cannot be written is found before the others are written.
    let nowhere = dir.path().join("no/such/folder/mask.png");
    let output = render(
        SCENE,
        IMAGE,
        &["--out", path_arg(&out), "--mask-out", path_arg(&nowhere)],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("no/such/folder/mask.png"), "{message}");
    assert!(!out.exists(), "the overlay is not written either");
}

#[test]
fn unreadable_image_is_named() {
    // A copy of the dataset's scene 1 whose image 0 is not a PNG.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ds");
    let source = dataset_dir();
    let scene = root.join("test/000001");
    std::fs::create_dir_all(scene.join("rgb")).expect("mkdir");
    copy_dir(&source.join("models"), &root.join("models"));
    std::fs::copy(source.join("camera.json"), root.join("camera.json")).expect("copy");
    for name in ["scene_camera.json", "scene_gt.json", "scene_gt_info.json"] {
        std::fs::copy(source.join("test/000001").join(name), scene.join(name)).expect("copy");
    }
    std::fs::write(scene.join("rgb/000000.png"), b"not a png").expect("write");
    let out = dir.path().join("overlay.png");
    let output = posed()
        .arg("render")
        .arg("--dataset")
        .arg(&root)
        .args(["--scene", "1", "--image", "0", "--out", path_arg(&out)])
        .output()
        .expect("posed runs");
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("rgb/000000.png"), "{message}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

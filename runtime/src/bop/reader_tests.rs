//! Broken-input tests for the BOP readers: each fixture in `testdata/json` and
//! `testdata/csv` must give an error that names the file, the entry and what was
//! expected.

use std::path::PathBuf;

use super::models::read_models_info;
use super::results::{format_results, parse_results, read_results, write_results, Estimate};
use super::scene::{read_scene_camera, read_scene_gt, read_scene_gt_info};
use super::targets::read_targets;
use crate::Error;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/bop/testdata")
        .join(name)
}

/// Asserts that `result` failed and that its message names the file and contains every
/// fragment.
fn assert_error<T: std::fmt::Debug>(result: crate::Result<T>, name: &str, fragments: &[&str]) {
    let message = match result {
        Ok(value) => panic!("{name}: expected an error, got {value:?}"),
        Err(err) => err.to_string(),
    };
    assert!(
        message.contains(name),
        "{name}: the message does not name the file: {message}"
    );
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{name}: {message:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn models_info_errors() {
    let cases: [(&str, &[&str]); 8] = [
        (
            "models_info_negative_size.json",
            &["object 1", "box sizes of 0 or more", "size_y -20"],
        ),
        (
            "models_info_many_symmetries.json",
            &[
                "object 2",
                "4 continuous symmetries",
                "at most 256 discrete and 3 continuous",
            ],
        ),
        (
            "models_info_wrong_type.json",
            &["`1.diameter`", "expected f64"],
        ),
        (
            "models_info_bad_key.json",
            &["key to be a number", "line 1 column 2"],
        ),
        (
            "models_info_negative_diameter.json",
            &["object 1", "positive finite diameter"],
        ),
        (
            "models_info_bad_symmetry.json",
            &["object 5, symmetries_discrete[0]", "rotation matrix"],
        ),
        (
            "models_info_zero_axis.json",
            &["object 1, symmetries_continuous[0]", "non-zero"],
        ),
        ("models_info_truncated.json", &["EOF"]),
    ];
    for (name, fragments) in cases {
        assert_error(
            read_models_info(&fixture(&format!("json/{name}"))),
            name,
            fragments,
        );
    }
}

#[test]
fn scene_file_errors() {
    let name = "scene_gt_short_translation.json";
    assert_error(
        read_scene_gt(&fixture(&format!("json/{name}"))),
        name,
        &["`0[1].cam_t_m2c`", "length 2"],
    );
    let name = "scene_gt_not_rotation.json";
    assert_error(
        read_scene_gt(&fixture(&format!("json/{name}"))),
        name,
        &["image 4, instance 0 (obj_id 2), cam_R_m2c", "det R"],
    );
    let name = "scene_gt_behind_camera.json";
    assert_error(
        read_scene_gt(&fixture(&format!("json/{name}"))),
        name,
        &["image 0, instance 1 (obj_id 3), cam_t_m2c", "z = -800 mm"],
    );
    let name = "scene_gt_missing_obj_id.json";
    assert_error(
        read_scene_gt(&fixture(&format!("json/{name}"))),
        name,
        &["`0[0]`", "obj_id"],
    );
    let name = "scene_camera_bad_k.json";
    assert_error(
        read_scene_camera(&fixture(&format!("json/{name}"))),
        name,
        &["image 3, cam_K", "fx, fy > 0"],
    );
    let name = "scene_camera_half_pose.json";
    assert_error(
        read_scene_camera(&fixture(&format!("json/{name}"))),
        name,
        &["image 3", "both cam_R_w2c and cam_t_w2c"],
    );
    let name = "scene_camera_zero_depth_scale.json";
    assert_error(
        read_scene_camera(&fixture(&format!("json/{name}"))),
        name,
        &["image 3, depth_scale", "positive"],
    );
    let name = "scene_gt_info_visib_out_of_range.json";
    assert_error(
        read_scene_gt_info(&fixture(&format!("json/{name}"))),
        name,
        &["image 2, instance 0, visib_fract", "[0, 1]", "1.5"],
    );
    let name = "targets_wrong_type.json";
    assert_error(
        read_targets(&fixture(&format!("json/{name}"))),
        name,
        &["`[0].inst_count`", "u32"],
    );
    let missing = fixture("json/does_not_exist.json");
    match read_scene_gt(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn results_csv_errors_name_the_line() {
    let cases: [(&str, &str, &[&str]); 7] = [
        ("missing_column.csv", ":1:", &["no column \"t\""]),
        ("bad_integer.csv", ":3:", &["im_id", "\"x\""]),
        ("rotation_eight_values.csv", ":2:", &["R: expected 9"]),
        (
            "not_a_rotation.csv",
            ":2:",
            &["R: expected a rotation matrix"],
        ),
        ("nan_score.csv", ":2:", &["score", "finite"]),
        ("missing_field.csv", ":3:", &["malformed CSV row"]),
        (
            "translation_not_numbers.csv",
            ":2:",
            &["t: expected 3", "zero"],
        ),
    ];
    for (name, line, fragments) in cases {
        let mut all = vec![line];
        all.extend_from_slice(fragments);
        assert_error(read_results(&fixture(&format!("csv/{name}"))), name, &all);
    }
}

#[test]
fn results_round_trip_exactly() {
    let path = fixture("csv/bad_integer.csv");
    let text = "scene_id,im_id,obj_id,score,R,t,time\n\
                1,0,1,0.9,0.36 0.48 -0.8 -0.8 0.6 0 0.48 0.64 0.6,10.5 -3 812.25,0.25\n";
    let rows = parse_results(text.as_bytes(), &path).expect("valid");
    let estimates: Vec<Estimate> = rows.into_iter().map(|r| r.estimate).collect();
    let mut formatted = Vec::new();
    format_results(&mut formatted, &estimates).expect("formats");
    let again: Vec<Estimate> = parse_results(formatted.as_slice(), &path)
        .expect("re-reads")
        .into_iter()
        .map(|r| r.estimate)
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].camera_from_object.rotation,
        estimates[0].camera_from_object.rotation
    );
    let dt = (again[0].camera_from_object.translation_m
        - estimates[0].camera_from_object.translation_m)
        .amax();
    assert!(dt < 1e-15, "translation drifts by {dt} m");
    assert_eq!((again[0].score, again[0].time_s), (0.9, 0.25));

    // Writing is atomic: the target appears whole and no temporary file is left.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.csv");
    write_results(&out, &estimates).expect("writes");
    assert_eq!(std::fs::read(&out).expect("written"), formatted);
    assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 1);
    let unwritable = dir.path().join("no/such/dir/out.csv");
    assert!(matches!(
        write_results(&unwritable, &estimates),
        Err(Error::Write { .. })
    ));
}

/// A dataset that shares ycbv-mini's models and scene 1's annotations, with its own
/// `camera.json` and RGB images.
fn dataset_with(camera_json: &str, rgb: Option<(u32, u32)>) -> tempfile::TempDir {
    let mini = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini");
    let dir = tempfile::tempdir().expect("temp dir");
    let link = |from: PathBuf, to: PathBuf| std::os::unix::fs::symlink(from, to).expect("link");
    link(mini.join("models"), dir.path().join("models"));
    std::fs::write(dir.path().join("camera.json"), camera_json).expect("write");
    let scene = dir.path().join("test/000001");
    std::fs::create_dir_all(scene.join("rgb")).expect("mkdir");
    for file in ["scene_camera.json", "scene_gt.json", "scene_gt_info.json"] {
        link(mini.join("test/000001").join(file), scene.join(file));
    }
    if let Some((width, height)) = rgb {
        let image = super::images::RgbImage {
            width,
            height,
            pixels: vec![[9, 9, 9]; (width * height) as usize],
        };
        super::images::write_rgb_png(&scene.join("rgb/000000.png"), &image).expect("png");
    }
    dir
}

#[test]
fn camera_json_sizes_and_rgb_sizes_are_checked() {
    use super::dataset::BopDataset;
    let bad = dataset_with(
        r#"{"width": 0, "height": 480, "fx": 1, "fy": 1, "cx": 0, "cy": 0}"#,
        None,
    );
    assert_error(
        BopDataset::load(bad.path(), "test"),
        "camera.json",
        &["width: expected 1 to 16384 pixels, found 0"],
    );
    let small = dataset_with(
        r#"{"width": 640, "height": 480, "fx": 1, "fy": 1, "cx": 0, "cy": 0}"#,
        Some((320, 240)),
    );
    let dataset = BopDataset::load(small.path(), "test").expect("loads");
    assert_error(
        dataset.read_rgb(1, 0),
        "000000.png",
        &["it is 320 x 240", "camera.json says 640 x 480"],
    );
}

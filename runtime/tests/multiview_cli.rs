//! `posed multiview` as a binary on the bundled ycbv-mini scenes: noisy single-view
//! candidates from `posed dataset make-init-poses` -> multi-view reconstruction ->
//! `posed eval`, plus the outputs CosyPose's run_custom_scenario writes, and bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{data_dir, posed};
use posed::bop::results::read_results;

fn run(args: &[&str]) -> Output {
    posed().args(args).output().expect("posed runs")
}

fn check_ok(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// `posed multiview` on `dataset` with `candidates` into `out_dir`, plus `extra`.
fn multiview(dataset: &Path, candidates: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "multiview",
        "--dataset",
        path_str(dataset),
        "--candidates",
        path_str(candidates),
        "--out-dir",
        path_str(out_dir),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn noisy_candidates_become_scenes_that_eval_reads() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dataset = data_dir("ycbv-mini");
    let candidates = scratch.path().join("candidates.csv");
    let out_dir = scratch.path().join("mv");
    check_ok(
        &run(&[
            "dataset",
            "make-init-poses",
            "--dataset",
            path_str(&dataset),
            "--rotation-deg",
            "1",
            "--translation-mm",
            "5",
            "--seed",
            "4",
            "--score",
            "0.9",
            "--out",
            path_str(&candidates),
        ]),
        "make-init-poses",
    );
    let stderr = check_ok(
        &multiview(
            &dataset,
            &candidates,
            &out_dir,
            &["--n-views", "4", "--ba-iterations", "10"],
        ),
        "multiview",
    );
    // ycbv-mini: 2 scenes of 8 views, in groups of 4.
    assert!(stderr.contains("4 view group(s)"), "{stderr}");

    let input = read_results(&candidates).expect("candidates read back");
    let results = read_results(&out_dir.join("results.csv")).expect("results read back");
    // Every candidate is kept, after the reconstructed objects, which outrank them.
    let reprojected = results.len() - input.len();
    assert!(reprojected > 0);
    for (row, original) in results[reprojected..].iter().zip(&input) {
        assert_eq!(
            row.estimate.camera_from_object,
            original.estimate.camera_from_object
        );
        assert_eq!(row.estimate.score, original.estimate.score);
    }
    for row in &results[..reprojected] {
        // The sum of at least two candidates' scores, plus one.
        assert!(row.estimate.score >= 2.0 * 0.9 + 1.0 - 1e-9, "{row:?}");
    }
    // Every row of an image carries the same time (the BOP toolkit requires it).
    for row in &results {
        let same_image = results
            .iter()
            .filter(|r| r.estimate.scene_id == row.estimate.scene_id)
            .filter(|r| r.estimate.im_id == row.estimate.im_id);
        assert!(same_image
            .into_iter()
            .all(|r| r.estimate.time_s == row.estimate.time_s));
    }

    // run_custom_scenario's files, per view group.
    let group = out_dir.join("scene_000001").join("group_0");
    let scene: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(group.join("predicted_scene.json")).expect("scene file"),
    )
    .expect("JSON");
    let objects = scene["objects"].as_array().expect("objects");
    assert!(!objects.is_empty());
    for object in objects {
        assert!(object["label"].as_str().expect("label").starts_with("obj_"));
        assert_eq!(object["TWO"][3], serde_json::json!([0.0, 0.0, 0.0, 1.0]));
        assert!(object["n_cand"].as_u64().expect("n_cand") >= 2);
    }
    assert_eq!(scene["cameras"].as_array().expect("cameras").len(), 4);
    let group_rows = read_results(&group.join("scene_reprojected.csv")).expect("reprojected");
    assert_eq!(group_rows.len(), 4 * objects.len());

    let eval = run(&[
        "eval",
        "--dataset",
        path_str(&dataset),
        "--results",
        path_str(&out_dir.join("results.csv")),
        "--no-vsd",
    ]);
    check_ok(&eval, "eval");
}

#[test]
fn candidates_the_dataset_does_not_have_are_named() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dataset = data_dir("ycbv-mini");
    let candidates = scratch.path().join("bad.csv");
    std::fs::write(
        &candidates,
        "scene_id,im_id,obj_id,score,R,t,time\n\
         1,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 800,0.1\n\
         1,42,1,0.9,1 0 0 0 1 0 0 0 1,0 0 800,0.1\n",
    )
    .expect("write");
    let output = multiview(&dataset, &candidates, &scratch.path().join("out"), &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.csv:3") && stderr.contains("image 42"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing was written.
    assert!(!scratch.path().join("out").join("results.csv").exists());
}

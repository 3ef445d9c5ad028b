//! `posed eval` on the bundled ycbv-mini dataset: perfect estimates, hand-checked
//! matching and average precision, symmetric-as-asymmetric, bad rows, and the CLI.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::posed;
use posed::bop::dataset::BopDataset;
use posed::bop::results::{read_results, write_results, Estimate};
use posed::bop::targets::read_targets;
use posed::eval::{evaluate, EvalOptions, Report, TargetSource};
use posed::pipeline::ComputeDevice;
use posed::Error;
use posed_kernels::metrics::auc::auc_voc;
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::symmetry::{bop_symmetry_transforms, BOP_MAX_SYM_DISC_STEP};
use posed_kernels::Pose;

fn dataset_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini")
}

fn dataset() -> BopDataset {
    BopDataset::load(&dataset_dir(), "test").expect("ycbv-mini loads")
}

/// Options with the bundled targets; VSD only where a test looks at it (it renders, which
/// is slow in debug builds and slower still under qemu).
fn options(symmetric_as_asymmetric: &[u32]) -> EvalOptions {
    let path = dataset_dir().join("test_targets_bop19.json");
    EvalOptions {
        cosypose_targets: None,
        bop_targets: (
            read_targets(&path).expect("targets"),
            TargetSource::File(path),
        ),
        symmetric_as_asymmetric: symmetric_as_asymmetric
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        progress: false,
        vsd: false,
        device: ComputeDevice::Cpu,
    }
}

fn options_with_vsd() -> EvalOptions {
    EvalOptions {
        vsd: true,
        ..options(&[])
    }
}

/// Writes estimates to a CSV in `dir` and evaluates it.
fn eval(dir: &Path, estimates: &[Estimate], options: &EvalOptions) -> posed::Result<Report> {
    let path = dir.join("results.csv");
    write_results(&path, estimates)?;
    let rows = read_results(&path)?;
    assert_eq!(rows.len(), estimates.len(), "every row is read back");
    evaluate(&dataset(), &path, &rows, options)
}

fn ground_truth_estimates(dataset: &BopDataset) -> Vec<Estimate> {
    let mut out = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            for instance in &image.gt {
                out.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score: 1.0,
                    camera_from_object: instance.camera_from_object,
                    time_s: -1.0,
                });
            }
        }
    }
    out
}

fn shift(pose: &Pose, dx_m: f64) -> Pose {
    let mut shifted = *pose;
    shifted.translation_m.x += dx_m;
    shifted
}

#[test]
fn ground_truth_scores_perfectly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let report = eval(
        dir.path(),
        &ground_truth_estimates(&dataset),
        &options_with_vsd(),
    )
    .expect("eval");
    assert_eq!(report.n_predictions, 62);
    assert_eq!(report.n_gt, 62);
    assert_eq!(
        report.n_bop_targets, 60,
        "two instances are below 10 % visibility"
    );
    for value in [
        report.auc_add,
        report.auc_adds,
        report.auc_add_or_adds,
        report.map_adds_01d,
    ] {
        let value = value.expect("defined");
        assert!((value - 1.0).abs() < 1e-9, "{value}");
    }
    assert_eq!(report.ar_mssd, Some(1.0));
    assert_eq!(report.ar_mspd, Some(1.0));
    // The estimate renders exactly as the ground truth: VSD 0 for every tau, as long as
    // the ground truth is visible in the test depth image, which every target is.
    assert_eq!(report.ar_vsd, Some(1.0));
    assert_eq!(report.ar, Some(1.0));
    assert_eq!(report.per_object.len(), 5);
    for object in report.per_object.values() {
        assert_eq!((object.ar_vsd, object.ar), (Some(1.0), Some(1.0)));
    }
}

#[test]
fn vsd_tells_a_depth_shift_of_10_cm_from_one_of_1_mm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let along_z = |pose: &Pose, dz_m: f64| {
        let mut shifted = *pose;
        shifted.translation_m.z += dz_m;
        shifted
    };
    let mut estimates: Vec<Estimate> = ground_truth_estimates(&dataset)
        .into_iter()
        .filter(|e| [1, 3, 4].contains(&e.obj_id))
        .collect();
    for e in &mut estimates {
        e.camera_from_object = match e.obj_id {
            // 10 cm deeper, along the optical axis: the silhouettes overlap, but at almost
            // every pixel the estimate's surface lies more than 0.5 d = 86 mm behind the
            // ground truth's, so VSD is near 1 at every tau (0.8 and more here) and the
            // estimate is wrong at every threshold.
            1 => along_z(&e.camera_from_object, 0.1),
            // 1 mm deeper: 0.005 d, under the smallest tau, and the silhouettes differ by
            // a sliver (VSD 0.007 at most here): right at every tau and threshold.
            3 => along_z(&e.camera_from_object, 0.001),
            // 1 m to the side: the bounding spheres' projections do not overlap, so the
            // toolkit sets VSD to 1 without rendering.
            _ => shift(&e.camera_from_object, 1.0),
        };
    }
    let report = eval(dir.path(), &estimates, &options_with_vsd()).expect("eval");
    let [can, box3, box4] = [1, 3, 4].map(|obj_id| &report.per_object[&obj_id]);
    assert_eq!(can.ar_vsd, Some(0.0));
    assert_eq!(box3.ar_vsd, Some(1.0));
    assert_eq!(box4.ar_vsd, Some(0.0));
    // The 1 mm shift is right for MSSD (0.005 d) and MSPD (under 1 px) too, so AR = 1.
    assert_eq!(box3.ar, Some(1.0));
    // AR is the mean of the three recalls, per object and overall.
    for object in report.per_object.values() {
        let mean = (object.ar_vsd.expect("vsd")
            + object.ar_mssd.expect("targets")
            + object.ar_mspd.expect("targets"))
            / 3.0;
        assert!((object.ar.expect("defined") - mean).abs() < 1e-15);
    }
    // Pooled over the 60 targets: only object 3's are found.
    let expected = box3.n_bop_targets as f64 / report.n_bop_targets as f64;
    assert!((report.ar_vsd.expect("vsd") - expected).abs() < 1e-12);
    let mean = (report.ar_vsd.expect("vsd")
        + report.ar_mssd.expect("targets")
        + report.ar_mspd.expect("targets"))
        / 3.0;
    assert!((report.ar.expect("defined") - mean).abs() < 1e-15);
}

#[test]
fn vsd_without_depth_images_names_the_file_and_the_way_out() {
    // ycbv-mini without its depth folders: annotations copied, models linked.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("no-depth");
    for scene in ["000001", "000002"] {
        let to = root.join("test").join(scene);
        std::fs::create_dir_all(&to).expect("mkdir");
        for name in ["scene_camera.json", "scene_gt.json", "scene_gt_info.json"] {
            std::fs::copy(
                dataset_dir().join("test").join(scene).join(name),
                to.join(name),
            )
            .expect("copy");
        }
    }
    std::fs::copy(dataset_dir().join("camera.json"), root.join("camera.json")).expect("copy");
    std::os::unix::fs::symlink(
        dataset_dir().join("models").canonicalize().expect("models"),
        root.join("models"),
    )
    .expect("link");
    let dataset = BopDataset::load(&root, "test").expect("loads");
    let path = dir.path().join("results.csv");
    write_results(&path, &ground_truth_estimates(&dataset)).expect("written");
    let rows = read_results(&path).expect("read");
    let err = evaluate(&dataset, &path, &rows, &options_with_vsd()).expect_err("no depth");
    let message = err.to_string();
    assert!(
        message.contains("depth/000000.png") && message.contains("--no-vsd"),
        "{message}"
    );
    let report = evaluate(&dataset, &path, &rows, &options(&[])).expect("without VSD");
    assert_eq!(report.ar_mssd, Some(1.0));
}

#[test]
fn without_vsd_ar_vsd_and_ar_are_undefined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let report = eval(dir.path(), &ground_truth_estimates(&dataset), &options(&[])).expect("eval");
    assert_eq!((report.ar_vsd, report.ar), (None, None));
    assert_eq!(report.ar_mssd, Some(1.0));
    assert!(report.protocol.iter().any(|p| p.contains("not computed")));
}

#[test]
fn auc_follows_the_pair_errors_and_misses_count_as_infinite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let mut estimates = ground_truth_estimates(&dataset);
    // Shift every estimate of object 2 by 1 cm along x and drop its first instance.
    let first_obj2 = estimates
        .iter()
        .position(|e| e.obj_id == 2)
        .expect("object 2 present");
    estimates.remove(first_obj2);
    for e in estimates.iter_mut().filter(|e| e.obj_id == 2) {
        e.camera_from_object = shift(&e.camera_from_object, 0.01);
    }
    let report = eval(dir.path(), &estimates, &options(&[])).expect("eval");
    let object = &report.per_object[&2];
    assert_eq!(object.n_gt, 8);
    assert_eq!(object.n_predictions, 7);
    // ADD of a pure translation is its length: 7 errors of 1 cm and one miss.
    let expected =
        auc_voc(&[0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, f64::INFINITY]).expect("defined");
    let auc_add = object.auc_add.expect("defined");
    assert!(
        (auc_add - expected).abs() < 1e-12,
        "{auc_add} vs {expected}"
    );
    // The mean over objects is the mean of the five per-object AUCs.
    let mean = report
        .per_object
        .values()
        .map(|o| o.auc_add.expect("defined"))
        .sum::<f64>()
        / 5.0;
    assert!((report.auc_add.expect("defined") - mean).abs() < 1e-15);
    // 1 cm is 0.037 of object 2's diameter: correct at every MSSD threshold from 0.05.
    // Object 2 has 7 BOP targets (its instance in image 6 is 0.04 % visible), and the
    // dropped estimate was one of them: recall 6 / 7 at every threshold.
    assert_eq!(object.n_bop_targets, 7);
    assert!((object.ar_mssd.expect("targets") - 6.0 / 7.0).abs() < 1e-12);
}

#[test]
fn duplicates_are_false_positives_and_only_the_top_estimate_is_scored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let mut estimates: Vec<Estimate> = ground_truth_estimates(&dataset)
        .into_iter()
        .filter(|e| e.obj_id == 3)
        .collect();
    assert_eq!(estimates.len(), 8);
    // A second, worse estimate per instance with a higher score: the AUC meters score
    // only the top-1 (the 5 cm one); for mAP it takes the match when within 0.1 d
    // (19.9 mm for object 3), which 5 cm is not, so it is a false positive ranked first.
    let duplicates: Vec<Estimate> = estimates
        .iter()
        .map(|e| Estimate {
            score: 2.0,
            camera_from_object: shift(&e.camera_from_object, 0.05),
            ..e.clone()
        })
        .collect();
    estimates.extend(duplicates);
    let report = eval(dir.path(), &estimates, &options(&[])).expect("eval");
    let object = &report.per_object[&3];
    let auc_add = object.auc_add.expect("defined");
    let expected = auc_voc(&[0.05; 8]).expect("defined");
    assert!((auc_add - expected).abs() < 1e-12);
    // Ranking: 8 false positives (score 2) then 8 true positives (score 1), one
    // threshold each: AP = 1 * 8/16 = 0.5; recall 8/8 keeps it at 0.5.
    let ap = object.ap_adds_01d.expect("has true positives");
    assert!((ap - 0.5).abs() < 1e-12, "{ap}");
    // BOP19 takes inst_count = 1 estimate per target, the 5 cm one: MSSD 0.05 m is
    // 0.252 d, correct at the five thresholds above it (0.3 .. 0.5).
    let ar = object.ar_mssd.expect("targets");
    assert!((ar - 0.5).abs() < 1e-12, "{ar}");
    // Objects without estimates have undefined AUCs, hence an undefined mean.
    assert_eq!(report.auc_add, None);
    assert!(report.notes.iter().any(|n| n.contains("undefined")));
}

#[test]
fn symmetric_as_asymmetric_switches_add_s_to_add() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let model = dataset.models.get(1).expect("object 1");
    let can = PoseErrorModel::new(
        model.mesh.positions.clone(),
        model.info.diameter_m,
        bop_symmetry_transforms(&model.info.symmetries, BOP_MAX_SYM_DISC_STEP).expect("symmetries"),
    )
    .expect("model");
    // Turn every can 90 degrees about its symmetry axis: large ADD, small ADD-S.
    let quarter = Pose {
        rotation: *nalgebra::Rotation3::from_axis_angle(
            &nalgebra::Vector3::z_axis(),
            std::f64::consts::FRAC_PI_2,
        )
        .matrix(),
        translation_m: nalgebra::Vector3::zeros(),
    };
    let mut estimates = ground_truth_estimates(&dataset);
    let mut add_errors = Vec::new();
    for e in estimates.iter_mut().filter(|e| e.obj_id == 1) {
        let gt = e.camera_from_object;
        e.camera_from_object = gt.compose(&quarter);
        add_errors.push(can.add(&gt, &e.camera_from_object));
    }
    let default = eval(dir.path(), &estimates, &options(&[])).expect("eval");
    let asymmetric = eval(dir.path(), &estimates, &options(&[1])).expect("eval");
    let can_default = &default.per_object[&1];
    let can_asymmetric = &asymmetric.per_object[&1];
    assert_eq!(can_default.auc_add_or_adds, can_default.auc_adds);
    assert_eq!(can_asymmetric.auc_add_or_adds, can_asymmetric.auc_add);
    assert_eq!(can_asymmetric.auc_add, auc_voc(&add_errors));
    assert!(can_asymmetric.auc_add_or_adds < can_default.auc_add_or_adds);
    // BOP's MSSD knows the symmetry either way.
    assert!(can_default.ar_mssd.expect("targets") > 0.99);
}

#[test]
fn bad_rows_are_reported_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let mut estimates = ground_truth_estimates(&dataset);
    estimates[3].obj_id = 42;
    let err = eval(dir.path(), &estimates, &options(&[])).expect_err("unknown object");
    match err {
        Error::Csv {
            line, ref detail, ..
        } => {
            assert_eq!(line, 5, "header is line 1, estimate 3 is line 5");
            assert!(detail.contains("obj_id 42"), "{detail}");
        }
        other => panic!("expected a CSV error, got {other}"),
    }
    let mut estimates = ground_truth_estimates(&dataset);
    let second_of_image = estimates
        .iter()
        .skip(1)
        .position(|e| (e.scene_id, e.im_id) == (estimates[0].scene_id, estimates[0].im_id))
        .expect("image 0 has two objects")
        + 1;
    // Within the toolkit's 1 ms: accepted.
    estimates[second_of_image].time_s = estimates[0].time_s + 0.0005;
    eval(dir.path(), &estimates, &options(&[])).expect("times within 1 ms");
    estimates[second_of_image].time_s = estimates[0].time_s + 1.0;
    let message = eval(dir.path(), &estimates, &options(&[]))
        .expect_err("two times for one image")
        .to_string();
    assert!(
        message.contains(&format!("results.csv:{}:", second_of_image + 2))
            && message.contains("where line 2 says"),
        "{message}"
    );
    let mut estimates = ground_truth_estimates(&dataset);
    estimates[0].im_id = 99;
    let err = eval(dir.path(), &estimates, &options(&[])).expect_err("unknown image");
    let message = err.to_string();
    assert!(
        message.contains("results.csv:2:") && message.contains("image 99"),
        "{message}"
    );
}

#[test]
fn targets_that_match_no_ground_truth_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dataset();
    let estimates = ground_truth_estimates(&dataset);
    let good = options(&[]);
    let with_target = |change: &dyn Fn(&mut posed::bop::targets::Target)| {
        let mut changed = good.clone();
        change(&mut changed.bop_targets.0[2]);
        eval(dir.path(), &estimates, &changed)
            .expect_err("a bad target")
            .to_string()
    };
    let message = with_target(&|t| t.im_id = 77);
    assert!(
        message.contains("test_targets_bop19.json")
            && message.contains("target 2 (scene 1, image 77"),
        "{message}"
    );
    assert!(message.contains("not in the dataset's split"), "{message}");
    let message = with_target(&|t| t.obj_id = 3000);
    assert!(message.contains("annotates 0 instance(s)"), "{message}");
    let message = with_target(&|t| t.inst_count = 1_000_000_000);
    assert!(message.contains("inst_count 1000000000"), "{message}");
    let first = good.bop_targets.0[0];
    let message = with_target(&move |t| *t = first);
    assert!(message.contains("listed a second time"), "{message}");
}

#[test]
fn cli_prints_the_json_keys_and_the_table() {
    let results = dataset_dir().join("../results/ycbv-mini-synthetic.csv");
    let output = posed()
        .args(["eval", "--dataset"])
        .arg(dataset_dir())
        .arg("--results")
        .arg(&results)
        .arg("--json")
        .output()
        .expect("posed runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    for key in [
        "auc_add",
        "auc_adds",
        "auc_add_or_adds",
        "map_adds_0.1d",
        "ar_vsd",
        "ar_mssd",
        "ar_mspd",
        "ar",
        "n_predictions",
        "n_gt",
        "per_object",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(json["n_gt"], 62);
    let per_object = json["per_object"].as_object().expect("object");
    assert_eq!(per_object.len(), 5);
    for key in ["ar_vsd", "ar_mssd", "ar_mspd", "ar"] {
        assert!(per_object["1"][key].is_f64(), "per_object.1.{key}");
    }
    let auc = json["auc_adds"].as_f64().expect("a number");
    assert!(auc > 0.5 && auc < 1.0, "{auc}");
    let ar_vsd = json["ar_vsd"].as_f64().expect("a number");
    assert!(ar_vsd > 0.0 && ar_vsd < 1.0, "{ar_vsd}");
    let mean = (ar_vsd
        + json["ar_mssd"].as_f64().expect("a number")
        + json["ar_mspd"].as_f64().expect("a number"))
        / 3.0;
    assert!((json["ar"].as_f64().expect("a number") - mean).abs() < 1e-12);

    let no_vsd = posed()
        .args(["eval", "--json", "--no-vsd", "--dataset"])
        .arg(dataset_dir())
        .arg("--results")
        .arg(&results)
        .output()
        .expect("posed runs");
    let no_vsd: serde_json::Value =
        serde_json::from_slice(&no_vsd.stdout).expect("one JSON object");
    assert!(no_vsd["ar_vsd"].is_null() && no_vsd["ar"].is_null());
    assert!(no_vsd["per_object"]["1"]["ar_vsd"].is_null());
    assert_eq!(no_vsd["ar_mssd"], json["ar_mssd"]);

    // `--device cuda` gives the same numbers: on the GPU where there is one (the kernels
    // are the CPU's twins), else on the CPU after a warning.
    let cuda = posed()
        .args([
            "eval",
            "--json",
            "--no-vsd",
            "--device",
            "cuda",
            "--dataset",
        ])
        .arg(dataset_dir())
        .arg("--results")
        .arg(&results)
        .output()
        .expect("posed runs");
    assert!(
        cuda.status.success(),
        "{}",
        String::from_utf8_lossy(&cuda.stderr)
    );
    let cuda: serde_json::Value = serde_json::from_slice(&cuda.stdout).expect("one JSON object");
    for key in [
        "auc_add",
        "auc_adds",
        "auc_add_or_adds",
        "map_adds_0.1d",
        "ar_mssd",
    ] {
        assert_eq!(cuda[key], no_vsd[key], "{key}");
    }

    let table = posed()
        .args(["eval", "--no-vsd", "--dataset"])
        .arg(dataset_dir())
        .arg("--results")
        .arg(&results)
        .output()
        .expect("posed runs");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("AUC ADD(-S)") && text.contains("AR_VSD") && text.contains("mean"),
        "{text}"
    );

    let missing = posed()
        .args(["eval", "--dataset"])
        .arg(dataset_dir())
        .args(["--results", "/nonexistent/results.csv"])
        .output()
        .expect("posed runs");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/results.csv"), "{stderr}");
}

#[test]
fn the_shipped_demo_results_are_what_synth_results_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("synthetic.csv");
    let status = posed()
        .args(["synth-results", "--dataset"])
        .arg(dataset_dir())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("posed runs");
    assert!(status.success());
    let shipped = std::fs::read(dataset_dir().join("../results/ycbv-mini-synthetic.csv"))
        .expect("shipped file");
    assert_eq!(std::fs::read(&out).expect("written"), shipped);
}

//! `posed dataset make-*` and `posed predict` as a binary on the bundled ycbv-mini scenes
//! and test networks, end to end into `posed eval`. The test networks have random
//! weights, so these check the plumbing: the identity refiner must hand back the initial
//! poses to float rounding, every iteration must be written for every object, and every
//! object source (initial poses, a detections file, a detector network) must reach the
//! results file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{data_dir, posed};
use posed::bop::results::{read_results, EstimateRow};

fn run(args: &[&str], cache_dir: &Path) -> Output {
    posed()
        .env("POSED_CACHE_DIR", cache_dir)
        .args(args)
        .output()
        .expect("posed runs")
}

fn check_ok(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn check_fails(output: &Output, parts: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a failure");
    for part in parts {
        assert!(stderr.contains(part), "expected {part:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `posed eval` of `results` on `dataset`, which must succeed; its report.
fn eval(dataset: &Path, results: &Path, cache: &Path) -> String {
    let args = [
        "eval",
        "--dataset",
        path_str(dataset),
        "--results",
        path_str(results),
    ];
    check_ok(&run(&args, cache), "eval")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn network(name: &str) -> String {
    data_dir("networks")
        .join(name)
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

fn rows(path: &Path) -> Vec<EstimateRow> {
    read_results(path).expect("results read back")
}

/// `posed dataset make-detections` on `dataset`: its annotated boxes with 5 % noise.
fn make_detections(dataset: &Path, seed: &str, out: &Path, cache: &Path) {
    check_ok(
        &run(
            &[
                "dataset",
                "make-detections",
                "--dataset",
                path_str(dataset),
                "--box-noise",
                "0.05",
                "--seed",
                seed,
                "--out",
                path_str(out),
            ],
            cache,
        ),
        "make-detections",
    );
}

/// `posed predict` with the test coarse and refiner networks on a detections file
/// (z-up + auto-depth initial poses, 2 refiner iterations), quietly, plus `extra`.
fn predict_coarse_refiner(
    dataset: &Path,
    detections: &Path,
    extra: &[&str],
    cache: &Path,
) -> Output {
    let (coarse, refiner) = (network("coarse-tiny.onnx"), network("refiner-tiny.onnx"));
    let mut args = vec![
        "predict",
        "--dataset",
        path_str(dataset),
        "--coarse",
        &coarse,
        "--refiner",
        &refiner,
        "--detections",
        path_str(detections),
        "--init",
        "zup-autodepth",
        "--refiner-iterations",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args, cache)
}

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        Self { _dir: dir, root }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

#[test]
fn identity_refiner_returns_the_noisy_initial_poses_and_eval_reads_the_result() {
    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let init = scratch.file("init.csv");
    let out = scratch.file("out.csv");
    let iterations = scratch.file("iterations");
    let cache = scratch.file("cache");
    check_ok(
        &run(
            &[
                "dataset",
                "make-init-poses",
                "--dataset",
                path_str(&dataset),
                "--rotation-deg",
                "5",
                "--translation-mm",
                "10",
                "--seed",
                "7",
                "--out",
                path_str(&init),
            ],
            &cache,
        ),
        "make-init-poses",
    );
    let stdout = check_ok(
        &run(
            &[
                "predict",
                "--dataset",
                path_str(&dataset),
                "--refiner",
                &network("refiner-identity.onnx"),
                "--init-poses",
                path_str(&init),
                "--refiner-iterations",
                "2",
                "--batch-size",
                "3",
                "--save-iterations",
                path_str(&iterations),
                "--out",
                path_str(&out),
                "--quiet",
            ],
            &cache,
        ),
        "predict",
    );
    assert!(
        stdout.contains("0 coarse + 2 refiner iterations"),
        "{stdout}"
    );
    assert!(stdout.contains("refiner network"), "{stdout}");

    let init_rows = rows(&init);
    let out_rows = rows(&out);
    assert_eq!(init_rows.len(), 62, "every visible ycbv-mini instance");
    assert_eq!(out_rows.len(), init_rows.len());
    for (given, estimated) in init_rows.iter().zip(&out_rows) {
        let (a, b) = (&given.estimate, &estimated.estimate);
        assert_eq!(
            (a.scene_id, a.im_id, a.obj_id),
            (b.scene_id, b.im_id, b.obj_id)
        );
        assert_eq!(a.score, b.score);
        let rotation = (a.camera_from_object.rotation - b.camera_from_object.rotation)
            .abs()
            .max();
        let translation = (a.camera_from_object.translation_m - b.camera_from_object.translation_m)
            .abs()
            .max();
        assert!(
            rotation <= 1e-15,
            "line {}: rotation moved by {rotation}",
            estimated.line
        );
        assert!(
            translation <= 1e-12,
            "line {}: moved {translation} m",
            estimated.line
        );
        assert!(
            b.time_s > 0.0,
            "line {}: per-image time {}",
            estimated.line,
            b.time_s
        );
    }
    for number in 1..=2 {
        let file = iterations.join(format!("refiner-{number}.csv"));
        assert_eq!(rows(&file).len(), init_rows.len(), "{}", file.display());
    }
    assert!(!iterations.join("refiner-3.csv").exists());
    assert!(!iterations.join("coarse-1.csv").exists());

    // `posed eval` reads the file; the estimates are the 5 degree / 10 mm initial poses,
    // so nothing is within the BOP thresholds' smallest steps but ADD-S AUC is not zero.
    let report = eval(&dataset, &out, &cache);
    assert!(report.contains("ADD-S"), "{report}");
}

/// The first three target images of ycbv-mini, in passes of up to 4 objects.
const FIRST_THREE_IMAGES: [&str; 4] = ["--max-images", "3", "--batch-size", "4"];

#[test]
fn detections_file_with_coarse_and_refiner_writes_every_iteration() {
    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let detections = scratch.file("detections.json");
    let out = scratch.file("out.csv");
    let iterations = scratch.file("iterations");
    let cache = scratch.file("cache");
    make_detections(&dataset, "3", &detections, &cache);
    let text = std::fs::read_to_string(&detections).expect("detections written");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON list");
    assert_eq!(entries.len(), 62);

    check_ok(
        &predict_coarse_refiner(
            &dataset,
            &detections,
            &[
                &FIRST_THREE_IMAGES[..],
                &["--save-iterations", path_str(&iterations)],
                &["--out", path_str(&out)],
            ]
            .concat(),
            &cache,
        ),
        "predict",
    );
    let estimated = rows(&out);
    // The first three target images of ycbv-mini hold 5, 4 and 4 visible instances... or
    // whatever the detections file says: count them from it.
    let first_images: Vec<(u64, u64)> = {
        let mut keys: Vec<(u64, u64)> = entries
            .iter()
            .map(|e| {
                (
                    e["scene_id"].as_u64().unwrap_or(0),
                    e["image_id"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        keys.dedup();
        keys.truncate(3);
        keys
    };
    let expected = entries
        .iter()
        .filter(|e| {
            let key = (
                e["scene_id"].as_u64().unwrap_or(0),
                e["image_id"].as_u64().unwrap_or(0),
            );
            first_images.contains(&key)
        })
        .count();
    assert!(expected > 0);
    assert_eq!(estimated.len(), expected);
    for row in &estimated {
        let pose = &row.estimate.camera_from_object;
        assert!(pose.translation_m.iter().all(|v| v.is_finite()));
        assert!(
            pose.translation_m.z > 0.0,
            "line {}: in front of the camera",
            row.line
        );
    }
    for name in ["coarse-1.csv", "refiner-1.csv", "refiner-2.csv"] {
        assert_eq!(rows(&iterations.join(name)).len(), expected, "{name}");
    }
    // The random-weight networks move the poses: each iteration differs from the last.
    let coarse = rows(&iterations.join("coarse-1.csv"));
    let refined = rows(&iterations.join("refiner-1.csv"));
    assert_ne!(
        coarse[0].estimate.camera_from_object,
        refined[0].estimate.camera_from_object
    );

    // The CPU backend's worker threads change nothing but speed: 3 threads and 1 give
    // the same poses and scores, bit for bit.
    let poses = |threads: &str| {
        let out = scratch.file(&format!("out-{threads}-threads.csv"));
        let output = predict_coarse_refiner(
            &dataset,
            &detections,
            &[
                &FIRST_THREE_IMAGES[..],
                &["--cpu-threads", threads],
                &["--out", path_str(&out)],
            ]
            .concat(),
            &cache,
        );
        let summary = check_ok(&output, "predict");
        assert!(
            summary.contains(&format!("cpu backend on {threads} threads")),
            "{summary}"
        );
        rows(&out)
            .into_iter()
            .map(|row| (row.estimate.camera_from_object, row.estimate.score))
            .collect::<Vec<_>>()
    };
    let on_three = poses("3");
    assert_eq!(on_three.len(), expected);
    assert_eq!(on_three, poses("1"));
}

#[test]
fn detector_network_feeds_the_loop() {
    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let out = scratch.file("out.csv");
    let cache = scratch.file("cache");
    let stdout = check_ok(
        &run(
            &[
                "predict",
                "--dataset",
                path_str(&dataset),
                "--detector",
                &network("detector-tiny.onnx"),
                "--refiner",
                &network("refiner-identity.onnx"),
                "--refiner-iterations",
                "1",
                "--max-images",
                "1",
                "--out",
                path_str(&out),
                "--quiet",
            ],
            &cache,
        ),
        "predict",
    );
    assert!(stdout.contains("1 images"), "{stdout}");
    // Every kept detection is an object of the dataset (the detector knows 21 YCB-Video
    // objects, ycbv-mini has 5), written with the identity refiner's pose: the z = 1 m
    // initial pose of its box.
    for row in rows(&out) {
        assert!((1..=5).contains(&row.estimate.obj_id), "line {}", row.line);
        assert!((row.estimate.camera_from_object.translation_m.z - 1.0).abs() < 1e-12);
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let cache = scratch.file("cache");
    let out = scratch.file("out.csv");
    let base = [
        "predict",
        "--dataset",
        path_str(&dataset),
        "--out",
        path_str(&out),
        "--quiet",
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        run(&args, &cache)
    };
    let refiner = network("refiner-identity.onnx");

    check_fails(
        &with(&["--refiner", &refiner]),
        &["no objects", "--detections"],
    );
    check_fails(
        &with(&["--refiner", &refiner, "--cpu-threads", "0"]),
        &["--cpu-threads", "0"],
    );
    check_fails(
        &with(&["--detector", &network("detector-tiny.onnx")]),
        &["no pose network"],
    );

    // A detector where a refiner belongs: the file and both roles are named.
    check_fails(
        &with(&[
            "--refiner",
            &network("detector-tiny.onnx"),
            "--detector",
            &network("detector-tiny.onnx"),
        ]),
        &[
            "detector-tiny.onnx",
            "expected a refiner network",
            "detector",
        ],
    );

    // Initial poses do not go through a coarse model.
    let init = scratch.file("init.csv");
    check_ok(
        &run(
            &[
                "dataset",
                "make-init-poses",
                "--dataset",
                path_str(&dataset),
                "--out",
                path_str(&init),
            ],
            &cache,
        ),
        "make-init-poses",
    );
    check_fails(
        &with(&[
            "--refiner",
            &refiner,
            "--coarse",
            &network("coarse-tiny.onnx"),
            "--init-poses",
            path_str(&init),
            "--coarse-iterations",
            "1",
        ]),
        &["coarse iterations with initial poses"],
    );

    // Bad detections files: each error names the file, the entry and what is wrong.
    let detections = scratch.file("unknown.json");
    let detections_fail = |json: &str, parts: &[&str]| {
        std::fs::write(&detections, json).expect("write fixture");
        check_fails(
            &with(&["--refiner", &refiner, "--detections", path_str(&detections)]),
            parts,
        );
    };
    // An object the dataset does not have.
    detections_fail(
        r#"[{"scene_id": 1, "image_id": 0, "category_id": 42, "score": 0.9, "bbox": [10, 10, 50, 50], "time": 0.1}]"#,
        &["unknown.json", "entry 0", "category_id 42"],
    );
    // A box with no area in the image.
    detections_fail(
        r#"[{"scene_id": 1, "image_id": 0, "category_id": 1, "score": 0.9, "bbox": [5000, 5000, 100, 100], "time": 0.1}]"#,
        &[
            "unknown.json",
            "entry 0",
            "no area inside the 640 x 480 image",
        ],
    );
    // A malformed one: the field is named.
    detections_fail(
        r#"[{"scene_id": 1, "image_id": 0, "category_id": 1, "score": "high", "bbox": [10, 10, 50, 50]}]"#,
        &["unknown.json", "score"],
    );
    assert!(!out.exists(), "nothing is written when the run fails");

    // Outputs that cannot be written are found before any image is processed.
    let with_out = |out: &Path, extra: &[&str]| {
        let mut args = vec!["predict", "--dataset", path_str(&dataset), "--quiet"];
        args.extend([
            "--refiner",
            refiner.as_str(),
            "--init-poses",
            path_str(&init),
        ]);
        args.extend(["--out", path_str(out)]);
        args.extend_from_slice(extra);
        run(&args, &cache)
    };
    let nowhere = scratch.file("no/such/folder/out.csv");
    check_fails(
        &with_out(&nowhere, &[]),
        &["no/such/folder/out.csv", "cannot write"],
    );
    check_fails(
        &with_out(&out, &["--save-iterations", path_str(&init)]),
        &["init.csv", "cannot write"],
    );

    check_fails(
        &with_out(&out, &["--refiner-iterations", "1000000000"]),
        &["--refiner-iterations", "expected 0 to 100", "1000000000"],
    );

    // The label filter applies to initial poses too.
    let only_one = scratch.file("only-one.csv");
    check_ok(
        &with_out(&only_one, &["--labels", "1"]),
        "predict --labels 1 --init-poses",
    );
    let kept = rows(&only_one);
    assert!(!kept.is_empty() && kept.iter().all(|r| r.estimate.obj_id == 1));
}

/// `--device cuda` runs crops, renders and updates on the CUDA device and must give the
/// CPU's poses (the kernels are bit-identical twins of the CPU code, and the network runs
/// on the same backend either way). Without a driver (CI, this project's machine) it is a
/// warning and the CPU, which must give the same file too: on a GPU machine this test is
/// the loop's GPU equivalence check (benches/gpu/run.sh runs it there).
#[test]
fn the_cuda_device_gives_the_cpu_poses_or_falls_back_to_the_cpu() {
    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let cache = scratch.file("cache");
    let detections = scratch.file("detections.json");
    make_detections(&dataset, "11", &detections, &cache);
    let predict = |device: &str, out: &Path| {
        predict_coarse_refiner(
            &dataset,
            &detections,
            &[
                "--max-images",
                "2",
                "--batch-size",
                "3",
                "--device",
                device,
                "--out",
                path_str(out),
            ],
            &cache,
        )
    };
    let on_cpu = scratch.file("cpu.csv");
    let on_cuda = scratch.file("cuda.csv");
    check_ok(&predict("cpu", &on_cpu), "predict --device cpu");
    let output = predict("cuda", &on_cuda);
    check_ok(&output, "predict --device cuda");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("no usable CUDA device") || stderr.contains("without the cuda feature") {
        eprintln!("no CUDA device here: checked the fallback to the CPU only");
    } else {
        eprintln!("ran on a CUDA device: checking it against the CPU");
    }
    let (cpu_rows, cuda_rows) = (rows(&on_cpu), rows(&on_cuda));
    assert!(!cpu_rows.is_empty());
    assert_eq!(cpu_rows.len(), cuda_rows.len());
    for (cpu, cuda) in cpu_rows.iter().zip(&cuda_rows) {
        let (a, b) = (&cpu.estimate, &cuda.estimate);
        assert_eq!(
            (a.scene_id, a.im_id, a.obj_id, a.score),
            (b.scene_id, b.im_id, b.obj_id, b.score)
        );
        // The CSV holds what both computed, to the digits it writes.
        assert_eq!(
            a.camera_from_object, b.camera_from_object,
            "line {}",
            cpu.line
        );
    }
}

#[test]
fn a_pose_network_not_trained_for_some_objects_is_warned_about_by_name() {
    // refiner-identity with a sidecar that lists only objects 1 and 2 of ycbv-mini's 5.
    let scratch = Scratch::new();
    let refiner = scratch.file("refiner-partial.onnx");
    std::fs::copy(network("refiner-identity.onnx"), &refiner).expect("copy");
    std::fs::write(
        scratch.file("refiner-partial.toml"),
        "format = 1\nrole = \"refiner\"\nlabels = [\"obj_000001\", \"obj_000002\"]\n",
    )
    .expect("sidecar");
    let out = scratch.file("out.csv");
    let predict = |extra: &[&str]| {
        let (dataset, detector) = (data_dir("ycbv-mini"), network("detector-tiny.onnx"));
        let mut args = vec![
            "predict",
            "--dataset",
            path_str(&dataset),
            "--detector",
            &detector,
            "--refiner",
            path_str(&refiner),
            "--refiner-iterations",
            "1",
            "--max-images",
            "1",
            "--quiet",
            "--out",
            path_str(&out),
        ];
        args.extend_from_slice(extra);
        let output = run(&args, &scratch.file("cache"));
        check_ok(&output, "predict");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = predict(&[]);
    assert!(
        stderr.contains("refiner-partial.onnx")
            && stderr.contains("trained for 2 object(s), not for object(s) 3, 4, 5"),
        "{stderr}"
    );
    // Restricted to the objects it knows: no warning.
    let stderr = predict(&["--labels", "1,2"]);
    assert!(!stderr.contains("trained for"), "{stderr}");
}

/// SIGINT during `posed predict`: it stops after the image in hand, writes the results of
/// the images done (which `posed eval` reads), says so, and exits with 128 + 2. Where
/// stderr is not a terminal it prints progress lines; the first one, once the networks are
/// loaded, starts the signals. Started ignoring SIGHUP (as `nohup` starts it), it keeps
/// ignoring it.
#[test]
fn a_stop_signal_keeps_the_results_of_the_images_done() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let scratch = Scratch::new();
    let dataset = data_dir("ycbv-mini");
    let (detections, out) = (scratch.file("detections.json"), scratch.file("results.csv"));
    make_detections(&dataset, "7", &detections, &scratch.root);
    let (coarse, refiner) = (network("coarse-tiny.onnx"), network("refiner-tiny.onnx"));
    let mut command = posed();
    // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut predict = common::Running(
        command
            .env("POSED_CACHE_DIR", &scratch.root)
            .args([
                "predict",
                "--dataset",
                path_str(&dataset),
                "--coarse",
                &coarse,
            ])
            .args(["--refiner", &refiner, "--detections", path_str(&detections)])
            .args(["--refiner-iterations", "4", "--out", path_str(&out)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start posed predict"),
    );
    let mut stderr = BufReader::new(predict.0.stderr.take().expect("stderr"));
    let mut first = String::new();
    while !first.starts_with("posed predict: 0/") {
        first.clear();
        let read = stderr.read_line(&mut first).expect("stderr");
        assert!(read > 0, "predict ended before its first progress line");
    }
    common::kill(&predict.0, libc::SIGHUP);
    common::kill(&predict.0, libc::SIGINT);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    let status = predict.0.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{first}{rest}");
    let planned: usize = first
        .trim_end()
        .rsplit('/')
        .next()
        .and_then(|s| s.strip_suffix(" images"))
        .and_then(|s| s.parse().ok())
        .expect("N/M images");
    let stopped = rest
        .lines()
        .find(|l| l.starts_with("posed predict: stopped by SIGINT after "))
        .unwrap_or_else(|| panic!("no stop line in {rest}"));
    assert!(
        stopped.contains(&format!(" of {planned} images; ")),
        "{stopped}"
    );

    // The images done are in the results, and eval reads them.
    let images: std::collections::BTreeSet<(u32, u32)> = rows(&out)
        .iter()
        .map(|row| (row.estimate.scene_id, row.estimate.im_id))
        .collect();
    assert!(
        !images.is_empty() && images.len() < planned,
        "{} of {planned} images",
        images.len()
    );
    assert!(
        stopped.contains(&format!("after {} of", images.len())),
        "{stopped}"
    );
    eval(&dataset, &out, &scratch.root);
}

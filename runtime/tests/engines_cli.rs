//! `posed engines check / build / list / run / profile` as a binary, on the test networks in
//! data/networks: a build, a cached rebuild, a damaged cache entry, listing, one batch
//! against onnxruntime's golden output, and the errors for bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{data_dir, posed};
use posed_engines::npy::{read_npy, NpyData};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A configuration naming the three crop / detector test networks, with its cache in `dir`.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let networks = data_dir("networks");
    let config = dir.join("posed.toml");
    let text = format!(
        "[networks]\ndetector = {:?}\ncoarse = {:?}\nrefiner = {:?}\n\n[engines]\nbackend = \"cpu\"\nmax_batch = 4\nmax_image = [240, 320]\ncache_dir = \"cache\"\n",
        networks.join("detector-tiny.onnx"),
        networks.join("coarse-tiny.onnx"),
        networks.join("refiner-tiny.onnx"),
    );
    std::fs::write(&config, text).expect("write config");
    config
}

fn engines(args: &[&str]) -> Output {
    posed()
        .arg("engines")
        .args(args)
        .output()
        .expect("posed runs")
}

/// `posed engines run MODEL --input INPUT --out OUT` plus `extra`, with the engine cache
/// in `cache_dir`.
fn run_model(model: &Path, input: &Path, out: &Path, cache_dir: &Path, extra: &[&str]) -> Output {
    posed()
        .env("POSED_CACHE_DIR", cache_dir)
        .arg("engines")
        .arg("run")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("posed runs")
}

#[test]
fn build_then_cached_then_damaged_then_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let config_arg = config.to_str().expect("utf-8 path");

    let first = engines(&["build", "--config", config_arg]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        stderr(&first).matches(": built in").count(),
        3,
        "{}",
        stderr(&first)
    );

    let second = engines(&["build", "--config", config_arg]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        stderr(&second).matches("cached, verified").count(),
        3,
        "{}",
        stderr(&second)
    );
    // Every test network, built or read back from the cache, runs allocation-free.
    for output in [&first, &second] {
        assert_eq!(
            stderr(output)
                .matches("runs on the planned executor")
                .count(),
            3,
            "{}",
            stderr(output)
        );
    }

    // Damage one entry: the next build notices, rebuilds it, and keeps the others.
    let cache = dir.path().join("cache");
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "engine"))
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 3);
    let bytes = std::fs::read(&entries[0]).expect("entry");
    std::fs::write(&entries[0], &bytes[..bytes.len() / 2]).expect("truncate");
    let third = engines(&["build", "--config", config_arg]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(
        stderr(&third).matches("rebuilt").count(),
        1,
        "{}",
        stderr(&third)
    );
    assert_eq!(
        stderr(&third).matches("cached, verified").count(),
        2,
        "{}",
        stderr(&third)
    );

    let list = engines(&["list", "--config", config_arg]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listed = stdout(&list);
    assert!(listed.contains("3 entries"), "{listed}");
    for role in ["detector", "coarse", "refiner"] {
        assert!(listed.contains(role), "{listed}");
    }
    assert!(listed.contains("cpu tract 0.23.9"), "{listed}");
    assert!(listed.contains("fp32"), "{listed}");
    assert!(listed.contains("batch 1..1"), "{listed}");
}

#[test]
fn run_writes_the_first_output_like_onnxruntime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.npy");
    let golden = data_dir("networks/golden");
    let output = run_model(
        &data_dir("networks/refiner-tiny.onnx"),
        &golden.join("refiner-tiny.b2.input.npy"),
        &out,
        &dir.path().join("cache"),
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let ours = read_npy(&out).expect("written npy");
    let expected = read_npy(&golden.join("refiner-tiny.b2.pose_update.npy")).expect("golden");
    assert_eq!(ours.shape, [2, 9]);
    let (NpyData::F32(a), NpyData::F32(b)) = (ours.data, expected.data) else {
        panic!("float32 outputs");
    };
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "max difference {worst}");
}

#[test]
fn bad_input_is_named() {
    let networks = data_dir("networks");
    let golden = data_dir("networks/golden");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.npy");

    // A refiner input given to the detector: the shape error names what was expected.
    let cache = dir.path().join("cache");
    let output = run_model(
        &networks.join("detector-tiny.onnx"),
        &golden.join("refiner-tiny.b1.input.npy"),
        &out,
        &cache,
        &[],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("float32 [batch, 3, height, width]"),
        "{}",
        stderr(&output)
    );
    assert!(!out.exists(), "nothing is written on error");

    // An int64 .npy as input.
    let output = run_model(
        &networks.join("refiner-tiny.onnx"),
        &golden.join("detector-tiny.b2.labels.npy"),
        &out,
        &cache,
        &[],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("detector-tiny.b2.labels.npy"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("float32"), "{}", stderr(&output));

    // check: one good, one broken network; exit status 1 and the broken one named.
    let output = engines(&[
        "check",
        networks.join("refiner-tiny.onnx").to_str().expect("utf-8"),
        networks
            .join("broken/refiner-output-9x1.onnx")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("refiner-tiny.onnx: ok"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("tensor `pose_update`"),
        "{}",
        stderr(&output)
    );

    // A configuration with a bad key, and one whose role does not match the sidecar.
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[engines]\nmax_batch = -3\n").expect("write");
    let output = engines(&["build", "--config", config.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("engines.max_batch"),
        "{}",
        stderr(&output)
    );
    std::fs::write(
        &config,
        format!(
            "[networks]\nrefiner = {:?}\n",
            networks.join("detector-tiny.onnx")
        ),
    )
    .expect("write");
    let output = engines(&["build", "--config", config.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("configured as the refiner"),
        "{}",
        stderr(&output)
    );

    // tensorrt without the feature (or without TensorRT) says so.
    let output = run_model(
        &networks.join("refiner-tiny.onnx"),
        &golden.join("refiner-tiny.b1.input.npy"),
        &out,
        &cache,
        &["--backend", "tensorrt"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("tensorrt unavailable"),
        "{}",
        stderr(&output)
    );
}

/// `posed engines profile`: every network of the configuration, each step timed on the
/// configured threads, the slowest listed; and its bad arguments named.
#[test]
fn profile_times_every_step_of_every_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let config_arg = config.to_str().expect("utf-8 path");
    let output = engines(&[
        "profile",
        "--config",
        config_arg,
        "--runs",
        "1",
        "--steps",
        "3",
        "--cpu-threads",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    // (The step counts differ between targets: tract lays some convolutions out channels
    // last on aarch64, which adds copies.)
    for (role, shape) in [
        ("detector", "[1, 3, 240, 320]"),
        ("coarse", "[1, 6, 240, 320]"),
        ("refiner", "[1, 6, 240, 320]"),
    ] {
        let header = format!("one item of {shape}, 1 runs on 2 thread(s)");
        let section = text
            .split("\n\n")
            .find(|section| section.starts_with(role))
            .unwrap_or_else(|| panic!("no {role} section in\n{text}"));
        assert!(section.contains(&header), "{section}");
        let totals = section.lines().nth(1).unwrap_or_default();
        let steps: usize = totals
            .split(" steps, ")
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no step count in {totals:?}"));
        assert!(steps >= 11 && totals.ends_with(" ms per item"), "{section}");
        let slowest = section.split("slowest steps:\n").nth(1).expect("slowest");
        assert_eq!(slowest.lines().count(), 3, "{section}");
    }

    let fails_naming = |args: &[&str], expected: &str| {
        let output = engines(args);
        let message = stderr(&output);
        assert!(
            !output.status.success() && message.contains(expected),
            "{message}"
        );
    };
    let zero_threads = ["profile", "--config", config_arg, "--cpu-threads", "0"];
    fails_naming(&zero_threads, "--cpu-threads");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "[engines]\nbackend = \"cpu\"\n").expect("write");
    let no_networks = ["profile", "--config", empty.to_str().expect("utf-8")];
    fails_naming(&no_networks, "empty.toml: [networks] names no network");
}

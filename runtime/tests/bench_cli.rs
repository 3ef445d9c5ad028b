//! `posed bench` end to end on the demo configuration: the latency report, the energy
//! figures from a sysfs tree whose meter reads a known constant power, and its errors.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{kill, posed, wait_with_stderr, Running};

/// A sysfs tree with one INA3221 channel, `VDD_IN`, at 5.000 V and 1.000 A: 5 W.
fn five_watt_sysfs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bench/testdata/five-watts")
}

/// A copy of a Jetson Orin Nano's sysfs (power rails and clocks; made-up readings).
fn orin_nano_sysfs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bench/testdata/orin-nano")
}

/// `posed bench --demo --rate-hz 0` with `args`, its socket and JSON report in `dir`,
/// its sysfs at `sysfs_root`; it must succeed. Returns its stdout and the report.
fn bench_demo(dir: &Path, sysfs_root: &Path, args: &[&str]) -> (String, serde_json::Value) {
    let (report, socket) = (dir.join("report.json"), dir.join("bench.sock"));
    let output = posed()
        .args(["bench", "--demo", "--rate-hz", "0"])
        .args(args)
        .arg("--sysfs-root")
        .arg(sysfs_root)
        .arg("--socket")
        .arg(&socket)
        .arg("--json")
        .arg(&report)
        .output()
        .expect("posed bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!socket.exists(), "the bench's socket is removed after");
    (stdout, json(&report))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("report")).expect("json")
}

fn number(value: &serde_json::Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: expected a number, found {value}"))
}

#[test]
fn the_demo_bench_reports_latency_per_stage_and_energy_per_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, report) = bench_demo(
        dir.path(),
        &five_watt_sysfs(),
        &[
            "--frames",
            "4",
            "--warmup",
            "1",
            "--idle-s",
            "0.2",
            "--sample-ms",
            "5",
        ],
    );
    for part in ["latency (ms)", "refiner", "total", "VDD_IN", "J/frame"] {
        assert!(stdout.contains(part), "expected {part:?} in:\n{stdout}");
    }
    assert_eq!(report["frames"], 4);
    assert_eq!(
        report["clocks"],
        serde_json::json!([]),
        "the tree has no clocks"
    );
    assert_eq!(report["warmup_frames"], 1);
    // Played as fast as the pipeline takes them, a sequence's frames are captured on
    // demand: none is overtaken before inference.
    assert_eq!(report["dropped_before_inference"], 0);
    assert_eq!(report["failed"], 0);
    assert!(number(&report["objects_per_frame"], "objects") > 0.0);
    let measured_s = number(&report["measured_s"], "measured_s");
    assert!(measured_s > 0.0);
    assert!(number(&report["frames_per_s"], "fps") > 0.0);

    let stages = report["latency"].as_array().expect("latency");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().expect("stage"))
        .collect();
    assert_eq!(
        names,
        [
            "capture", "queue", "detect", "init", "crop", "render", "coarse", "refiner", "update",
            "publish", "total"
        ]
    );
    for stage in stages {
        let [p50, p90, p99, max] =
            ["p50_ms", "p90_ms", "p99_ms", "max_ms"].map(|key| number(&stage[key], key));
        assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{stage}");
    }
    let p50 = |name: &str| {
        let stage = stages.iter().find(|s| s["stage"] == name).expect(name);
        number(&stage["p50_ms"], name)
    };
    // The demo runs every network: each stage took time, and the whole took longer
    // than any one of them.
    for name in ["detect", "crop", "render", "coarse", "refiner"] {
        assert!(p50(name) > 0.0, "{name}");
        assert!(p50("total") > p50(name), "{name}");
    }
    assert!(number(&report["cpu_s"], "cpu_s") > 0.0);
    assert!(number(&report["peak_resident_mib"], "rss") > 1.0);

    // The meter reads a constant 5 W: idle and running power are 5 W, and the energy of
    // the measured frames is 5 W over their time.
    let power = &report["power"];
    assert_eq!(power["whole"], "VDD_IN");
    assert_eq!(power["read_errors"], 0);
    let whole = &power["rails"][0];
    assert_eq!(whole["rail"], "whole");
    assert!(
        (number(&whole["running_w"], "running") - 5.0).abs() < 1e-9,
        "{whole}"
    );
    assert!(
        (number(&whole["idle_w"], "idle") - 5.0).abs() < 1e-9,
        "{whole}"
    );
    let per_frame = number(&whole["energy_per_frame_j"], "J/frame");
    assert!((per_frame * 4.0 - 5.0 * measured_s).abs() < 1e-6, "{whole}");
    let above_idle = number(&whole["energy_per_frame_above_idle_j"], "above idle");
    assert!(above_idle.abs() < 1e-6, "{whole}");
    assert_eq!(power["rails"][1]["rail"], "VDD_IN");
    assert_eq!(power["rails"][1]["origin"], "ina3221 hwmon1 channel 1");
}

#[test]
fn bench_without_meters_reports_no_power_and_required_power_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, report) = bench_demo(dir.path(), dir.path(), &["--frames", "1", "--warmup", "1"]);
    assert_eq!(report["frames"], 1);
    assert!(report["power"].is_null(), "{report}");
    assert!(
        report["sampler_cores"].is_null(),
        "no sampler ran: {report}"
    );

    let output = posed()
        .args(["bench", "--demo", "--frames", "1", "--power", "required"])
        .arg("--sysfs-root")
        .arg(dir.path())
        .output()
        .expect("posed bench");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.contains("no readable power meter")
            && message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn bench_refuses_bad_options_before_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 5] = [
        (&["--warmup", "0"], "--warmup"),
        (&["--idle-s=-1"], "--idle-s"),
        (&["--rate-hz=-3"], "--rate-hz"),
        (&["--frames", "0"], "--frames"),
        (
            &["--json", "/nonexistent-posed-dir/report.json"],
            "/nonexistent-posed-dir",
        ),
    ];
    for (args, named) in cases {
        let output = posed()
            .args(["bench", "--demo", "--power", "off"])
            .args(args)
            .arg("--socket")
            .arg(dir.path().join("bench.sock"))
            .output()
            .expect("posed bench");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(message.contains(named), "{args:?}: {message}");
    }
}

#[test]
fn on_an_orin_nano_the_bench_reports_its_rails_and_clocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traces = dir.path().join("traces");
    let (stdout, report) = bench_demo(
        dir.path(),
        &orin_nano_sysfs(),
        &[
            "--frames",
            "2",
            "--warmup",
            "1",
            "--idle-s",
            "0",
            "--sample-ms",
            "2",
            "--trace-dir",
            traces.to_str().expect("utf-8 temp path"),
        ],
    );
    // The traces: one row per measured frame, one per sample.
    let read = |name: &str| std::fs::read_to_string(traces.join(name)).expect(name);
    let frames = read("frames.csv");
    let mut lines = frames.lines();
    assert_eq!(
        lines.next(),
        Some(
            "frame,t_s,objects,capture_ms,queue_ms,detect_ms,init_ms,crop_ms,render_ms,\
             coarse_ms,refiner_ms,update_ms,publish_ms,total_ms"
        )
    );
    assert_eq!(lines.count(), 2, "{frames}");
    let power = read("power.csv");
    assert!(
        power.starts_with("t_s,VDD_IN_w,VDD_CPU_GPU_CV_w,VDD_SOC_w\n"),
        "{power}"
    );
    // Every interval of a constant 6.2992 W reads 6.2992 W.
    for line in power.lines().skip(1) {
        assert_eq!(line.split(',').nth(1), Some("6.2992"), "{power}");
    }
    let clocks = read("clocks.csv");
    assert!(
        clocks.starts_with(
            "t_s,cpu_policy0_cpus_0_1_2_3_mhz,cpu_policy4_cpus_4_5_mhz,devfreq_17000000_gpu_mhz\n"
        ),
        "{clocks}"
    );
    let first: Vec<f64> = clocks
        .lines()
        .nth(1)
        .expect("a sample")
        .split(',')
        .skip(1)
        .map(|field| field.parse().expect("MHz"))
        .collect();
    assert_eq!(first.len(), 3, "{clocks}");
    for (found, expected) in first.iter().zip([729.6, 1510.4, 305.25]) {
        assert!((found - expected).abs() <= 0.06, "{clocks}");
    }
    // Two samplers every 2 ms: their cost is measured, and it is some, not cores.
    let sampler_cores = number(&report["sampler_cores"], "sampler_cores");
    assert!(sampler_cores > 0.0 && sampler_cores < 2.0, "{report}");
    assert!(stdout.contains("samplers: "), "{stdout}");
    assert!(
        stdout.contains(
            "clock:   devfreq 17000000.gpu: 305 MHz on average of 625 MHz allowed, governor nvhost_podgov"
        ),
        "{stdout}"
    );
    assert!(report["power_mode"].is_null());
    let clocks = report["clocks"].as_array().expect("clocks");
    assert_eq!(clocks.len(), 3, "{report}");
    assert_eq!(clocks[0]["clock"], "cpu policy0 (cpus 0 1 2 3)");
    assert_eq!(clocks[0]["governor"], "schedutil");
    assert!((number(&clocks[0]["mean_mhz"], "mean") - 729.6).abs() < 1e-9);
    assert!((number(&clocks[0]["max_mhz"], "max") - 1510.4).abs() < 1e-9);
    // VDD_IN reads 5080 mV x 1240 mA; no idle measured.
    let whole = &report["power"]["rails"][0];
    assert!(
        (number(&whole["running_w"], "running") - 6.2992).abs() < 1e-9,
        "{whole}"
    );
    assert!(whole["idle_w"].is_null() && whole["energy_per_frame_above_idle_j"].is_null());
    assert_eq!(report["power"]["whole"], "VDD_IN");
}

/// SIGINT while frames are measured stops the bench, which reports the frames it measured
/// (and says it was stopped) and exits with success. The test reads the bench's own pose
/// stream to know that measured frames were published before it sends the signal.
#[test]
fn a_stop_signal_while_measuring_gives_a_report_of_what_was_measured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, socket) = (
        dir.path().join("report.json"),
        dir.path().join("bench.sock"),
    );
    let frames = 10_000u64;
    let mut bench = Running(
        posed()
            .args(["bench", "--demo", "--rate-hz", "0", "--warmup", "1"])
            .args([
                "--frames",
                &frames.to_string(),
                "--power",
                "off",
                "--socket",
            ])
            .arg(&socket)
            .arg("--json")
            .arg(&report)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start posed bench"),
    );
    // Loading takes seconds natively, minutes under qemu (the aarch64 run in CI).
    let until = Instant::now() + Duration::from_secs(600);
    while !socket.exists() {
        assert!(Instant::now() < until, "the bench never listened");
        assert!(
            bench.0.try_wait().expect("wait").is_none(),
            "the bench ended before listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stream = UnixStream::connect(&socket).expect("connect to the bench's stream");
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    // Frame 0 is the warm-up; with frame 3 out, frames 1 to 3 were measured.
    for line in BufReader::new(stream).lines() {
        let message: serde_json::Value =
            serde_json::from_str(&line.expect("a line")).expect("JSON");
        if message["type"] == "poses" && message["frame"].as_u64().expect("frame") >= 3 {
            break;
        }
    }
    kill(&bench.0, libc::SIGINT);
    let (status, stderr) = wait_with_stderr(&mut bench.0, Duration::from_secs(30), "SIGINT");
    let mut stdout = String::new();
    if let Some(mut pipe) = bench.0.stdout.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stdout);
    }
    assert!(status.success(), "exit status {status:?}\n{stdout}{stderr}");
    let report = json(&report);
    let measured = report["frames"].as_u64().expect("frames");
    assert!(
        (3..frames).contains(&measured),
        "{measured} frames measured"
    );
    let note = format!("stopped after {measured} of {frames} measured frames (stop signal)");
    assert!(stdout.contains(&note), "{note:?} in {stdout}");
    assert!(
        report["notes"]
            .as_array()
            .expect("notes")
            .contains(&note.into()),
        "{report}"
    );
    assert!(!socket.exists(), "the bench's socket is removed after");
}

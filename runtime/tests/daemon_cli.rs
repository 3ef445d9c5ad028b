//! `posed run --demo` end to end, as the README runs it: the daemon on the bundled data
//! with the test networks, `posed watch` and the Python client reading its stream,
//! sd_notify messages received on a real datagram socket, and SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, posed};

/// Waits for a notification that starts with `prefix`; returns every message seen.
fn wait_for_notification(socket: &UnixDatagram, prefix: &str, seen: &mut Vec<String>) {
    let until = Instant::now() + Duration::from_secs(300);
    let mut buffer = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < until,
            "no {prefix} within 300 s; got {seen:?}"
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            seen.push(message.clone());
            if message.starts_with(prefix) {
                return;
            }
        }
    }
}

fn kill(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process, whose pid we hold.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill");
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_streams_poses_to_watch_and_python_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let mut daemon = Daemon(
        posed()
            .args(["run", "--demo", "--socket"])
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start posed run --demo"),
    );
    let mut seen = Vec::new();
    wait_for_notification(&notify, "READY=1", &mut seen);
    assert!(socket.exists(), "READY=1 comes after the socket is bound");

    // posed watch, raw JSON.
    let output = posed()
        .args(["watch", "--json", "--count", "2", "--socket"])
        .arg(&socket)
        .output()
        .expect("posed watch");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "hello + 2 frames");
    assert_eq!(lines[0]["type"], "hello");
    assert_eq!(lines[0]["labels"].as_array().expect("labels").len(), 5);
    for frame in &lines[1..] {
        assert_eq!(frame["type"], "poses");
        let objects = frame["objects"].as_array().expect("objects");
        // The test detector's labels 1, 2, 3, 5 and 4 are ycbv-mini objects.
        assert_eq!(objects.len(), 5, "{frame}");
        for object in objects {
            let z = object["t_m"][2].as_f64().expect("z");
            assert!(z > 0.0 && z.is_finite(), "in front of the camera: {object}");
        }
        assert!(frame["latency_ns"]["total"].as_u64().expect("total") > 0);
    }

    // posed watch, for people.
    let output = posed()
        .args(["watch", "--count", "1", "--socket"])
        .arg(&socket)
        .output()
        .expect("posed watch");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        text.contains("connected: posed protocol 1") && text.contains("obj_000001"),
        "{text}"
    );

    // The Python example client, where there is a Python: in JSON, and in the binary
    // encoding, which it decodes from docs/pose-stream-binary.md alone.
    let script = data_dir("../tools/watch_poses.py");
    for binary in [false, true] {
        let mut command = std::process::Command::new("python3");
        command
            .arg(&script)
            .arg("--socket")
            .arg(&socket)
            .args(["--count", "2"]);
        if binary {
            command.arg("--binary");
        }
        match command.output() {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success(),
                    "{text}{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let encoding = if binary { "(binary)" } else { "(ndjson)" };
                assert!(
                    text.starts_with("hello: ")
                        && text.contains(encoding)
                        && text.contains("obj_000001 score"),
                    "{text}"
                );
            }
            Err(e) => {
                eprintln!("python3 not found ({e}): the Python client was not exercised");
                break;
            }
        }
    }

    wait_for_notification(&notify, "WATCHDOG=1", &mut seen);

    kill(&daemon.0, libc::SIGTERM);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        // One second is the promise; qemu (the aarch64 run in CI) gets more room.
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = daemon.0.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    eprintln!("stopped {} ms after SIGTERM", asked.elapsed().as_millis());
    wait_for_notification(&notify, "STOPPING=1", &mut seen);
    assert!(!socket.exists(), "the socket file is removed");
    assert!(stderr.contains("ready after"), "{stderr}");
}

#[test]
fn config_check_accepts_the_demo_and_names_bad_keys() {
    let output = posed()
        .args(["config", "check"])
        .arg(data_dir("demo.toml"))
        .output()
        .expect("posed config check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("networks.refiner") && text.contains("5 objects"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    let demo = std::fs::read_to_string(data_dir("demo.toml")).expect("demo.toml");
    std::fs::write(&bad, demo.replace("rate_hz = 5.0", "rate_hz = \"fast\"")).expect("write");
    let output = posed()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("posed config check");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.contains("bad.toml") && message.contains("source.rate_hz"),
        "{message}"
    );
}

#[test]
fn camera_info_on_a_missing_device_names_it() {
    let output = posed()
        .args(["camera", "info", "/dev/video-posed-missing"])
        .output()
        .expect("posed camera info");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(message.contains("/dev/video-posed-missing"), "{message}");
    // Without a device it lists what there is (nothing on CI) and succeeds.
    let output = posed()
        .args(["camera", "info"])
        .output()
        .expect("posed camera info");
    assert!(output.status.success());
}

#[test]
fn watch_without_a_daemon_says_so() {
    let output = posed()
        .args(["watch", "--socket", "/nonexistent/posed.sock"])
        .output()
        .expect("posed watch");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.contains("/nonexistent/posed.sock") && message.contains("is posed running"),
        "{message}"
    );
}

//! `posed run --demo` end to end, as the README runs it: the daemon on the bundled data
//! with the test networks, `posed watch` and the Python client reading its stream,
//! sd_notify messages received on a real datagram socket, and SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{data_dir, kill, posed, wait_with_stderr, Running};

/// Runs `posed ARGS... PATH`, which must fail with every part in its stderr.
fn posed_fails_on(args: &[&str], path: &Path, parts: &[&str]) {
    let output = posed_on(args, path);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{message}");
    for part in parts {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
}

/// A datagram socket in `dir` to hand posed as NOTIFY_SOCKET, reads timing out quickly.
fn notify_socket(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    (path, socket)
}

/// `posed ARGS... PATH`, run to the end.
fn posed_on(args: &[&str], path: &Path) -> std::process::Output {
    posed().args(args).arg(path).output().expect("posed runs")
}

/// `posed run --config CONFIG` with `NOTIFY_SOCKET` and `env` set, stderr piped.
fn run_notifying(config: &Path, notify_path: &Path, env: &[(&str, &str)]) -> Running {
    Running(
        posed()
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", notify_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start posed run"),
    )
}

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

#[test]
fn the_demo_streams_poses_to_watch_and_python_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let (notify_path, notify) = notify_socket(dir.path());

    let mut daemon = Running(
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
    let output = posed_on(&["watch", "--json", "--count", "2", "--socket"], &socket);
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
    let output = posed_on(&["watch", "--count", "1", "--socket"], &socket);
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
    // One second is the promise; qemu (the aarch64 run in CI) gets more room.
    let (status, stderr) = wait_with_stderr(&mut daemon.0, Duration::from_secs(10), "SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    eprintln!("stopped {} ms after SIGTERM", asked.elapsed().as_millis());
    wait_for_notification(&notify, "STOPPING=1", &mut seen);
    assert!(!socket.exists(), "the socket file is removed");
    assert!(stderr.contains("ready after"), "{stderr}");
}

/// data/demo.toml with its paths made absolute, to be written anywhere.
fn demo_with_absolute_paths() -> String {
    let data = data_dir("");
    std::fs::read_to_string(data_dir("demo.toml"))
        .expect("demo.toml")
        .replace(
            "= \"networks/",
            &format!("= \"{}/networks/", data.display()),
        )
        .replace(
            "= \"ycbv-mini/",
            &format!("= \"{}/ycbv-mini/", data.display()),
        )
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
    posed_fails_on(&["config", "check"], &bad, &["bad.toml", "source.rate_hz"]);

    // A refiner trained for 2 of the 5 objects: a warning that names the others.
    let refiner = dir.path().join("refiner-partial.onnx");
    std::fs::copy(data_dir("networks/refiner-tiny.onnx"), &refiner).expect("copy");
    std::fs::write(
        dir.path().join("refiner-partial.toml"),
        "format = 1\nrole = \"refiner\"\nlabels = [\"obj_000001\", \"obj_000002\"]\n",
    )
    .expect("sidecar");
    let partial = dir.path().join("partial.toml");
    let text: String = demo_with_absolute_paths()
        .lines()
        .map(|line| match line.starts_with("refiner = ") {
            true => format!("refiner = {refiner:?}\n"),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&partial, text).expect("write");
    let output = posed_on(&["config", "check"], &partial);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: networks.refiner")
            && stdout.contains("not for object(s) 3, 4, 5"),
        "{stdout}"
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

/// The `[service]` section of [`quick_config`] unless a test needs another.
const QUIET_SERVICE: &str = "status_interval_ms = 60000";

/// A configuration of the daemon that loads no network (objects are the scenes' annotated
/// boxes, no iterations), its source at `rate_hz`, with `service` as its `[service]`
/// section: it starts in a fraction of a second.
fn quick_config(dir: &Path, rate_hz: f64, service: &str) -> PathBuf {
    let data = data_dir("ycbv-mini");
    let path = dir.join("quick.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nkind = \"sequence\"\npath = \"{}\"\nrate_hz = {rate_hz:?}\n\n\
             [pipeline]\nmodels = \"{}\"\nobjects = \"dataset-boxes\"\n\
             coarse_iterations = 0\nrefiner_iterations = 0\n\n\
             [engines]\ncache_dir = \"{}\"\n\n\
             [stream]\nsocket = \"{}\"\n\n[service]\n{service}\n",
            data.join("test").display(),
            data.join("models").display(),
            dir.join("cache").display(),
            dir.join("poses.sock").display(),
        ),
    )
    .expect("write the configuration");
    path
}

#[test]
fn sighup_stops_the_daemon_cleanly_and_a_log_into_a_pipe_has_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = quick_config(dir.path(), 20.0, "status_interval_ms = 100");
    let socket = dir.path().join("poses.sock");
    let (notify_path, notify) = notify_socket(dir.path());
    let mut daemon = run_notifying(&config, &notify_path, &[("RUST_LOG", "info")]);
    let mut seen = Vec::new();
    wait_for_notification(&notify, "READY=1", &mut seen);
    assert!(
        dir.path().join("poses.sock.lock").exists(),
        "the lock is held"
    );
    // The status line: frame rate, drops, subscribers, and memory (an 8 GB Orin Nano
    // shares it with the GPU).
    wait_for_notification(&notify, "STATUS=", &mut seen);
    let status = seen.last().expect("a status");
    for part in [
        " fps, ",
        " frames, dropped ",
        " subscriber(s), ",
        " MiB resident at peak",
    ] {
        assert!(status.contains(part), "{part:?} in {status}");
    }

    kill(&daemon.0, libc::SIGHUP);
    let (status, stderr) = wait_with_stderr(&mut daemon.0, Duration::from_secs(10), "SIGHUP");
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(stderr.contains("stopped on SIGHUP"), "{stderr}");
    assert!(stderr.contains("MiB resident at peak"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    wait_for_notification(&notify, "STOPPING=1", &mut seen);
    assert!(!socket.exists(), "the socket file is removed");
    assert!(!dir.path().join("poses.sock.lock").exists());
}

/// `idle_without_subscribers`: paused for want of subscribers, posed says so in its status
/// and still pings the watchdog (a pause is not a hang: systemd must not restart it).
#[test]
fn a_daemon_paused_for_want_of_subscribers_keeps_the_watchdog_fed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = quick_config(
        dir.path(),
        20.0,
        "status_interval_ms = 100\nidle_without_subscribers = true",
    );
    let (notify_path, notify) = notify_socket(dir.path());
    let mut daemon = run_notifying(&config, &notify_path, &[("WATCHDOG_USEC", "200000")]);
    let mut seen = Vec::new();
    wait_for_notification(&notify, "READY=1", &mut seen);
    let until = Instant::now() + Duration::from_secs(60);
    while !seen
        .last()
        .is_some_and(|s| s.contains("paused: no subscriber"))
    {
        assert!(Instant::now() < until, "never paused: {seen:?}");
        wait_for_notification(&notify, "STATUS=", &mut seen);
    }
    // Two pings after the pause began: it goes on.
    for _ in 0..2 {
        wait_for_notification(&notify, "WATCHDOG=1", &mut seen);
    }
    kill(&daemon.0, libc::SIGTERM);
    let (status, stderr) = wait_with_stderr(&mut daemon.0, Duration::from_secs(10), "SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(stderr.contains("capture and inference paused"), "{stderr}");
}

#[test]
fn run_refuses_at_once_a_live_socket_whose_listener_accepts_nobody() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = quick_config(dir.path(), 20.0, QUIET_SERVICE);
    let socket = dir.path().join("poses.sock");
    // A listener whose queue holds one connection, filled: a server that has stopped
    // accepting (a hung posed).
    let listener = UnixListener::bind(&socket).expect("bind");
    // SAFETY: listen on the listener's own open socket (a second listen sets the queue).
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let _queued = UnixStream::connect(&socket).expect("the queued connection");

    let started = Instant::now();
    let mut daemon = Running(
        posed()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start posed run"),
    );
    let (status, stderr) = wait_with_stderr(&mut daemon.0, Duration::from_secs(60), "start");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("accepts nobody") && stderr.contains("poses.sock"),
        "{stderr}"
    );
    eprintln!("refused after {} ms", started.elapsed().as_millis());
    assert!(socket.exists(), "the live socket is left alone");
    drop(listener);
}

#[test]
fn config_check_catches_what_run_would_refuse_and_both_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = demo_with_absolute_paths();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"not a folder").expect("write");
    let socket_line = "socket = \"/tmp/posed-demo.sock\"";
    let cases = [
        (
            demo.replace(
                socket_line,
                "socket = \"/tmp/posed-g.sock\"\ngroup = \"posed-no-such-group\"",
            ),
            "stream.group",
        ),
        (
            demo.replace(
                socket_line,
                "socket = \"/tmp/posed-g.sock\"\ngroup = \"a\\u0000b\"",
            ),
            "stream.group",
        ),
        (
            demo.replace(
                socket_line,
                &format!("socket = \"/tmp/{}.sock\"", "y".repeat(120)),
            ),
            "stream.socket",
        ),
        (
            demo.replace(socket_line, "socket = \"/nonexistent-posed/dir/p.sock\""),
            "stream.socket",
        ),
        (
            demo.replace("ycbv-mini/test\"", "ycbv-mini/nowhere\""),
            "source.path",
        ),
        (
            demo.replace(
                "init = \"zup-autodepth\"",
                "init = \"zup-autodepth\"\nlabels = [1, 99]",
            ),
            "pipeline.labels[1]",
        ),
        (
            demo.replace(
                "max_batch = 8",
                &format!("max_batch = 8\ncache_dir = \"{}\"", a_file.display()),
            ),
            "engines.cache_dir",
        ),
        (
            demo.replace(
                "max_batch = 8",
                &format!("max_batch = 8\ncache_dir = \"{}/sub\"", a_file.display()),
            ),
            "engines.cache_dir",
        ),
        (
            demo.replace(
                "init = \"zup-autodepth\"",
                "init = \"zup-autodepth\"\nrender_threads = 100000",
            ),
            "pipeline.render_threads",
        ),
        (
            demo.replace("refiner_iterations = 2", "refiner_iterations = 1000000000"),
            "pipeline.refiner_iterations",
        ),
        (
            demo.replace("warmup_frames = 1", "warmup_frames = 1000000000"),
            "service.warmup_frames",
        ),
        (
            demo.replace("max_batch = 8", "max_batch = 8\nmax_image = [480, 640, 3]"),
            "engines.max_image",
        ),
    ];
    let bad = dir.path().join("bad.toml");
    for (text, key) in cases {
        assert_ne!(text, demo, "the case for {key} changed nothing");
        std::fs::write(&bad, &text).expect("write");
        for command in [&["config", "check"][..], &["run", "--config"][..]] {
            let output = posed()
                .args(command)
                .arg(&bad)
                .env("XDG_CACHE_HOME", dir.path().join("cache"))
                .stdout(Stdio::null())
                .output()
                .expect("posed");
            let message = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command:?} passed:\n{text}");
            assert!(
                message.contains(&format!("bad.toml: {key}")),
                "{command:?}: expected the key {key}:\n{message}"
            );
        }
    }
}

#[test]
fn config_check_notes_a_runtime_directory_systemd_has_not_made_yet() {
    let run_folder = Path::new("/run/posed-test-never-made");
    if !Path::new("/run").is_dir() || run_folder.exists() {
        eprintln!("no /run here, or {} exists: skipped", run_folder.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = std::fs::read_to_string(quick_config(dir.path(), 20.0, QUIET_SERVICE))
        .expect("read")
        .replace(
            &dir.path().join("poses.sock").display().to_string(),
            &run_folder.join("poses.sock").display().to_string(),
        );
    let path = dir.path().join("runtime.toml");
    std::fs::write(&path, config).expect("write");
    let output = posed_on(&["config", "check"], &path);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("note: stream.socket: /run/posed-test-never-made does not exist yet"),
        "{text}"
    );
    // `posed run` needs it now.
    posed_fails_on(
        &["run", "--config"],
        &path,
        &["runtime.toml: stream.socket", "does not exist"],
    );
}

#[test]
fn watch_gives_up_on_a_server_that_sends_no_hello() {
    use std::os::unix::net::UnixListener;

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Accepts, then says nothing, for longer than the test waits.
    let server = std::thread::spawn(move || {
        let accepted = listener.accept();
        std::thread::sleep(Duration::from_secs(60));
        drop(accepted);
    });
    let started = Instant::now();
    posed_fails_on(
        &["watch", "--socket"],
        &socket,
        &["silent.sock", "no hello within"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
    drop(server);
}

/// `posed watch --follow` and the Python client's `--follow` keep a subscriber across a
/// restart of posed (what systemd does after a crash): both see the first posed's frames,
/// then the second's, and end at their count with success.
#[test]
fn follow_keeps_watching_across_a_restart_of_posed() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = quick_config(dir.path(), 1.0, QUIET_SERVICE);
    let socket = dir.path().join("poses.sock");
    let start_posed = || {
        let daemon = Running(
            posed()
                .args(["run", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start posed run"),
        );
        let until = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            assert!(Instant::now() < until, "posed never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    };
    let mut first = start_posed();

    // Each watcher's stdout lines go to `lines`, tagged with the watcher's index.
    let (line_tx, lines) = mpsc::channel::<(usize, String)>();
    let mut watchers = Vec::new();
    let count = "5";
    let mut command = posed();
    command.args(["watch", "--follow", "--json", "--count", count, "--socket"]);
    watchers.push(("posed watch", command));
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok()
    {
        let mut command = std::process::Command::new("python3");
        command
            .arg(data_dir("../tools/watch_poses.py"))
            .args(["--follow", "--count", count, "--socket"]);
        watchers.push(("watch_poses.py", command));
    } else {
        eprintln!("python3 not found: the Python client was not exercised");
    }
    let mut running = Vec::new();
    for (index, (name, command)) in watchers.iter_mut().enumerate() {
        let mut child = Running(
            command
                .arg(&socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a watcher"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let tx = line_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((index, line));
            }
        });
        running.push((*name, child));
    }
    let is_frame = |line: &str| line.contains("\"type\":\"poses\"") || line.starts_with("frame ");
    let is_hello = |line: &str| line.contains("\"type\":\"hello\"") || line.starts_with("hello: ");
    drop(line_tx);
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); running.len()];
    while !seen.iter().all(|s| s.iter().any(|l| is_frame(l))) {
        let (index, line) = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no frame of the first posed; seen {seen:?}"));
        seen[index].push(line);
    }

    kill(&first.0, libc::SIGTERM);
    let (status, _) = wait_with_stderr(&mut first.0, Duration::from_secs(10), "SIGTERM");
    assert!(status.success());
    let _second = start_posed();
    for (name, mut child) in running {
        let (status, stderr) =
            wait_with_stderr(&mut child.0, Duration::from_secs(120), "the restart");
        assert!(status.success(), "{name}: {status:?}\n{stderr}");
        assert!(
            stderr.contains("posed closed the stream"),
            "{name}: {stderr}"
        );
    }
    // The readers end with the watchers' stdout.
    while let Ok((index, line)) = lines.recv_timeout(Duration::from_secs(10)) {
        seen[index].push(line);
    }
    for (index, (name, _)) in watchers.iter().enumerate() {
        let lines = &seen[index];
        assert_eq!(
            lines.iter().filter(|l| is_hello(l)).count(),
            2,
            "{name}: {lines:?}"
        );
        assert_eq!(
            lines.iter().filter(|l| is_frame(l)).count(),
            5,
            "{name}: {lines:?}"
        );
    }
}

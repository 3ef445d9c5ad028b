//! The daemon in-process, with real sockets: 16 subscribers of which one never reads, a
//! camera that goes away and comes back, and a sequence that ends. The pose network is
//! [`ConstantPoseNetwork`] (the pipeline and stream are what is tested here; the networks
//! have their own tests), objects are the scenes' annotated boxes.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posed::bop::models::ModelSet;
use posed::config::{ServiceConfig, SourceConfig, SourceKind, StreamConfig};
use posed::daemon::message::PoseFrame;
use posed::daemon::notify::Notifier;
use posed::daemon::stream::StreamStats;
use posed::daemon::{run, DaemonOptions, DaemonParts, FrameObserver, ObjectsProvider, RunReport};
use posed::pipeline::{
    ConstantPoseNetwork, DetectionFilter, InitScheme, PipelineOptions, PoseNetworks,
    SingleViewPipeline,
};
use posed::source::sequence::{bop_boxes, SequenceSource};
use posed::source::{Captured, Frame, FrameSource, SourceInfo};
use posed::{Error, Result};
use posed_engines::{Contract, EngineError, ModelOptions, Outputs, Session};

fn ycbv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini")
}

fn sequence_config(rate_hz: f64, looping: bool) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::Sequence,
        path: Some(ycbv().join("test")),
        rate_hz,
        looping,
        ..SourceConfig::default()
    }
}

fn parts(source: Box<dyn FrameSource>) -> DaemonParts {
    let models = ModelSet::load(&ycbv().join("models")).expect("models");
    let networks = PoseNetworks {
        coarse: None,
        refiner: Some(Box::new(ConstantPoseNetwork::identity(8))),
    };
    DaemonParts {
        source,
        objects: ObjectsProvider::DatasetBoxes(bop_boxes(&ycbv().join("test")).expect("boxes")),
        filter: DetectionFilter::default(),
        init: InitScheme::ZupAutodepth,
        pipeline: SingleViewPipeline::new(&models, networks, pipeline_options()).expect("pipeline"),
        obj_ids: models.objects.keys().copied().collect(),
    }
}

fn pipeline_options() -> PipelineOptions {
    PipelineOptions {
        coarse_iterations: 0,
        refiner_iterations: 1,
        batch_size: 8,
        render_threads: 2,
        ..PipelineOptions::default()
    }
}

fn options(socket: &Path, max_frames: Option<u64>) -> DaemonOptions {
    DaemonOptions {
        stream: StreamConfig {
            socket: socket.to_owned(),
            queue_frames: 4,
            stall_timeout_ms: 500,
            ..StreamConfig::default()
        },
        service: ServiceConfig {
            warmup_frames: 1,
            status_interval_ms: 60_000,
            idle_without_subscribers: false,
        },
        reopen_min: Duration::from_millis(10),
        reopen_max: Duration::from_millis(40),
        max_frames,
    }
}

fn wait_for_socket(socket: &Path) {
    let until = Instant::now() + Duration::from_secs(30);
    // Waits for the file rather than connecting, which would count as a subscriber.
    while !socket.exists() {
        assert!(
            Instant::now() < until,
            "the daemon never listened on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the daemon on a thread; returns its handle and shutdown flag.
fn start(
    parts: DaemonParts,
    options: DaemonOptions,
    observer: Option<FrameObserver>,
) -> (std::thread::JoinHandle<Result<RunReport>>, Arc<AtomicBool>) {
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let socket = options.stream.socket.clone();
    let handle =
        std::thread::spawn(move || run(parts, options, flag, Notifier::disabled(), observer));
    wait_for_socket(&socket);
    (handle, shutdown)
}

#[test]
fn sixteen_subscribers_one_never_reading_none_delays_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let source = SequenceSource::open(&sequence_config(0.0, true)).expect("sequence");
    // The publish thread records when the silent subscriber was dropped and how many
    // frames had gone out then.
    let published_at_kick = Arc::new(AtomicU64::new(u64::MAX));
    let published = Arc::new(AtomicU64::new(0));
    let observer: FrameObserver = {
        let published_at_kick = Arc::clone(&published_at_kick);
        let published = Arc::clone(&published);
        Box::new(move |_: &PoseFrame, stats: &StreamStats| {
            let n = published.fetch_add(1, Ordering::Relaxed) + 1;
            if stats.kicked_stalled.load(Ordering::Relaxed) > 0 {
                let _ = published_at_kick.compare_exchange(
                    u64::MAX,
                    n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        })
    };
    let (daemon, shutdown) = start(
        parts(Box::new(source)),
        options(&socket, None),
        Some(observer),
    );

    // The one that never reads: connected first, so that it is in every fan-out.
    let silent = UnixStream::connect(&socket).expect("connect");
    let frames_seen: Arc<Vec<AtomicU64>> = Arc::new((0..15).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = (0..15)
        .map(|i| {
            let stream = UnixStream::connect(&socket).expect("connect");
            let frames_seen = Arc::clone(&frames_seen);
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stream).lines();
                let hello: serde_json::Value =
                    serde_json::from_str(&lines.next().expect("hello").expect("hello"))
                        .expect("json");
                assert_eq!(hello["type"], "hello");
                assert_eq!(hello["camera"]["width"], 640);
                let mut last_frame = None;
                for line in lines {
                    let Ok(line) = line else { break };
                    let message: serde_json::Value = serde_json::from_str(&line).expect("json");
                    assert_eq!(message["type"], "poses", "{line}");
                    let frame = message["frame"].as_u64().expect("frame");
                    if let Some(last) = last_frame {
                        assert!(frame > last, "frames in order: {last} then {frame}");
                    }
                    last_frame = Some(frame);
                    assert!(!message["objects"].as_array().expect("objects").is_empty());
                    frames_seen[i].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Run until the silent subscriber was dropped for stalling and every reader got 20
    // frames published after that.
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let kick = published_at_kick.load(Ordering::Relaxed);
        let least = frames_seen
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if kick != u64::MAX && least > kick + 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "after 300 s: silent subscriber dropped at frame {kick}, readers saw {least} frames"
        );
    }
    shutdown.store(true, Ordering::Relaxed);
    let report = daemon.join().expect("daemon thread").expect("run");
    for reader in readers {
        reader.join().expect("reader");
    }
    assert_eq!(report.subscribers, 16);
    assert_eq!(report.subscribers_stalled, 1, "{report:?}");
    assert_eq!(report.subscribers_garbage, 0);
    assert!(!socket.exists(), "the socket file is removed at shutdown");
    // What the silent subscriber was sent: the hello, some frames, then the end.
    let mut received = String::new();
    BufReader::new(silent)
        .read_to_string(&mut received)
        .expect("read what was sent");
    assert!(received.starts_with("{\"type\":\"hello\""));
}

/// A camera that delivers `good` frames, then fails; its reopen fails `refusals` times.
struct FlakyCamera {
    inner: SequenceSource,
    good: u32,
    refusals: u32,
    delivered: u32,
    lost: bool,
}

impl FrameSource for FlakyCamera {
    fn info(&self) -> &SourceInfo {
        self.inner.info()
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<Captured> {
        if self.delivered == self.good && !self.lost {
            self.lost = true;
            return Err(Error::Camera {
                device: PathBuf::from("/dev/video7"),
                detail: "VIDIOC_DQBUF: No such device (unplugged)".to_owned(),
            });
        }
        self.delivered += 1;
        self.inner.capture(frame)
    }

    fn reopen(&mut self) -> Result<()> {
        if self.refusals > 0 {
            self.refusals -= 1;
            return Err(Error::Camera {
                device: PathBuf::from("/dev/video7"),
                detail: "no such device".to_owned(),
            });
        }
        Ok(())
    }
}

#[test]
fn a_lost_camera_is_reopened_and_the_daemon_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let camera = FlakyCamera {
        inner: SequenceSource::open(&sequence_config(0.0, true)).expect("sequence"),
        good: 3,
        refusals: 2,
        delivered: 0,
        lost: false,
    };
    let (daemon, _shutdown) = start(parts(Box::new(camera)), options(&socket, Some(8)), None);
    let report = daemon.join().expect("daemon thread").expect("run");
    assert_eq!(report.camera_lost, 1, "{report:?}");
    assert_eq!(report.published, 8, "{report:?}");
}

#[test]
fn a_sequence_that_ends_ends_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let source = SequenceSource::open(&sequence_config(0.0, false)).expect("sequence");
    let (daemon, _shutdown) = start(parts(Box::new(source)), options(&socket, None), None);
    let report = daemon.join().expect("daemon thread").expect("run");
    assert!(report.source_ended, "{report:?}");
    assert_eq!(report.captured, 16);
    assert_eq!(
        report.published + report.dropped + report.failed,
        16,
        "{report:?}"
    );
    assert!(!socket.exists());
}

#[test]
fn a_bad_socket_path_fails_before_any_work() {
    let source = SequenceSource::open(&sequence_config(0.0, false)).expect("sequence");
    let options = options(Path::new("/nonexistent-posed-dir/poses.sock"), None);
    let message = run(
        parts(Box::new(source)),
        options,
        Arc::new(AtomicBool::new(false)),
        Notifier::disabled(),
        None,
    )
    .expect_err("no folder")
    .to_string();
    assert!(message.contains("/nonexistent-posed-dir"), "{message}");
}

/// A camera at 20 Hz as V4L2 behaves when nobody dequeues for a while: the driver fills
/// its buffers with the frames that follow, then drops the rest; the next dequeues return
/// those old frames first.
struct QueueingCamera {
    inner: SequenceSource,
    last_capture_ns: u64,
    /// Old frames still to hand out, and when each was taken.
    queued: Vec<u64>,
}

impl FrameSource for QueueingCamera {
    fn info(&self) -> &SourceInfo {
        self.inner.info()
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<Captured> {
        let now = posed::source::monotonic_ns();
        // Longer than any capture takes, even under qemu; shorter than a pause (1 s).
        if self.last_capture_ns > 0 && now - self.last_capture_ns > 900_000_000 {
            // Four buffers filled 50, 100, 150 and 200 ms after the last dequeue.
            self.queued = (1..=4)
                .rev()
                .map(|i| self.last_capture_ns + i * 50_000_000)
                .collect();
        }
        let captured = self.inner.capture(frame)?;
        if let Some(t_ns) = self.queued.pop() {
            frame.t_capture_ns = t_ns;
        }
        self.last_capture_ns = now;
        Ok(captured)
    }

    fn reopen(&mut self) -> Result<()> {
        Ok(())
    }
}

/// With `idle_without_subscribers`, once ready the daemon captures and infers nothing
/// while no one is connected, and resumes for a subscriber with frames captured after it
/// connected: those a camera queued meanwhile are dropped as stale.
#[test]
fn without_subscribers_the_daemon_pauses_and_resumes_with_fresh_frames() {
    for paced in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("poses.sock");
        let source: Box<dyn FrameSource> = if paced {
            Box::new(QueueingCamera {
                inner: SequenceSource::open(&sequence_config(20.0, true)).expect("sequence"),
                last_capture_ns: 0,
                queued: Vec::new(),
            })
        } else {
            Box::new(SequenceSource::open(&sequence_config(0.0, true)).expect("sequence"))
        };
        let mut options = options(&socket, None);
        options.service.idle_without_subscribers = true;
        // (publish time, capture time) of every frame published.
        let published = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
        let observer: FrameObserver = {
            let published = Arc::clone(&published);
            Box::new(move |frame: &PoseFrame, _: &StreamStats| {
                let mut published = published.lock().expect("lock");
                published.push((frame.t_publish_ns, frame.t_capture_ns));
            })
        };
        let (daemon, shutdown) = start(parts(source), options, Some(observer));
        let count = || published.lock().expect("lock").len();

        // Paused: no frame goes out for a whole second. Frames already past the capture
        // thread when it paused (at most one per pool place downstream) may go out
        // first; under qemu they take a while.
        let wait_paused = |what: &str| {
            let until = Instant::now() + Duration::from_secs(120);
            let (mut last, mut since) = (0, Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let now = count();
                if now != last || now == 0 {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= Duration::from_secs(1) {
                    return last;
                }
                assert!(
                    Instant::now() < until,
                    "paced {paced}, {what}: never paused"
                );
            }
        };
        // The warm-up frame, then nothing while nobody listens.
        let before = wait_paused("at start");
        assert!(
            before <= 4,
            "paced {paced}: {before} frames before the pause"
        );

        for round in 0..2 {
            let connected_ns = posed::source::monotonic_ns();
            let subscriber = UnixStream::connect(&socket).expect("subscribe");
            let mut lines = BufReader::new(subscriber).lines();
            for _ in 0..3 {
                lines.next().expect("a line").expect("read");
            }
            drop(lines);
            // The observer runs after the frame was queued for the subscriber.
            let fresh_count = || {
                let frames = published.lock().expect("lock");
                frames.iter().filter(|(t, _)| *t > connected_ns).count()
            };
            let until = Instant::now() + Duration::from_secs(60);
            while fresh_count() < 2 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            let frames = published.lock().expect("lock").clone();
            let fresh: Vec<_> = frames.iter().filter(|(t, _)| *t > connected_ns).collect();
            assert!(fresh.len() >= 2, "paced {paced}, round {round}: {frames:?}");
            for (_, t_capture_ns) in fresh {
                assert!(
                    *t_capture_ns >= connected_ns,
                    "paced {paced}, round {round}: a frame captured before the subscriber \
                     connected went out"
                );
            }
            // The subscriber's writer ends within 50 ms of the hang-up; then the pause.
            wait_paused("after a subscriber left");
        }
        shutdown.store(true, Ordering::Relaxed);
        let report = daemon.join().expect("daemon thread").expect("run");
        assert_eq!(report.idle_periods, 3, "paced {paced}: {report:?}");
        if paced {
            // Each resumption met the camera's four queued frames.
            assert_eq!(report.stale_dropped, 8, "{report:?}");
        } else {
            assert_eq!(report.stale_dropped, 0, "{report:?}");
        }
    }
}

/// A source that delivers `good` frames, then panics: a bug in a source.
struct PanickingSource {
    inner: SequenceSource,
    good: u32,
}

impl FrameSource for PanickingSource {
    fn info(&self) -> &SourceInfo {
        self.inner.info()
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<Captured> {
        assert!(self.good > 0, "the source's test bug");
        self.good -= 1;
        self.inner.capture(frame)
    }

    fn reopen(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A refiner that answers the identity `good` times, then panics: a bug in a backend.
struct PanickingNetwork {
    inner: ConstantPoseNetwork,
    good: u32,
}

impl Session for PanickingNetwork {
    fn contract(&self) -> Contract {
        self.inner.contract()
    }

    fn options(&self) -> ModelOptions {
        self.inner.options()
    }

    fn max_detections(&self) -> usize {
        self.inner.max_detections()
    }

    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> std::result::Result<(), EngineError> {
        assert!(self.good > 0, "the network's test bug");
        self.good -= 1;
        self.inner.run(input, shape, outputs)
    }
}

/// A panic in the capture or the inference thread ends the run with an error naming the
/// thread and the panic (so `posed run` exits with a failure, which systemd restarts), not
/// with the success of a source that ended; the socket file is removed all the same.
#[test]
fn a_panic_in_a_pipeline_thread_ends_the_run_with_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let source = || SequenceSource::open(&sequence_config(0.0, true)).expect("sequence");

    let capture_panics = parts(Box::new(PanickingSource {
        inner: source(),
        good: 3,
    }));
    let mut infer_panics = parts(Box::new(source()));
    let models = ModelSet::load(&ycbv().join("models")).expect("models");
    let networks = PoseNetworks {
        coarse: None,
        refiner: Some(Box::new(PanickingNetwork {
            inner: ConstantPoseNetwork::identity(8),
            good: 2,
        })),
    };
    infer_panics.pipeline =
        SingleViewPipeline::new(&models, networks, pipeline_options()).expect("pipeline");

    for (parts, thread, bug) in [
        (capture_panics, "posed-capture", "the source's test bug"),
        (infer_panics, "posed-infer", "the network's test bug"),
    ] {
        let (daemon, _shutdown) = start(parts, options(&socket, None), None);
        let message = daemon
            .join()
            .expect("the daemon's own thread does not panic")
            .expect_err("a panicked thread is an error")
            .to_string();
        for part in [thread, "panicked", bug] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert!(!socket.exists(), "{thread}: the socket file is left");
    }
}

/// The demo's first frames with `pipeline.device` "cpu" and "cuda": the same objects and
/// poses. Where a GPU is present the "cuda" parts crop, render and update there, on frames
/// the source put in host memory mapped into the GPU (read in place on a Jetson);
/// elsewhere they fall back to the CPU with a warning, which is what this checks on a
/// machine without one: the configuration must still work. The frames go through the
/// daemon's parts one by one, as its inference thread takes them, so that both runs see
/// the same frames (the daemon's threads drop frames as they please).
#[test]
fn the_demo_on_cuda_gives_the_poses_it_gives_on_the_cpu() {
    use posed::config::Config;
    use posed::daemon::setup::parts_from_config;
    use posed::pipeline::ComputeDevice;

    type Poses = Vec<Vec<(u32, [f64; 9], [f64; 3])>>;
    let demo_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/demo.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let run_demo = |device: ComputeDevice| -> (Poses, bool, bool) {
        let mut demo = Config::load(&demo_path).expect("data/demo.toml");
        demo.source.rate_hz = 0.0;
        demo.pipeline.device = device;
        demo.engines.cache_dir = Some(dir.path().join("cache"));
        let (mut parts, _) = parts_from_config(&demo).expect("the demo's parts");
        let on_cuda = parts.pipeline.on_cuda();
        let mut frame = parts.source.allocate_frame().expect("a frame");
        let mapped = frame.rgb.mapped_memory().is_some();
        let ObjectsProvider::Detector(detector) = &mut parts.objects else {
            panic!("the demo's objects come from its detector");
        };
        let mut poses = Poses::new();
        let mut estimates = Vec::new();
        // Two frames: under qemu-aarch64 (CI) each costs seconds.
        for _ in 0..2 {
            assert_eq!(
                parts.source.capture(&mut frame).expect("capture"),
                Captured::Frame
            );
            let view = frame.view();
            estimates.clear();
            detector.detect(&view, &mut estimates).expect("detect");
            parts.filter.apply(&mut estimates);
            let pipeline = &mut parts.pipeline;
            estimates.retain(|o| pipeline.has_object(o.obj_id));
            pipeline
                .init_from_boxes(&frame.intrinsics, parts.init, &mut estimates)
                .expect("initial poses");
            pipeline
                .run(&view, &mut estimates, &mut |_, _| {})
                .expect("the loop");
            poses.push(
                estimates
                    .iter()
                    .filter(|e| e.valid)
                    .map(|e| {
                        let pose = &e.camera_from_object;
                        let r = pose.rotation;
                        let rotation: [f64; 9] = std::array::from_fn(|i| r[(i / 3, i % 3)]);
                        let t = pose.translation_m;
                        (e.obj_id, rotation, [t[0], t[1], t[2]])
                    })
                    .collect(),
            );
        }
        (poses, on_cuda, mapped)
    };
    let (cpu, _, cpu_mapped) = run_demo(ComputeDevice::Cpu);
    assert!(!cpu_mapped, "frames of a CPU daemon are on the heap");
    let (cuda, on_cuda, cuda_mapped) = run_demo(ComputeDevice::Cuda);
    assert_eq!(
        on_cuda, cuda_mapped,
        "frames are mapped exactly when the loop is on a GPU"
    );
    eprintln!(
        "pipeline.device = \"cuda\": {}",
        if on_cuda {
            "ran on the GPU, frames in mapped host memory"
        } else {
            "no usable CUDA device here, ran on the CPU"
        }
    );
    let mut largest = 0.0f64;
    let mut compared = 0;
    for (number, (on_gpu, on_cpu)) in cuda.iter().zip(&cpu).enumerate() {
        assert_eq!(on_gpu.len(), on_cpu.len(), "frame {number}: objects");
        for ((id_g, r_g, t_g), (id_c, r_c, t_c)) in on_gpu.iter().zip(on_cpu) {
            assert_eq!(id_g, id_c, "frame {number}");
            for (g, c) in r_g.iter().chain(t_g).zip(r_c.iter().chain(t_c)) {
                largest = largest.max((g - c).abs());
            }
            compared += 1;
        }
    }
    eprintln!("{compared} object poses compared, largest difference {largest:e}");
    assert!(compared > 0, "the demo found no objects");
    assert!(largest <= 1e-4, "poses differ by {largest:e}");
}

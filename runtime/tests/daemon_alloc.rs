//! The daemon's steady state allocates nothing: the whole daemon (capture thread on the
//! image-sequence source, inference thread, publish thread with two subscribers reading
//! the stream, one of them binary, the other with its sending side shut down) runs under a
//! counting global allocator, and the allocations of every thread over the frames after a
//! warm-up are counted. Two daemons, one after the other (the count is global, so they
//! share one test):
//!
//! - the demo itself (`data/demo.toml`): detector, coarse and refiner test networks on the
//!   CPU backend's planned executor, objects from the detector;
//! - the scenes' annotated boxes as objects and [`ConstantPoseNetwork`] as the refiner,
//!   more frames.
//!
//! Before them, MJPEG decoding (what the capture thread does with a UVC camera's frames,
//! which this test cannot have): camera-like JPEGs that libjpeg-turbo encoded, decoded
//! by the decoder the V4L2 source uses.
//!
//! Before them, a thread's first waits on the daemon's hand-offs: a thread can wait for
//! the first time in any frame (when the scheduler stops a sender mid-hand-off), so the
//! frames above cannot show it every time.
//!
//! The daemons run as under systemd, with what runs once a second there running at every
//! frame here: a status line (STATUS= and the log), watchdog pings to a real
//! `NOTIFY_SOCKET`, and a `tracing` subscriber formatting every log line as `posed run`'s
//! does (into a sink rather than stderr).

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posed::bop::models::ModelSet;
use posed::config::{Config, ServiceConfig, SourceConfig, SourceKind, StreamConfig};
use posed::daemon::handoff;
use posed::daemon::message::PoseFrame;
use posed::daemon::notify::Notifier;
use posed::daemon::setup::parts_from_config;
use posed::daemon::stream::StreamStats;
use posed::daemon::{run, DaemonOptions, DaemonParts, FrameObserver, ObjectsProvider};
use posed::pipeline::{
    ConstantPoseNetwork, DetectionFilter, InitScheme, PipelineOptions, PoseNetworks,
    SingleViewPipeline,
};
use posed::source::jpeg::MjpegDecoder;
use posed::source::sequence::{bop_boxes, SequenceSource};
use posed_kernels::alloc_count::{self, allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WARMUP: u64 = 10;

// A binary of its own without libtest (Cargo.toml: `harness = false`), see
// `run_test_without_harness`.
fn main() {
    alloc_count::run_test_without_harness(
        "steady_state_frames_allocate_nothing",
        steady_state_frames_allocate_nothing,
    );
}

fn steady_state_frames_allocate_nothing() {
    let mjpeg = mjpeg_frame_allocations();
    assert_eq!(
        mjpeg, 0,
        "MJPEG: {mjpeg} allocations over 12 decoded frames"
    );
    let first_waits = first_waits_of_a_thread();
    let service_dir = tempfile::tempdir().expect("tempdir");
    let service_manager = service_manager(service_dir.path());
    assert_eq!(
        first_waits, 0,
        "a thread's first waits on a hand-off: {first_waits} allocations"
    );

    // The demo: 4 frames of warm-up, then 6 counted on images it has not seen yet.
    let demo_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/demo.toml");
    let mut demo = Config::load(&demo_path).expect("data/demo.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    demo.source.rate_hz = 0.0;
    demo.engines.cache_dir = Some(dir.path().join("cache"));
    // The CPU backend's worker threads too, whatever this machine's cores.
    demo.engines.cpu_threads = Some(3);
    demo.stream.socket = dir.path().join("demo.sock");
    let (parts, options) = parts_from_config(&demo).expect("the demo's parts");
    let counted = run_counted(parts, options, 4, 6, &service_manager);
    assert_eq!(
        counted, 0,
        "the demo: {counted} allocations over 6 steady-state frames (all threads)"
    );

    let ycbv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini");
    let source = SequenceSource::open(&SourceConfig {
        kind: SourceKind::Sequence,
        path: Some(ycbv.join("test")),
        rate_hz: 0.0,
        looping: true,
        ..SourceConfig::default()
    })
    .expect("sequence");
    let models = ModelSet::load(&ycbv.join("models")).expect("models");
    let pipeline = SingleViewPipeline::new(
        &models,
        PoseNetworks {
            coarse: None,
            refiner: Some(Box::new(ConstantPoseNetwork::identity(8))),
        },
        PipelineOptions {
            coarse_iterations: 0,
            refiner_iterations: 2,
            batch_size: 8,
            render_threads: 2,
            ..PipelineOptions::default()
        },
    )
    .expect("pipeline");
    let parts = DaemonParts {
        source: Box::new(source),
        objects: ObjectsProvider::DatasetBoxes(bop_boxes(&ycbv.join("test")).expect("boxes")),
        filter: DetectionFilter::default(),
        init: InitScheme::ZupAutodepth,
        pipeline,
        obj_ids: models.objects.keys().copied().collect(),
    };
    let options = DaemonOptions {
        stream: StreamConfig {
            socket: dir.path().join("poses.sock"),
            ..StreamConfig::default()
        },
        service: ServiceConfig::default(),
        reopen_min: Duration::from_millis(10),
        reopen_max: Duration::from_millis(10),
        max_frames: None,
    };
    let counted = run_counted(parts, options, WARMUP, 12, &service_manager);
    assert_eq!(
        counted, 0,
        "annotated boxes: {counted} allocations over 12 steady-state frames (all threads)"
    );
}

/// Allocations while decoding 12 MJPEG frames of 640 x 480 (4:2:2 without Huffman
/// tables, as most UVC cameras send them; with tables of its own; 4:4:4 with restart
/// markers), after one of each.
fn mjpeg_frame_allocations() -> usize {
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/source/testdata");
    let frames: Vec<Vec<u8>> = [
        "ycbv_422_no_dht.jpg",
        "ycbv_422_optimized.jpg",
        "ycbv_444_restart.jpg",
    ]
    .iter()
    .map(|name| std::fs::read(testdata.join(name)).expect("JPEG fixture"))
    .collect();
    let mut decoder = MjpegDecoder::new(640, 480);
    let mut rgb = vec![0u8; 640 * 480 * 3];
    for frame in &frames {
        decoder.decode_rgb(frame, &mut rgb).expect("decodes");
    }
    let before = allocations();
    for frame in frames.iter().cycle().take(12) {
        decoder.decode_rgb(frame, &mut rgb).expect("decodes");
    }
    allocations() - before
}

/// The allocations (every thread) of a new thread's first two waits on a hand-off: one
/// that times out, one that a send ends.
fn first_waits_of_a_thread() -> u64 {
    let (tx, rx) = handoff::bounded::<u32>(1);
    // The count starts once `spawn` has returned (it allocates on this thread).
    let go = Arc::new(AtomicBool::new(false));
    let waiter = {
        let go = Arc::clone(&go);
        std::thread::spawn(move || {
            while !go.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = allocations();
            let timed_out = rx.recv_timeout(Duration::from_millis(5));
            let received = rx.recv_timeout(Duration::from_secs(60));
            (allocations() - before, timed_out, received)
        })
    };
    go.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    tx.try_send(7).expect("an empty slot");
    let (counted, timed_out, received) = waiter.join().expect("waiter");
    assert_eq!(timed_out, Err(handoff::RecvTimeoutError::Timeout));
    assert_eq!(received, Ok(7));
    counted as u64
}

/// What systemd gives `posed run`: a `NOTIFY_SOCKET` (bound here, returned, read after each
/// run), a watchdog, and a log subscriber formatting every enabled line.
fn service_manager(dir: &std::path::Path) -> UnixDatagram {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("a read timeout");
    // Before any thread of the daemon reads the environment.
    std::env::set_var("NOTIFY_SOCKET", &path);
    // A ping due at every frame (half the period).
    std::env::set_var("WATCHDOG_USEC", "1000");
    std::env::remove_var("WATCHDOG_PID");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();
    socket
}

/// Runs a daemon for `warmup + counted` frames with two subscribers and returns the heap
/// allocations (every thread) of the last `counted` frames, after checking that the frames
/// went out with objects and reached both subscribers, and that `service_manager` heard
/// status lines and watchdog pings.
fn run_counted(
    parts: DaemonParts,
    mut options: DaemonOptions,
    warmup: u64,
    counted: u64,
    service_manager: &UnixDatagram,
) -> u64 {
    assert!(warmup > 2, "the warm-up covers the subscribers' start");
    let socket = options.stream.socket.clone();
    options.service = ServiceConfig {
        warmup_frames: 1,
        // A status line at every turn of the publish loop, counted frames included.
        status_interval_ms: 0,
        // Subscribed throughout: only the check whether to pause runs, at every frame.
        idle_without_subscribers: true,
    };
    options.max_frames = Some(warmup + counted);
    let total = warmup + counted;

    // The subscriber connects before the warm-up ends (its connection allocates) and then
    // reads into a fixed buffer.
    let subscribed = Arc::new(AtomicBool::new(false));
    // Threads start when the scheduler gets to them (late, on a busy machine under
    // qemu): the warm-up also waits for both reader threads to have allocated their
    // buffers, and for the JSON subscriber's writer to have delivered a frame (its own
    // buffer is allocated before that; the binary one's is before its switch).
    let readers_started = Arc::new(AtomicU64::new(0));
    let json_lines = Arc::new(AtomicU64::new(0));
    let at_warmup = Arc::new(AtomicU64::new(0));
    let at_end = Arc::new(AtomicU64::new(0));
    let objects_seen = Arc::new(AtomicU64::new(0));
    let observer: FrameObserver = {
        let (subscribed, at_warmup, at_end) = (
            Arc::clone(&subscribed),
            Arc::clone(&at_warmup),
            Arc::clone(&at_end),
        );
        let (readers_started, json_lines) = (Arc::clone(&readers_started), Arc::clone(&json_lines));
        let objects_seen = Arc::clone(&objects_seen);
        let mut published = 0u64;
        Box::new(move |frame: &PoseFrame, stats: &StreamStats| {
            published += 1;
            if published == 1 {
                // Hold the warm-up until the subscriber is in.
                let until = Instant::now() + Duration::from_secs(60);
                // Both subscribers in, the binary one switched (parsing its request
                // allocates), both readers running.
                while (stats.accepted.load(Ordering::Relaxed) < 2
                    || stats.binary_subscribers.load(Ordering::Relaxed) < 1
                    || readers_started.load(Ordering::SeqCst) < 2)
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                subscribed.store(true, Ordering::Relaxed);
            }
            if published == 2 {
                // A frame (the first after the subscribers were in: this one) through
                // the JSON subscriber's writer, after the hello line.
                let until = Instant::now() + Duration::from_secs(60);
                while json_lines.load(Ordering::SeqCst) < 2 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            objects_seen.fetch_add(frame.objects.len() as u64, Ordering::Relaxed);
            if published == warmup {
                at_warmup.store(allocations() as u64, Ordering::SeqCst);
            }
            if published == total {
                at_end.store(allocations() as u64, Ordering::SeqCst);
            }
        })
    };
    // The service manager reads as the daemon sends (its queue holds 10 datagrams), into
    // a buffer of its own: it allocates nothing either.
    let listening = Arc::new(AtomicBool::new(true));
    let heard = {
        let listening = Arc::clone(&listening);
        let socket = service_manager
            .try_clone()
            .expect("the notification socket");
        std::thread::spawn(move || {
            let (mut statuses, mut pings) = (0u64, 0u64);
            let mut message = [0u8; 1024];
            while listening.load(Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut message) {
                    let message = &message[..n];
                    let fps = message.windows(6).any(|w| w == b" fps, ");
                    statuses += u64::from(message.starts_with(b"STATUS=") && fps);
                    pings += u64::from(message == b"WATCHDOG=1");
                }
            }
            (statuses, pings)
        })
    };
    let daemon = std::thread::spawn(move || {
        run(
            parts,
            options,
            Arc::new(AtomicBool::new(false)),
            Notifier::from_env().expect("NOTIFY_SOCKET"),
            Some(observer),
        )
    });
    let connect = || {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                break stream;
            }
            assert!(Instant::now() < until, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Two subscribers: one reads JSON lines, having shut down its sending side (as
    // `socat -u` does: its writer then also asks, each frame, whether it hung up), the
    // other asks for the binary encoding. Each reader counts the newlines it reads into
    // `lines`.
    let read_all = |mut stream: UnixStream, lines: Arc<AtomicU64>| {
        let started = Arc::clone(&readers_started);
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            started.fetch_add(1, Ordering::SeqCst);
            let mut bytes = 0usize;
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                bytes += n;
                let newlines = buffer[..n].iter().filter(|&&b| b == b'\n').count();
                lines.fetch_add(newlines as u64, Ordering::SeqCst);
            }
            bytes
        })
    };
    let json = connect();
    json.shutdown(std::net::Shutdown::Write)
        .expect("shut down the sending side");
    let reader = read_all(json, Arc::clone(&json_lines));
    let mut binary = connect();
    binary
        .write_all(b"{\"encoding\":\"binary\",\"version\":1}\n")
        .expect("ask for binary");
    let binary_reader = read_all(binary, Arc::new(AtomicU64::new(0)));
    let report = daemon.join().expect("daemon thread").expect("run");
    let bytes = reader.join().expect("reader");
    let binary_bytes = binary_reader.join().expect("binary reader");

    assert!(subscribed.load(Ordering::Relaxed));
    assert_eq!(report.published, total);
    assert_eq!(report.failed, 0);
    assert!(
        objects_seen.load(Ordering::Relaxed) >= total,
        "frames had objects"
    );
    assert!(
        bytes > 1000 * total as usize,
        "the subscriber got the frames"
    );
    // Binary frames are shorter than their JSON lines, but hold at least the header.
    assert!(
        binary_bytes > 160 * total as usize && binary_bytes < bytes,
        "the binary subscriber got binary frames ({binary_bytes} bytes, JSON {bytes})"
    );
    listening.store(false, Ordering::SeqCst);
    let (statuses, pings) = heard.join().expect("the service manager's reader");
    assert!(
        statuses > 0 && pings > 0,
        "{statuses} status lines, {pings} pings"
    );
    at_end.load(Ordering::SeqCst) - at_warmup.load(Ordering::SeqCst)
}

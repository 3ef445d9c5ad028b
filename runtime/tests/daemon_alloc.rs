//! The daemon's steady state allocates nothing: the whole daemon (capture thread on the
//! image-sequence source, inference thread, publish thread with a subscriber reading the
//! stream) runs under a counting global allocator, and the allocations of every thread
//! over 40 frames after a warm-up of 10 are counted. The pose network is
//! [`ConstantPoseNetwork`] and the objects are the scenes' annotated boxes: the CPU
//! backend's tract allocates inside each run, which the engines crate reports on its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posed::bop::models::ModelSet;
use posed::config::{ServiceConfig, SourceConfig, SourceKind, StreamConfig};
use posed::daemon::message::PoseFrame;
use posed::daemon::notify::Notifier;
use posed::daemon::stream::StreamStats;
use posed::daemon::{run, DaemonOptions, DaemonParts, FrameObserver, ObjectsProvider};
use posed::pipeline::{
    ConstantPoseNetwork, DetectionFilter, InitScheme, PipelineOptions, PoseNetworks,
    SingleViewPipeline,
};
use posed::source::sequence::{bop_boxes, SequenceSource};
use posed_kernels::alloc_count::{allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WARMUP: u64 = 10;
const COUNTED: u64 = 40;

#[test]
fn steady_state_frames_allocate_nothing() {
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
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("poses.sock");
    let options = DaemonOptions {
        stream: StreamConfig {
            socket: socket.clone(),
            ..StreamConfig::default()
        },
        service: ServiceConfig {
            warmup_frames: 1,
            // No status line inside the counted frames.
            status_interval_ms: 3_600_000,
        },
        reopen_min: Duration::from_millis(10),
        reopen_max: Duration::from_millis(10),
        max_frames: Some(WARMUP + COUNTED),
    };

    // The subscriber connects before the warm-up ends (its connection allocates) and then
    // reads into a fixed buffer.
    let subscribed = Arc::new(AtomicBool::new(false));
    let at_warmup = Arc::new(AtomicU64::new(0));
    let at_end = Arc::new(AtomicU64::new(0));
    let objects_seen = Arc::new(AtomicU64::new(0));
    let observer: FrameObserver = {
        let (subscribed, at_warmup, at_end) = (
            Arc::clone(&subscribed),
            Arc::clone(&at_warmup),
            Arc::clone(&at_end),
        );
        let objects_seen = Arc::clone(&objects_seen);
        let mut published = 0u64;
        Box::new(move |frame: &PoseFrame, stats: &StreamStats| {
            published += 1;
            if published == 1 {
                // Hold the warm-up until the subscriber is in.
                let until = Instant::now() + Duration::from_secs(60);
                // Both subscribers in, and the binary one switched (parsing its request
                // allocates).
                while (stats.accepted.load(Ordering::Relaxed) < 2
                    || stats.binary_subscribers.load(Ordering::Relaxed) < 1)
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                subscribed.store(true, Ordering::Relaxed);
            }
            objects_seen.fetch_add(frame.objects.len() as u64, Ordering::Relaxed);
            if published == WARMUP {
                at_warmup.store(allocations() as u64, Ordering::SeqCst);
            }
            if published == WARMUP + COUNTED {
                at_end.store(allocations() as u64, Ordering::SeqCst);
            }
        })
    };
    let daemon = std::thread::spawn(move || {
        run(
            parts,
            options,
            Arc::new(AtomicBool::new(false)),
            Notifier::disabled(),
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
    // Two subscribers: one reads JSON lines, the other asks for the binary encoding.
    let read_all = |mut stream: UnixStream| {
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            let mut bytes = 0usize;
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                bytes += n;
            }
            bytes
        })
    };
    let reader = read_all(connect());
    let mut binary = connect();
    binary
        .write_all(b"{\"encoding\":\"binary\",\"version\":1}\n")
        .expect("ask for binary");
    let binary_reader = read_all(binary);
    let report = daemon.join().expect("daemon thread").expect("run");
    let bytes = reader.join().expect("reader");
    let binary_bytes = binary_reader.join().expect("binary reader");

    assert!(subscribed.load(Ordering::Relaxed));
    assert_eq!(report.published, WARMUP + COUNTED);
    assert_eq!(report.failed, 0);
    assert!(
        objects_seen.load(Ordering::Relaxed) >= WARMUP + COUNTED,
        "frames had objects"
    );
    assert!(
        bytes > 1000 * (WARMUP + COUNTED) as usize,
        "the subscriber got the frames"
    );
    // Binary frames are shorter than their JSON lines, but hold at least the header.
    assert!(
        binary_bytes > 160 * (WARMUP + COUNTED) as usize && binary_bytes < bytes,
        "the binary subscriber got binary frames ({binary_bytes} bytes, JSON {bytes})"
    );
    let counted = at_end.load(Ordering::SeqCst) - at_warmup.load(Ordering::SeqCst);
    assert_eq!(
        counted, 0,
        "{counted} allocations over {COUNTED} steady-state frames (all threads)"
    );
}

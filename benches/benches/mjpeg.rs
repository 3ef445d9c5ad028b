//! MJPEG decoding on the CPU, what the capture thread does with every frame of a UVC
//! camera that sends MJPEG: posed's decoder (`posed::source::jpeg`, no allocation per
//! frame) against zune-jpeg (through `image`, what posed used before and still falls back
//! to), one thread, in pixels per second.
//!
//! The frames: a ycbv-mini image as libjpeg-turbo encoded it (640 x 480, 4:2:2, quality
//! 85, the fixture of the decoder's tests), and the same image scaled to 1280 x 720 and
//! 1920 x 1080, encoded at quality 85 by `image`'s encoder, which writes 4:4:4 (whatever
//! its documentation says): more chroma to decode than a camera's 4:2:2, and, scaled up,
//! less detail.

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::io::Cursor;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{ImageDecoder, ImageFormat};
use posed::source::jpeg::MjpegDecoder;

fn frames() -> Vec<(usize, usize, Vec<u8>)> {
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/src/source/testdata");
    let vga = std::fs::read(testdata.join("ycbv_422.jpg")).expect("the 640 x 480 fixture");
    let image = image::load_from_memory_with_format(&vga, ImageFormat::Jpeg)
        .expect("decodes")
        .to_rgb8();
    let mut frames = vec![(640, 480, vga)];
    for (width, height) in [(1280u32, 720u32), (1920, 1080)] {
        let scaled = image::imageops::resize(&image, width, height, FilterType::Triangle);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&scaled)
            .expect("encodes");
        frames.push((width as usize, height as usize, jpeg));
    }
    frames
}

fn mjpeg_cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("mjpeg");
    for (width, height, jpeg) in frames() {
        group.throughput(Throughput::Elements((width * height) as u64));
        let mut rgb = vec![0u8; width * height * 3];
        let mut decoder = MjpegDecoder::new(width, height);
        group.bench_function(format!("cpu_mjpeg_posed/{width}x{height}"), |b| {
            b.iter(|| decoder.decode_rgb(&jpeg, &mut rgb).expect("decodes"))
        });
        group.bench_function(format!("cpu_mjpeg_zune/{width}x{height}"), |b| {
            b.iter(|| {
                image::codecs::jpeg::JpegDecoder::new(Cursor::new(&jpeg))
                    .expect("header")
                    .read_image(&mut rgb)
                    .expect("decodes")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mjpeg_cpu);
criterion_main!(benches);

//! Camera colour conversion on the CPU (`posed_kernels::color`): YUYV and NV12 frames of
//! 640 x 480 and 1280 x 720 (the usual UVC webcam sizes) to 8-bit RGB, one thread, in
//! pixels per second (criterion's element throughput). Rows are padded to 64 bytes as
//! drivers do, so the stride is honoured as on a real camera. The frame bytes are seeded
//! random: the conversion has no data-dependent branch, so its speed does not depend on
//! the picture.

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posed_kernels::color::{to_rgb8, PackedImage, PixelLayout};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn to_rgb8_cpu(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc0_10b);
    let mut group = c.benchmark_group("color");
    for (width, height) in [(640usize, 480usize), (1280, 720)] {
        group.throughput(Throughput::Elements((width * height) as u64));
        for layout in [PixelLayout::Yuyv, PixelLayout::Nv12] {
            let stride_bytes = layout.row_bytes(width).next_multiple_of(64);
            let len = layout.min_len(width, height, stride_bytes);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let src = PackedImage {
                layout,
                data: &data,
                width,
                height,
                stride_bytes,
            };
            let mut rgb = vec![0u8; src.output_len()];
            let name = format!(
                "cpu_{}_to_rgb8/{width}x{height}",
                layout.name().to_lowercase()
            );
            group.bench_function(&name, |b| {
                b.iter(|| to_rgb8(&src, &mut rgb).expect("conversion"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, to_rgb8_cpu);
criterion_main!(benches);

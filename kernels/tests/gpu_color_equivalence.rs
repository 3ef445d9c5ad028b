//! Camera colour conversion on the GPU (`GpuColor`, `kernels/cuda/color.cu`) against its
//! CPU twin (`color::to_rgb8`, `color::to_normalized_planar`): seeded random frames in
//! all three layouts (YUYV, NV12, RGB24), from 2 x 2 to 1280 x 720 (NV12 640 x 480 and
//! 1280 x 720 among them), odd sizes where the layout allows them, tight and padded row
//! strides (odd paddings included), plus every input the CPU twin refuses, which the GPU
//! must refuse with the same error. Outputs are poisoned first (each RGB byte with the
//! complement of the expected one, each float with NaN), so a pixel the GPU never writes
//! cannot pass.
//!
//! Also here, because it needs its own test binary for a counting global allocator: the
//! CPU conversions allocate nothing (the tests of this binary take turns, so that no
//! other test's allocations are counted).
//!
//! Where no GPU or driver is present the GPU comparisons print
//! `SKIPPED: no CUDA device (<reason>)` and pass.

#[cfg(feature = "cuda")]
mod common;

use std::sync::{Mutex, MutexGuard};

use posed_kernels::alloc_count::{allocations, CountingAllocator};
use posed_kernels::color::{to_normalized_planar, to_rgb8, PackedImage, PixelLayout};
use posed_kernels::KernelError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Every test of this binary holds it: the allocation count is global.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves it poisoned; the others still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const SEED: u64 = 0xc0_10e9;
const LAYOUTS: [PixelLayout; 3] = [PixelLayout::Yuyv, PixelLayout::Nv12, PixelLayout::Rgb24];
/// The session's limits: the largest frame below, and strides up to 4 KiB.
const MAX_WIDTH: usize = 1280;
const MAX_HEIGHT: usize = 720;
const MAX_STRIDE_BYTES: usize = 4096;

/// A frame: its layout, size, stride and bytes (at least `min_len`, sometimes more).
struct Frame {
    layout: PixelLayout,
    width: usize,
    height: usize,
    stride_bytes: usize,
    data: Vec<u8>,
}

impl Frame {
    fn image(&self) -> PackedImage<'_> {
        PackedImage {
            layout: self.layout,
            data: &self.data,
            width: self.width,
            height: self.height,
            stride_bytes: self.stride_bytes,
        }
    }

    #[cfg(feature = "cuda")]
    fn label(&self) -> String {
        format!(
            "{} {}x{} stride {} ({} bytes)",
            self.layout.name(),
            self.width,
            self.height,
            self.stride_bytes,
            self.data.len()
        )
    }
}

/// Random frames of every layout, size and stride the scenario covers.
fn frames() -> Vec<Frame> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let sizes = [
        (2, 2),
        (8, 6),
        (34, 10),
        (40, 9),
        (37, 23),
        (64, 48),
        (322, 242),
        (640, 480),
        (1280, 720),
    ];
    let mut frames = Vec::new();
    for layout in LAYOUTS {
        for (width, height) in sizes {
            let shared_chroma = layout != PixelLayout::Rgb24;
            if shared_chroma && width % 2 != 0 || layout == PixelLayout::Nv12 && height % 2 != 0 {
                continue;
            }
            let tight = layout.row_bytes(width);
            for stride_bytes in [tight, tight + 3, tight.next_multiple_of(64) + 64] {
                let min_len = layout.min_len(width, height, stride_bytes);
                // Sometimes exactly min_len (no padding after the last row), sometimes
                // V4L2's sizeimage and more.
                let extra = match rng.random_range(0..3) {
                    0 => 0,
                    1 => stride_bytes - tight,
                    _ => 4096,
                };
                let data: Vec<u8> = (0..min_len + extra).map(|_| rng.random()).collect();
                frames.push(Frame {
                    layout,
                    width,
                    height,
                    stride_bytes,
                    data,
                });
            }
        }
    }
    frames
}

fn cpu_rgb8(image: &PackedImage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; image.output_len()];
    to_rgb8(image, &mut out).expect("CPU RGB8");
    out
}

#[cfg(feature = "cuda")]
fn cpu_planes(image: &PackedImage<'_>) -> Vec<f32> {
    let mut out = vec![0.0f32; image.output_len()];
    to_normalized_planar(image, &mut out).expect("CPU planes");
    out
}

/// Frames the CPU twin refuses, each with its error: sizes, parity, stride, length.
fn bad_frames(bytes: &[u8]) -> Vec<(PackedImage<'_>, KernelError)> {
    let image = |layout, width, height, stride_bytes, len: usize| PackedImage {
        layout,
        data: &bytes[..len],
        width,
        height,
        stride_bytes,
    };
    let cases = vec![
        image(PixelLayout::Yuyv, 0, 480, 1280, 1000),
        image(PixelLayout::Nv12, 640, 0, 640, 1000),
        image(PixelLayout::Yuyv, 639, 480, 1280, bytes.len()),
        image(PixelLayout::Nv12, 639, 480, 640, bytes.len()),
        image(PixelLayout::Nv12, 640, 479, 640, bytes.len()),
        image(PixelLayout::Yuyv, 640, 480, 1279, bytes.len()),
        image(PixelLayout::Nv12, 640, 480, 639, bytes.len()),
        image(PixelLayout::Rgb24, 640, 480, 1919, bytes.len()),
        image(PixelLayout::Yuyv, 640, 480, 1280, 1280 * 480 - 1),
        image(PixelLayout::Nv12, 640, 480, 640, 640 * 720 - 1),
        image(PixelLayout::Rgb24, 640, 480, 1920, 0),
    ];
    cases
        .into_iter()
        .map(|image| {
            let error = image.validate().expect_err("a bad frame");
            (image, error)
        })
        .collect()
}

#[test]
fn the_scenario_covers_what_it_should() {
    let _turn = serial();
    let frames = frames();
    for layout in LAYOUTS {
        let of_layout: Vec<&Frame> = frames.iter().filter(|f| f.layout == layout).collect();
        assert!(of_layout.len() >= 18, "{layout:?}: {}", of_layout.len());
        assert!(of_layout
            .iter()
            .any(|f| f.stride_bytes > layout.row_bytes(f.width)));
        assert!(of_layout
            .iter()
            .any(|f| f.data.len() == layout.min_len(f.width, f.height, f.stride_bytes)));
    }
    for (width, height) in [(640, 480), (1280, 720)] {
        assert!(frames
            .iter()
            .any(|f| f.layout == PixelLayout::Nv12 && (f.width, f.height) == (width, height)));
    }
    for frame in &frames {
        let image = frame.image();
        assert!(frame.width <= MAX_WIDTH && frame.height <= MAX_HEIGHT);
        assert!(frame.stride_bytes <= MAX_STRIDE_BYTES);
        assert_eq!(cpu_rgb8(&image).len(), 3 * frame.width * frame.height);
    }
    let bytes = vec![0u8; 2 << 20];
    assert_eq!(bad_frames(&bytes).len(), 11);
}

#[test]
fn cpu_conversions_allocate_nothing() {
    let _turn = serial();
    let frames = frames();
    let largest = frames
        .iter()
        .map(|f| f.image().output_len())
        .max()
        .unwrap_or(0);
    let mut rgb = vec![0u8; largest];
    let mut planes = vec![0.0f32; largest];
    let bytes = vec![0u8; 2 << 20];
    let bad = bad_frames(&bytes);
    let run = |rgb: &mut [u8], planes: &mut [f32]| {
        for frame in &frames {
            let image = frame.image();
            let n = image.output_len();
            to_rgb8(&image, &mut rgb[..n]).expect("RGB8");
            to_normalized_planar(&image, &mut planes[..n]).expect("planes");
        }
        for (image, _) in &bad {
            assert!(to_rgb8(image, rgb).is_err());
            assert!(to_normalized_planar(image, planes).is_err());
        }
    };
    run(&mut rgb, &mut planes);
    let before = allocations();
    run(&mut rgb, &mut planes);
    let allocated = allocations() - before;
    assert_eq!(
        allocated,
        0,
        "{allocated} allocations converting {} frames (and refusing {})",
        frames.len(),
        bad.len()
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use common::open_or_skip;
    use cudarc::driver::CudaContext;
    use posed_kernels::cuda::{GpuColor, MappedHostBuffer};

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// The first pixel where `gpu` and `cpu` differ, for the message.
    fn first_difference<T: PartialEq + std::fmt::Debug>(gpu: &[T], cpu: &[T]) -> String {
        match gpu.iter().zip(cpu).position(|(g, c)| g != c) {
            Some(i) => format!("value {i}: GPU {:?}, CPU {:?}", gpu[i], cpu[i]),
            None => format!("lengths {} and {}", gpu.len(), cpu.len()),
        }
    }

    #[test]
    fn gpu_conversions_match_the_cpu_twin_bit_for_bit() {
        let _turn = serial();
        let Some(device) = open_or_skip() else {
            return;
        };
        let mut gpu =
            GpuColor::new(&device, MAX_WIDTH, MAX_HEIGHT, MAX_STRIDE_BYTES).expect("GpuColor");
        let image = gpu.compiled_image();
        eprintln!(
            "color.cu: {} ({:?}), NVRTC {}.{}",
            image.target, image.cache, image.nvrtc_version.0, image.nvrtc_version.1
        );
        assert_eq!(image.log, "", "NVRTC warnings");
        let context = CudaContext::new(device.ordinal()).expect("context");
        let stream = context.default_stream();

        let frames = frames();
        let mut pixels = 0;
        for frame in &frames {
            let image = frame.image();
            let label = frame.label();
            let cpu_rgb = cpu_rgb8(&image);
            let cpu_planes = cpu_planes(&image);

            // Poison: every byte differs from the expected one, every float is NaN.
            let mut gpu_rgb: Vec<u8> = cpu_rgb.iter().map(|b| !b).collect();
            gpu.to_rgb8(&image, &mut gpu_rgb).expect("GPU RGB8");
            assert!(
                gpu_rgb == cpu_rgb,
                "RGB8 {label}: {}",
                first_difference(&gpu_rgb, &cpu_rgb)
            );

            let mut gpu_planes = vec![f32::NAN; cpu_planes.len()];
            gpu.to_normalized_planar(&image, &mut gpu_planes)
                .expect("GPU planes");
            assert!(
                bits(&gpu_planes) == bits(&cpu_planes),
                "planes {label}: {}",
                first_difference(&bits(&gpu_planes), &bits(&cpu_planes))
            );

            // Into a caller's device buffer, longer than needed: the tail stays NaN.
            let tail = 7;
            let poison = vec![f32::NAN; cpu_planes.len() + tail];
            let mut on_device = stream.clone_htod(&poison).expect("device buffer");
            gpu.to_normalized_planar_device(&image, &mut on_device)
                .expect("GPU planes on the device");
            let back = stream.clone_dtoh(&on_device).expect("read back");
            let n = cpu_planes.len();
            assert!(
                bits(&back[..n]) == bits(&cpu_planes),
                "device planes {label}: {}",
                first_difference(&bits(&back[..n]), &bits(&cpu_planes))
            );
            assert!(
                back[n..].iter().all(|v| v.is_nan()),
                "{label}: tail written"
            );
            pixels += frame.width * frame.height;
        }
        eprintln!(
            "{} frames ({pixels} pixels) bit-identical in RGB8, planes and device planes",
            frames.len()
        );
    }

    /// The zero-copy path of the daemon: the frame sits in mapped host memory (a V4L2
    /// USERPTR buffer), at an offset, and the RGB bytes land in mapped host memory too.
    #[test]
    fn mapped_conversion_reads_and_writes_in_place_bit_for_bit() {
        let _turn = serial();
        let Some(device) = open_or_skip() else {
            return;
        };
        let mut gpu =
            GpuColor::new(&device, MAX_WIDTH, MAX_HEIGHT, MAX_STRIDE_BYTES).expect("GpuColor");
        let frames = frames();
        let largest = frames.iter().map(|f| f.data.len()).max().expect("frames");
        let offset = 64;
        let mut camera = MappedHostBuffer::new(&device, offset + largest).expect("camera");
        let mut rgb =
            MappedHostBuffer::new(&device, 3 * MAX_WIDTH * MAX_HEIGHT + 5).expect("RGB buffer");
        assert!(camera.device_ptr() != 0 && camera.len() >= offset + largest);
        eprintln!(
            "{} ({}): mapped host buffers of {} and {} bytes",
            device.name(),
            if device.integrated() {
                "integrated"
            } else {
                "discrete"
            },
            camera.len(),
            rgb.len()
        );
        for frame in &frames {
            let label = frame.label();
            let n = frame.data.len();
            camera.as_mut_slice()[offset..offset + n].copy_from_slice(&frame.data);
            let expected = cpu_rgb8(&frame.image());
            let m = expected.len();
            // Poison the output and the byte after it.
            for (dst, e) in rgb.as_mut_slice()[..m].iter_mut().zip(&expected) {
                *dst = !e;
            }
            rgb.as_mut_slice()[m] = 0xa5;
            let image = PackedImage {
                data: &camera.as_slice()[offset..offset + n],
                ..frame.image()
            };
            gpu.to_rgb8_mapped(&image, &camera, &mut rgb)
                .expect("mapped conversion");
            let got = &rgb.as_slice()[..m];
            assert!(
                got == expected.as_slice(),
                "mapped RGB8 {label}: {}",
                first_difference(got, &expected)
            );
            assert_eq!(rgb.as_slice()[m], 0xa5, "{label}: wrote past the image");
        }

        // A frame that is not inside the buffer given with it is refused, not read.
        let outside = &frames[0];
        assert!(matches!(
            gpu.to_rgb8_mapped(&outside.image(), &camera, &mut rgb),
            Err(KernelError::InvalidValue { .. })
        ));
        // An output buffer too small for the image.
        let mut small = MappedHostBuffer::new(&device, 1).expect("small");
        let big = frames
            .iter()
            .find(|f| f.width * f.height * 3 > small.len())
            .expect("a frame larger than a page");
        let n = big.data.len();
        camera.as_mut_slice()[..n].copy_from_slice(&big.data);
        let image = PackedImage {
            data: &camera.as_slice()[..n],
            ..big.image()
        };
        assert!(matches!(
            gpu.to_rgb8_mapped(&image, &camera, &mut small),
            Err(KernelError::TooSmall { .. })
        ));
        eprintln!("{} frames converted in place, bit-identical", frames.len());
    }

    #[test]
    fn gpu_refuses_bad_input_as_the_cpu_does() {
        let _turn = serial();
        let Some(device) = open_or_skip() else {
            return;
        };
        let mut gpu =
            GpuColor::new(&device, MAX_WIDTH, MAX_HEIGHT, MAX_STRIDE_BYTES).expect("GpuColor");
        let context = CudaContext::new(device.ordinal()).expect("context");
        let stream = context.default_stream();
        let bytes = vec![0x80u8; 2 << 20];
        let mut rgb = vec![7u8; 3 * 640 * 480];
        let mut planes = vec![7.0f32; 3 * 640 * 480];
        let mut on_device = stream.clone_htod(&planes).expect("device buffer");
        for (image, expected) in bad_frames(&bytes) {
            let cpu = to_rgb8(&image, &mut rgb);
            assert_eq!(cpu.as_ref(), Err(&expected));
            assert_eq!(gpu.to_rgb8(&image, &mut rgb), cpu, "{image:?}");
            assert_eq!(
                gpu.to_normalized_planar(&image, &mut planes),
                to_normalized_planar(&image, &mut planes),
                "{image:?}"
            );
            assert_eq!(
                gpu.to_normalized_planar_device(&image, &mut on_device),
                Err(expected),
                "{image:?}"
            );
        }
        assert!(rgb.iter().all(|&v| v == 7) && planes.iter().all(|&v| v == 7.0));
        let back = stream.clone_dtoh(&on_device).expect("read back");
        assert!(back.iter().all(|&v| v == 7.0), "device buffer written");

        // A good frame with an output of the wrong length: the CPU's error.
        let good = PackedImage {
            layout: PixelLayout::Yuyv,
            data: &bytes,
            width: 640,
            height: 480,
            stride_bytes: 1280,
        };
        assert_eq!(
            gpu.to_rgb8(&good, &mut rgb[1..]),
            to_rgb8(&good, &mut rgb[1..])
        );
        assert!(gpu.to_rgb8(&good, &mut rgb[1..]).is_err());
        assert_eq!(
            gpu.to_normalized_planar(&good, &mut planes[..5]),
            to_normalized_planar(&good, &mut planes[..5])
        );
        let mut short = stream
            .alloc_zeros::<f32>(3 * 640 * 480 - 1)
            .expect("device buffer");
        assert_eq!(
            gpu.to_normalized_planar_device(&good, &mut short),
            Err(KernelError::TooSmall {
                what: "device buffer for the normalised planes (floats, 3 x width x height)",
                minimum: 3 * 640 * 480,
                found: 3 * 640 * 480 - 1,
            })
        );

        // Beyond the session's limits, though the CPU would take them.
        let wide = PackedImage {
            layout: PixelLayout::Nv12,
            data: &bytes,
            width: MAX_WIDTH + 2,
            height: 2,
            stride_bytes: MAX_WIDTH + 2,
        };
        let mut out = vec![0u8; wide.output_len()];
        to_rgb8(&wide, &mut out).expect("the CPU takes it");
        assert_eq!(
            gpu.to_rgb8(&wide, &mut out),
            Err(KernelError::LimitExceeded {
                what: "camera image width (GpuColor max_width)",
                limit: MAX_WIDTH,
                found: MAX_WIDTH + 2,
            })
        );
        let padded = PackedImage {
            layout: PixelLayout::Rgb24,
            data: &bytes,
            width: 4,
            height: 4,
            stride_bytes: MAX_STRIDE_BYTES + 1,
        };
        let mut out = vec![0.0f32; padded.output_len()];
        assert!(matches!(
            gpu.to_normalized_planar(&padded, &mut out),
            Err(KernelError::LimitExceeded { .. })
        ));
        assert!(matches!(
            GpuColor::new(&device, 0, MAX_HEIGHT, MAX_STRIDE_BYTES),
            Err(KernelError::InvalidValue { .. })
        ));
    }
}

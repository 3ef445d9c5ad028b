//! BOP images: RGB (PNG or JPEG), 16-bit depth PNGs, 8-bit mask PNGs, and PNG writers.
//!
//! Readers check the format, bit depth and colour type before decoding the pixels, and
//! report a wrong kind of image with what was expected and what was found (e.g. "expected
//! a 16-bit grayscale PNG, found 8-bit RGB"). Broken or truncated files are errors, never
//! panics. Writers are atomic: the PNG goes to a temporary file beside the target, which
//! then replaces it, so a crash never leaves half an image.
//!
//! Images are row-major: the pixel at column `u`, row `v` is at index `v * width + u`.

use std::io::Cursor;
use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ColorType, DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageFormat};

use crate::{Error, Result};

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// `width * height` pixels, row-major.
    pub pixels: Vec<[u8; 3]>,
}

impl RgbImage {
    /// The pixel at column `u`, row `v`, if inside the image.
    pub fn get(&self, u: u32, v: u32) -> Option<[u8; 3]> {
        pixel_index(self.width, self.height, u, v).map(|i| self.pixels[i])
    }
}

/// A depth image in metres: the z coordinate in the camera frame (not the distance along
/// the ray), 0 where the depth is invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthImage {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// `width * height` depths in metres, row-major; 0 = invalid.
    pub depth_m: Vec<f32>,
}

impl DepthImage {
    /// The depth (metres, 0 = invalid) at column `u`, row `v`, if inside the image.
    pub fn get(&self, u: u32, v: u32) -> Option<f32> {
        pixel_index(self.width, self.height, u, v).map(|i| self.depth_m[i])
    }
}

/// A binary mask (BOP `mask/` and `mask_visib/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// `width * height` flags, row-major; `true` = inside (a nonzero value in the file).
    pub inside: Vec<bool>,
}

impl Mask {
    /// Whether the pixel at column `u`, row `v` is inside the mask (`false` outside the image).
    pub fn get(&self, u: u32, v: u32) -> bool {
        pixel_index(self.width, self.height, u, v).is_some_and(|i| self.inside[i])
    }

    /// The number of pixels inside the mask.
    pub fn count(&self) -> usize {
        self.inside.iter().filter(|&&inside| inside).count()
    }
}

fn pixel_index(width: u32, height: u32, u: u32, v: u32) -> Option<usize> {
    (u < width && v < height).then(|| v as usize * width as usize + u as usize)
}

/// Reads an 8-bit RGB image (PNG or JPEG). RGBA loses its alpha channel and grayscale is
/// replicated into the three channels; 16-bit and float images are refused.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = read_file(path)?;
    decode_rgb(path, &bytes)
}

/// Reads a BOP depth image: a 16-bit grayscale PNG whose values times `depth_scale_mm`
/// are millimetres (`scene_camera.json`'s `depth_scale`). Returns metres:
/// `depth_m = value * depth_scale_mm * 0.001`, computed in f64 and rounded once to f32.
/// A value of 0 (no depth) stays 0.
pub fn read_depth_m(path: &Path, depth_scale_mm: f64) -> Result<DepthImage> {
    check_depth_scale(path, depth_scale_mm)?;
    let bytes = read_file(path)?;
    decode_depth_m(path, &bytes, depth_scale_mm)
}

/// Reads a BOP mask: an 8-bit grayscale PNG (1, 2 and 4-bit grayscale are accepted too);
/// a nonzero value is inside.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let bytes = read_file(path)?;
    decode_mask(path, &bytes)
}

/// Writes an 8-bit RGB PNG, atomically.
pub fn write_rgb_png(path: &Path, image: &RgbImage) -> Result<()> {
    check_size(path, image.width, image.height, image.pixels.len())?;
    let png = encode_png(
        path,
        image.pixels.as_flattened(),
        image.width,
        image.height,
        ExtendedColorType::Rgb8,
    )?;
    write_atomically(path, &png)
}

/// Writes a BOP depth image, atomically: a 16-bit grayscale PNG holding
/// `round(depth_m * 1000 / depth_scale_mm)`, the inverse of [`read_depth_m`] (which reads
/// back exactly the values written). A depth that is negative, not finite, or too large
/// for 16 bits at this scale is an error naming its pixel.
pub fn write_depth_png_u16(path: &Path, depth: &DepthImage, depth_scale_mm: f64) -> Result<()> {
    check_depth_scale(path, depth_scale_mm)?;
    check_size(path, depth.width, depth.height, depth.depth_m.len())?;
    let mut bytes = Vec::with_capacity(depth.depth_m.len() * 2);
    for (i, &d) in depth.depth_m.iter().enumerate() {
        let value = f64::from(d) * 1000.0 / depth_scale_mm;
        let rounded = value.round();
        if !(0.0..=f64::from(u16::MAX)).contains(&rounded) {
            let (u, v) = (i % depth.width as usize, i / depth.width as usize);
            return Err(image_error(
                path,
                format!(
                    "cannot write depth {d} m at pixel ({u}, {v}) as a 16-bit PNG with \
                     depth_scale {depth_scale_mm} mm: expected 0 to {} m",
                    f64::from(u16::MAX) * depth_scale_mm * 0.001
                ),
            ));
        }
        // In range after the check above, so the cast is exact.
        bytes.extend_from_slice(&(rounded as u16).to_ne_bytes());
    }
    let png = encode_png(
        path,
        &bytes,
        depth.width,
        depth.height,
        ExtendedColorType::L16,
    )?;
    write_atomically(path, &png)
}

/// Writes an 8-bit grayscale PNG (e.g. a mask with values 0 and 255), atomically.
/// `values` holds `width * height` values, row-major.
pub fn write_gray_png_u8(path: &Path, width: u32, height: u32, values: &[u8]) -> Result<()> {
    check_size(path, width, height, values.len())?;
    let png = encode_png(path, values, width, height, ExtendedColorType::L8)?;
    write_atomically(path, &png)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn image_error(path: &Path, reason: String) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason,
    }
}

fn check_depth_scale(path: &Path, depth_scale_mm: f64) -> Result<()> {
    if depth_scale_mm.is_finite() && depth_scale_mm > 0.0 {
        Ok(())
    } else {
        Err(image_error(
            path,
            format!("depth_scale must be a positive number of millimetres, found {depth_scale_mm}"),
        ))
    }
}

fn check_size(path: &Path, width: u32, height: u32, len: usize) -> Result<()> {
    let expected = (width as usize).checked_mul(height as usize);
    if width == 0 || height == 0 || expected != Some(len) {
        return Err(image_error(
            path,
            format!(
                "cannot write a {width}x{height} image from {len} pixels: expected a nonzero size \
                 and width * height pixels"
            ),
        ));
    }
    Ok(())
}

/// The decoder for `bytes`, after checking that their format is one of `accepted`.
fn decoder<'a>(
    path: &Path,
    bytes: &'a [u8],
    accepted: &[ImageFormat],
    expected: &str,
) -> Result<impl ImageDecoder + 'a> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| image_error(path, format!("cannot read: {err}")))?;
    match reader.format() {
        Some(format) if accepted.contains(&format) => {}
        Some(format) => {
            return Err(image_error(
                path,
                format!("expected {expected}, found a {format:?} file"),
            ))
        }
        None => {
            return Err(image_error(
                path,
                format!("expected {expected}, found no image signature"),
            ))
        }
    }
    let decoder = reader
        .into_decoder()
        .map_err(|err| image_error(path, decode_reason(&err)))?;
    // A header can declare any size in a few bytes; not every decoder checks the limits
    // before allocating, so check here, before anything is decoded.
    let (width, height) = decoder.dimensions();
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || decoder.total_bytes() > MAX_DECODED_BYTES
    {
        return Err(image_error(
            path,
            format!(
                "the image is {width} x {height} ({} bytes decoded); posed reads images of at \
                 most {MAX_IMAGE_SIDE} pixels a side and {MAX_DECODED_BYTES} bytes",
                decoder.total_bytes()
            ),
        ));
    }
    Ok(decoder)
}

/// The largest image side posed decodes: far above any camera's, far below what a forged
/// header can ask for.
pub(crate) const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most bytes an image may decode to (an RGB 16384 x 8192 image, or 16-bit 16384 x
/// 16384 depth).
const MAX_DECODED_BYTES: u64 = 1 << 29;

fn decode_reason(err: &image::ImageError) -> String {
    match err {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the file ends early (truncated?): {io}")
        }
        image::ImageError::Limits(limit) => {
            format!("the image is too large to decode: {limit}")
        }
        other => format!("cannot decode: {other}"),
    }
}

fn decode_all(path: &Path, decoder: impl ImageDecoder) -> Result<DynamicImage> {
    DynamicImage::from_decoder(decoder).map_err(|err| image_error(path, decode_reason(&err)))
}

/// "8-bit RGB", "16-bit grayscale", ...: the pixel type as a person names it.
fn describe(color: ExtendedColorType) -> String {
    use ExtendedColorType as C;
    let (bits, kind) = match color {
        C::A8 => (8, "alpha-only"),
        C::L1 => (1, "grayscale"),
        C::L2 => (2, "grayscale"),
        C::L4 => (4, "grayscale"),
        C::L8 => (8, "grayscale"),
        C::L16 => (16, "grayscale"),
        C::La1 => (1, "grayscale with alpha"),
        C::La2 => (2, "grayscale with alpha"),
        C::La4 => (4, "grayscale with alpha"),
        C::La8 => (8, "grayscale with alpha"),
        C::La16 => (16, "grayscale with alpha"),
        C::Rgb1 => (1, "RGB"),
        C::Rgb2 => (2, "RGB"),
        C::Rgb4 => (4, "RGB"),
        C::Rgb8 => (8, "RGB"),
        C::Rgb16 => (16, "RGB"),
        C::Rgba1 => (1, "RGBA"),
        C::Rgba2 => (2, "RGBA"),
        C::Rgba4 => (4, "RGBA"),
        C::Rgba8 => (8, "RGBA"),
        C::Rgba16 => (16, "RGBA"),
        C::Rgb32F => return "32-bit float RGB".into(),
        C::Rgba32F => return "32-bit float RGBA".into(),
        C::Unknown(bits) => return format!("{bits}-bit palette or unknown colour type"),
        other => return format!("{other:?}"),
    };
    format!("{bits}-bit {kind}")
}

fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    const EXPECTED: &str = "an 8-bit RGB, RGBA or grayscale PNG or JPEG image";
    let decoder = decoder(
        path,
        bytes,
        &[ImageFormat::Png, ImageFormat::Jpeg],
        EXPECTED,
    )?;
    match decoder.color_type() {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => {}
        _ => {
            let found = describe(decoder.original_color_type());
            return Err(image_error(
                path,
                format!("expected {EXPECTED}, found {found}"),
            ));
        }
    }
    let rgb = decode_all(path, decoder)?.into_rgb8();
    let (width, height) = rgb.dimensions();
    let pixels = rgb
        .into_raw()
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// Decodes a PNG that must have the colour type `want` (described by `expected` in errors);
/// also returns the file's original colour type for messages.
fn decode_png_of_type(
    path: &Path,
    bytes: &[u8],
    want: ColorType,
    expected: &str,
) -> Result<(DynamicImage, ExtendedColorType)> {
    let decoder = decoder(path, bytes, &[ImageFormat::Png], expected)?;
    let found = decoder.original_color_type();
    if decoder.color_type() != want {
        return Err(image_error(
            path,
            format!("expected {expected}, found {}", describe(found)),
        ));
    }
    Ok((decode_all(path, decoder)?, found))
}

fn other_pixel_type(path: &Path, expected: &str, found: ExtendedColorType) -> Error {
    image_error(
        path,
        format!(
            "expected {expected}, the decoder returned another pixel type for {}",
            describe(found)
        ),
    )
}

fn decode_depth_m(path: &Path, bytes: &[u8], depth_scale_mm: f64) -> Result<DepthImage> {
    const EXPECTED: &str = "a 16-bit grayscale PNG";
    let (image, found) = decode_png_of_type(path, bytes, ColorType::L16, EXPECTED)?;
    let DynamicImage::ImageLuma16(values) = image else {
        return Err(other_pixel_type(path, EXPECTED, found));
    };
    let (width, height) = values.dimensions();
    let to_m = depth_scale_mm * 0.001;
    let depth_m = values
        .into_raw()
        .into_iter()
        .map(|value| (f64::from(value) * to_m) as f32)
        .collect();
    Ok(DepthImage {
        width,
        height,
        depth_m,
    })
}

fn decode_mask(path: &Path, bytes: &[u8]) -> Result<Mask> {
    const EXPECTED: &str = "an 8-bit grayscale PNG";
    let (image, found) = decode_png_of_type(path, bytes, ColorType::L8, EXPECTED)?;
    let DynamicImage::ImageLuma8(values) = image else {
        return Err(other_pixel_type(path, EXPECTED, found));
    };
    let (width, height) = values.dimensions();
    let inside = values.into_raw().into_iter().map(|v| v != 0).collect();
    Ok(Mask {
        width,
        height,
        inside,
    })
}

fn encode_png(
    path: &Path,
    bytes: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(bytes, width, height, color)
        .map_err(|err| image_error(path, format!("cannot encode a PNG: {err}")))?;
    Ok(png)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it onto `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    super::atomic::write_atomically(path, |out| out.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::bop::dataset::{BopDataset, ImageFile};
    use proptest::prelude::*;

    fn data_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini")
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/bop/testdata/images")
            .join(name)
    }

    fn reason(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Image { reason, .. }) => reason,
            other => panic!("expected an image error, found {other:?}"),
        }
    }

    /// A PNG of a header and no pixel data, declaring `width` x `height`, 8-bit RGB.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &byte in bytes {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = b"IHDR".to_vec();
        chunk.extend(width.to_be_bytes());
        chunk.extend(height.to_be_bytes());
        chunk.extend([8, 2, 0, 0, 0]);
        png.extend(13u32.to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
        // The start of a zlib stream: a decoder reads up to here before any pixel.
        let idat = b"IDAT\x78\x9c";
        png.extend(2u32.to_be_bytes());
        png.extend(idat);
        png.extend(crc32(idat).to_be_bytes());
        png.extend(0u32.to_be_bytes());
        png.extend(b"IEND");
        png.extend(crc32(b"IEND").to_be_bytes());
        png
    }

    #[test]
    fn a_header_declaring_a_huge_image_is_refused_before_decoding() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("huge.png");
        std::fs::write(&path, png_header_only(100_000, 100_000)).expect("write");
        let why = reason(read_rgb(&path));
        assert!(why.contains("100000 x 100000"), "{why}");
        assert!(why.contains("at most 16384 pixels a side"), "{why}");
        // Within the side limit but over the bytes limit.
        std::fs::write(&path, png_header_only(16_000, 16_000)).expect("write");
        let why = reason(read_rgb(&path));
        assert!(why.contains("bytes decoded"), "{why}");
    }

    #[test]
    fn real_depth_inside_mask_visib_is_in_the_documented_range() {
        let dataset = BopDataset::load(&data_dir(), "test").unwrap();
        let mut n_instances = 0;
        for (&scene_id, scene) in &dataset.scenes {
            for (&im_id, image) in &scene.images {
                let depth_path = dataset
                    .image_file(scene_id, im_id, ImageFile::Depth)
                    .unwrap();
                let scale = image.camera.depth_scale_mm.unwrap();
                let depth = read_depth_m(&depth_path, scale).unwrap();
                assert_eq!((depth.width, depth.height), (640, 480));
                // The table fills the view: no invalid pixel, nothing beyond 1.9 m.
                assert!(depth.depth_m.iter().all(|&d| d > 0.0 && d <= 1.9));
                let infos = image.gt_info.as_ref().unwrap();
                for (gt_idx, info) in infos.iter().enumerate() {
                    let visib_path = dataset
                        .image_file(scene_id, im_id, ImageFile::MaskVisib { gt_idx })
                        .unwrap();
                    let full_path = dataset
                        .image_file(scene_id, im_id, ImageFile::Mask { gt_idx })
                        .unwrap();
                    let visib = read_mask(&visib_path).unwrap();
                    let full = read_mask(&full_path).unwrap();
                    assert_eq!(visib.count() as u64, info.px_count_visib, "{visib_path:?}");
                    assert_eq!(full.count() as u64, info.px_count_valid, "{full_path:?}");
                    for (i, &inside) in visib.inside.iter().enumerate() {
                        if inside {
                            assert!(full.inside[i], "{visib_path:?}: visible but not in mask");
                            // data/README.md: visible object pixels are at 565-1156 mm.
                            let d = depth.depth_m[i];
                            assert!((0.5645..=1.1565).contains(&d), "{visib_path:?}: {d} m");
                        }
                    }
                    n_instances += 1;
                }
            }
        }
        assert_eq!(n_instances, 62);
    }

    #[test]
    fn depth_is_value_times_scale() {
        // The first pixel of a real image, read raw with the png decoder of `image`.
        let path = data_dir().join("test/000001/depth/000000.png");
        let raw = image::open(&path).unwrap().into_luma16();
        let depth = read_depth_m(&path, 0.1).unwrap();
        let value = raw.get_pixel(10, 20).0[0];
        assert_eq!(
            depth.get(10, 20),
            Some((f64::from(value) * 0.1 * 0.001) as f32)
        );
        assert_eq!(depth.get(640, 0), None);
    }

    #[test]
    fn real_rgb_and_image_paths() {
        let dataset = BopDataset::load(&data_dir(), "test").unwrap();
        let path = dataset.image_file(1, 0, ImageFile::Rgb).unwrap();
        assert!(path.ends_with("test/000001/rgb/000000.png"), "{path:?}");
        let rgb = read_rgb(&path).unwrap();
        assert_eq!(
            (rgb.width, rgb.height, rgb.pixels.len()),
            (640, 480, 640 * 480)
        );
        assert!(rgb.pixels.iter().any(|&p| p != rgb.pixels[0]));
        let mask = dataset
            .image_file(2, 7, ImageFile::MaskVisib { gt_idx: 1 })
            .unwrap();
        assert!(mask.ends_with("test/000002/mask_visib/000007_000001.png"));
        let n_gt = dataset.image(1, 0).unwrap().gt.len();
        assert_eq!(
            dataset.image_file(1, 0, ImageFile::Mask { gt_idx: n_gt }),
            None
        );
        assert_eq!(dataset.image_file(3, 0, ImageFile::Depth), None);
        assert_eq!(dataset.image_file(1, 99, ImageFile::Rgb), None);
    }

    #[test]
    fn broken_images_are_errors_naming_the_file() {
        for name in ["truncated.png", "truncated_header.png"] {
            let path = fixture(name);
            for result in [read_mask(&path).map(|_| ()), read_rgb(&path).map(|_| ())] {
                match result {
                    Err(Error::Image { path: p, reason }) => {
                        assert_eq!(p, path);
                        assert!(reason.contains("truncated"), "{name}: {reason}");
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        let message = read_depth_m(&fixture("depth_8bit.png"), 0.1)
            .unwrap_err()
            .to_string();
        assert!(message.contains("depth_8bit.png"), "{message}");
        assert!(
            message.ends_with("expected a 16-bit grayscale PNG, found 8-bit grayscale"),
            "{message}"
        );
        assert_eq!(
            reason(read_mask(&fixture("not_an_image.png"))),
            "expected an 8-bit grayscale PNG, found no image signature"
        );
        let depth_png = data_dir().join("test/000001/depth/000000.png");
        assert_eq!(
            reason(read_mask(&depth_png)),
            "expected an 8-bit grayscale PNG, found 16-bit grayscale"
        );
        assert_eq!(
            reason(read_rgb(&depth_png)),
            "expected an 8-bit RGB, RGBA or grayscale PNG or JPEG image, found 16-bit grayscale"
        );
        let rgb_png = data_dir().join("test/000001/rgb/000000.png");
        assert_eq!(
            reason(read_depth_m(&rgb_png, 0.1)),
            "expected a 16-bit grayscale PNG, found 8-bit RGB"
        );
        assert!(reason(read_depth_m(&depth_png, 0.0)).contains("depth_scale"));
        assert!(reason(read_depth_m(&depth_png, f64::NAN)).contains("depth_scale"));
        assert!(matches!(
            read_rgb(&fixture("missing.png")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn writers_round_trip_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let depth_in = read_depth_m(&data_dir().join("test/000001/depth/000003.png"), 0.1).unwrap();
        let depth_path = dir.path().join("depth.png");
        write_depth_png_u16(&depth_path, &depth_in, 0.1).unwrap();
        assert_eq!(read_depth_m(&depth_path, 0.1).unwrap(), depth_in);

        let rgb = RgbImage {
            width: 3,
            height: 2,
            pixels: vec![
                [0, 1, 2],
                [255, 0, 0],
                [0, 255, 0],
                [0, 0, 255],
                [7, 7, 7],
                [9, 8, 7],
            ],
        };
        let rgb_path = dir.path().join("rgb.png");
        write_rgb_png(&rgb_path, &rgb).unwrap();
        // Overwriting an existing file works too.
        write_rgb_png(&rgb_path, &rgb).unwrap();
        assert_eq!(read_rgb(&rgb_path).unwrap(), rgb);
        assert_eq!(rgb.get(2, 1), Some([9, 8, 7]));
        assert_eq!(rgb.get(3, 1), None);
        assert_eq!(
            reason(read_mask(&rgb_path)),
            "expected an 8-bit grayscale PNG, found 8-bit RGB"
        );

        let gray_path = dir.path().join("mask.png");
        write_gray_png_u8(&gray_path, 3, 2, &[0, 255, 0, 1, 0, 0]).unwrap();
        let mask = read_mask(&gray_path).unwrap();
        assert_eq!(mask.inside, [false, true, false, true, false, false]);
        assert!(mask.get(1, 0) && !mask.get(0, 0) && !mask.get(5, 5));
        // Grayscale reads as RGB with the value in every channel.
        assert_eq!(read_rgb(&gray_path).unwrap().pixels[1], [255, 255, 255]);

        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["depth.png", "mask.png", "rgb.png"]);
    }

    #[test]
    fn jpeg_reads_as_rgb_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000.jpg");
        let pixels: Vec<u8> = (0..16 * 8 * 3).map(|i| (i % 251) as u8).collect();
        let mut file = std::fs::File::create(&path).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 95)
            .write_image(&pixels, 16, 8, ExtendedColorType::Rgb8)
            .unwrap();
        drop(file);
        let rgb = read_rgb(&path).unwrap();
        assert_eq!((rgb.width, rgb.height), (16, 8));
        assert_eq!(
            reason(read_depth_m(&path, 1.0)),
            "expected a 16-bit grayscale PNG, found a Jpeg file"
        );
    }

    #[test]
    fn writers_refuse_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        assert!(reason(write_gray_png_u8(&path, 3, 2, &[0; 5])).contains("3x2"));
        assert!(reason(write_gray_png_u8(&path, 0, 0, &[])).contains("nonzero size"));
        let depth = |d: f32| DepthImage {
            width: 2,
            height: 1,
            depth_m: vec![1.0, d],
        };
        for bad in [-0.001, f32::NAN, f32::INFINITY, 6.6] {
            let why = reason(write_depth_png_u16(&path, &depth(bad), 0.1));
            assert!(why.contains("pixel (1, 0)"), "{why}");
        }
        // 6.5535 m is the largest depth at 0.1 mm per unit.
        write_depth_png_u16(&path, &depth(6.5535), 0.1).unwrap();
        assert_eq!(read_depth_m(&path, 0.1).unwrap().depth_m, [1.0, 6.5535]);
        assert!(reason(write_depth_png_u16(&path, &depth(1.0), -1.0)).contains("depth_scale"));
        let rgb = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![[0; 3]; 3],
        };
        assert!(reason(write_rgb_png(&path, &rgb)).contains("2x2"));
    }

    fn small_png(color: ExtendedColorType) -> Vec<u8> {
        let n = 12 * 5 * usize::from(color.bits_per_pixel() / 8);
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(&bytes, 12, 5, color)
            .unwrap();
        png
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Truncated or corrupted PNGs give errors, never panics.
        #[test]
        fn damaged_images_never_panic(
            which in 0..3usize,
            cut in 0..1000usize,
            flips in proptest::collection::vec((0..1000usize, any::<u8>()), 0..4),
        ) {
            let color = [ExtendedColorType::L16, ExtendedColorType::L8, ExtendedColorType::Rgb8][which];
            let mut bytes = small_png(color);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(cut.min(bytes.len()));
            let path = Path::new("fuzz.png");
            let _ = decode_depth_m(path, &bytes, 0.1);
            let _ = decode_mask(path, &bytes);
            let _ = decode_rgb(path, &bytes);
        }
    }
}

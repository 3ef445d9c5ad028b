use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/source/testdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture as zune-jpeg (through `image`) decodes it, to RGB.
fn reference(jpeg: &[u8]) -> (usize, usize, Vec<u8>) {
    let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .expect("zune-jpeg decodes the fixture")
        .to_rgb8();
    (
        image.width() as usize,
        image.height() as usize,
        image.into_raw(),
    )
}

fn decode(jpeg: &[u8], width: usize, height: usize) -> std::result::Result<Vec<u8>, JpegFault> {
    let mut rgb = vec![0; width * height * 3];
    MjpegDecoder::new(width, height).decode_rgb(jpeg, &mut rgb)?;
    Ok(rgb)
}

/// Largest and mean absolute difference between two RGB images.
fn differences(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let mut largest = 0;
    let mut sum = 0u64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        largest = largest.max(d);
        sum += u64::from(d);
    }
    (largest, sum as f64 / a.len() as f64)
}

/// The fixtures coded as cameras code (sequential, Huffman), as `make_jpegs.py` makes
/// them.
const SEQUENTIAL_FIXTURES: [&str; 5] = [
    "ycbv_422.jpg",
    "ycbv_420_odd.jpg",
    "ycbv_444_restart.jpg",
    "ycbv_420_restart_rows.jpg",
    "ycbv_grey_odd.jpg",
];

/// Both decoders follow libjpeg (fancy upsampling, JFIF colour), but round differently:
/// zune-jpeg's integer inverse DCT against our float one, and its two-step rounding of
/// 4:2:0 chroma against libjpeg's one step. A sample off by this much is rounding; a
/// wrong table, block order or upsampling is off by tens.
const LARGEST_DIFFERENCE_FROM_ZUNE: u8 = 6;
/// On average nearly every sample agrees.
const MEAN_DIFFERENCE_FROM_ZUNE: f64 = 0.35;

#[test]
fn camera_like_jpegs_decode_as_zune_jpeg_decodes_them() {
    for name in SEQUENTIAL_FIXTURES {
        let jpeg = fixture(name);
        let (width, height, expected) = reference(&jpeg);
        let rgb = decode(&jpeg, width, height).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (largest, mean) = differences(&rgb, &expected);
        eprintln!("{name}: {width}x{height}, largest difference {largest}, mean {mean:.4}");
        assert!(
            largest <= LARGEST_DIFFERENCE_FROM_ZUNE && mean <= MEAN_DIFFERENCE_FROM_ZUNE,
            "{name}: largest difference {largest}, mean {mean}"
        );
    }
}

/// libjpeg-turbo and posed compute the inverse DCT differently (integer "islow" against
/// float) and round the colour conversion alike; the upsampling is the same arithmetic.
const LARGEST_DIFFERENCE_FROM_LIBJPEG: u8 = 2;

/// The top-left and bottom-right 48 x 32 crops of an RGB image, as
/// `testdata/make_jpegs.py` writes libjpeg-turbo's.
fn corners(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let (w, h) = (48, 32);
    let mut out = Vec::new();
    for (x0, y0) in [(0, 0), (width - w, height - h)] {
        for y in y0..y0 + h {
            out.extend_from_slice(&rgb[3 * (y * width + x0)..3 * (y * width + x0 + w)]);
        }
    }
    out
}

#[test]
fn camera_like_jpegs_decode_as_libjpeg_turbo_decodes_them() {
    for name in SEQUENTIAL_FIXTURES {
        let jpeg = fixture(name);
        let (width, height, _) = reference(&jpeg);
        let rgb = decode(&jpeg, width, height).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = fixture(&name.replace(".jpg", ".libjpeg-corners.rgb"));
        let (largest, mean) = differences(&corners(&rgb, width, height), &expected);
        eprintln!("{name}: corners against libjpeg-turbo: largest {largest}, mean {mean:.4}");
        assert!(
            largest <= LARGEST_DIFFERENCE_FROM_LIBJPEG,
            "{name}: largest difference {largest} from libjpeg-turbo, mean {mean}"
        );
    }
}

#[test]
fn grey_jpegs_give_equal_channels() {
    let rgb = decode(&fixture("ycbv_grey_odd.jpg"), 203, 149).expect("decodes");
    assert!(rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(
        rgb.chunks_exact(3).any(|p| p[0] != rgb[0]),
        "not a flat image"
    );
}

#[test]
fn mjpeg_without_huffman_tables_uses_the_standard_ones() {
    // The same entropy-coded data, with and without its DHT segments (which libjpeg
    // filled with the standard tables): the same pixels.
    let with_tables = decode(&fixture("ycbv_422.jpg"), 640, 480).expect("with DHT");
    let without = decode(&fixture("ycbv_422_no_dht.jpg"), 640, 480).expect("without DHT");
    assert!(with_tables == without);
}

/// The DHT segments of a JPEG: (class, id, counts, symbols).
fn huffman_segments(jpeg: &[u8]) -> Vec<(u8, u8, [u8; 16], Vec<u8>)> {
    let mut tables = Vec::new();
    let mut pos = 2;
    while jpeg[pos + 1] != 0xDA {
        let length = usize::from(be16(jpeg, pos + 2).expect("length"));
        if jpeg[pos + 1] == 0xC4 {
            let mut rest = &jpeg[pos + 4..pos + 2 + length];
            while !rest.is_empty() {
                let counts: [u8; 16] = rest[1..17].try_into().expect("16 counts");
                let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                tables.push((
                    rest[0] >> 4,
                    rest[0] & 15,
                    counts,
                    rest[17..17 + total].to_vec(),
                ));
                rest = &rest[17 + total..];
            }
        }
        pos += 2 + length;
    }
    tables
}

#[test]
fn the_standard_tables_are_the_ones_libjpeg_writes() {
    let written = huffman_segments(&fixture("ycbv_422.jpg"));
    let ours = [
        (0, 0, STANDARD_DC_LUMA),
        (1, 0, STANDARD_AC_LUMA),
        (0, 1, STANDARD_DC_CHROMA),
        (1, 1, STANDARD_AC_CHROMA),
    ];
    assert_eq!(written.len(), 4);
    for (class, id, (counts, symbols)) in ours {
        let found = written
            .iter()
            .find(|t| t.0 == class && t.1 == id)
            .expect("libjpeg wrote the table");
        assert_eq!(
            (found.2, found.3.as_slice()),
            (counts, symbols),
            "class {class} id {id}"
        );
        Huffman::new(&counts, symbols).expect("a valid table");
    }
}

#[test]
fn one_decoder_decodes_frame_after_frame_the_same() {
    // Frames with Huffman tables of their own, with restart markers, and with neither:
    // nothing of one frame may leak into the next (the frame without tables must get the
    // standard ones, not the last frame's).
    let names = [
        "ycbv_422_optimized.jpg",
        "ycbv_422_no_dht.jpg",
        "ycbv_444_restart.jpg",
        "ycbv_422_no_dht.jpg",
    ];
    let fresh: Vec<Vec<u8>> = names
        .iter()
        .map(|name| decode(&fixture(name), 640, 480).expect("fresh"))
        .collect();
    let mut decoder = MjpegDecoder::new(640, 480);
    let mut rgb = vec![0; 640 * 480 * 3];
    for _ in 0..2 {
        for (name, expected) in names.iter().zip(&fresh) {
            decoder
                .decode_rgb(&fixture(name), &mut rgb)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(rgb == *expected, "{name} after other frames");
        }
    }
}

#[test]
fn rgb_coded_jpegs_are_unsupported() {
    let mut jpeg = fixture("ycbv_444_restart.jpg");
    let sof = marker_at(&jpeg, 0xC0);
    let sos = marker_at(&jpeg, 0xDA);
    // The component ids of the frame header and of the scan header.
    for (i, id) in b"RGB".iter().enumerate() {
        jpeg[sof + 10 + 3 * i] = *id;
        jpeg[sos + 5 + 2 * i] = *id;
    }
    assert_eq!(
        decode(&jpeg, 640, 480),
        Err(JpegFault::Unsupported("RGB-coded (component ids R, G, B)"))
    );
}

#[test]
fn progressive_jpegs_are_unsupported_not_corrupt() {
    assert_eq!(
        decode(&fixture("ycbv_progressive.jpg"), 160, 120),
        Err(JpegFault::Unsupported("progressive"))
    );
}

#[test]
fn a_jpeg_of_another_size_is_refused_before_decoding() {
    assert_eq!(
        decode(&fixture("ycbv_422.jpg"), 320, 240),
        Err(JpegFault::Size {
            width: 640,
            height: 480
        })
    );
    let mut rgb = vec![0; 10];
    assert_eq!(
        MjpegDecoder::new(640, 480).decode_rgb(&fixture("ycbv_422.jpg"), &mut rgb),
        Err(JpegFault::OutputSize)
    );
}

#[test]
fn truncated_frames_are_corrupt() {
    for name in [
        "ycbv_422.jpg",
        "ycbv_444_restart.jpg",
        "ycbv_420_restart_rows.jpg",
    ] {
        let jpeg = fixture(name);
        let (width, height, _) = reference(&jpeg);
        for keep in [jpeg.len() / 2, jpeg.len() - 100, 1, 0, 300] {
            let result = decode(&jpeg[..keep], width, height);
            assert!(
                matches!(result, Err(JpegFault::Corrupt(_))),
                "{name} cut to {keep} bytes: {result:?}"
            );
        }
        // The end-of-image marker alone may be missing.
        decode(&jpeg[..jpeg.len() - 2], width, height).expect("no EOI");
    }
}

/// The position of the first `marker` (0xFF, `marker`) in `jpeg`.
fn marker_at(jpeg: &[u8], marker: u8) -> usize {
    jpeg.windows(2)
        .position(|w| w == [0xFF, marker])
        .expect("marker present")
}

#[test]
fn other_coding_processes_are_unsupported_and_odd_headers_corrupt() {
    let jpeg = fixture("ycbv_grey_odd.jpg");
    let sof = marker_at(&jpeg, 0xC0);
    for (marker, what) in [
        (0xC2, "progressive"),
        (0xC3, "lossless"),
        (0xC9, "arithmetic-coded"),
        (0xCD, "arithmetic-coded"),
    ] {
        let mut other = jpeg.clone();
        other[sof + 1] = marker;
        assert_eq!(decode(&other, 203, 149), Err(JpegFault::Unsupported(what)));
    }
    // SOF: length (2), precision, height (2), width (2).
    let mut no_width = jpeg.clone();
    no_width[sof + 7..sof + 9].fill(0);
    assert_eq!(
        decode(&no_width, 203, 149),
        Err(JpegFault::Corrupt("a frame of width 0"))
    );
    let mut twelve_bit = jpeg.clone();
    twelve_bit[sof + 4] = 12;
    assert_eq!(
        decode(&twelve_bit, 203, 149),
        Err(JpegFault::Unsupported("samples of other than 8 bits"))
    );
    // SOS: length (2), component count (1), then 2 bytes per component and 3 more.
    let sos = marker_at(&jpeg, 0xDA);
    let mut short_scan = jpeg.clone();
    short_scan[sos + 3] = 5;
    assert_eq!(
        decode(&short_scan, 203, 149),
        Err(JpegFault::Corrupt("a scan of a wrong number of components"))
    );
}

#[test]
fn an_adobe_rgb_jpeg_is_unsupported() {
    let jpeg = fixture("ycbv_444_restart.jpg");
    let mut adobe = jpeg[..2].to_vec();
    adobe.extend_from_slice(b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00");
    adobe.extend_from_slice(&jpeg[2..]);
    assert_eq!(
        decode(&adobe, 640, 480),
        Err(JpegFault::Unsupported("RGB-coded (Adobe transform 0)"))
    );
}

#[test]
fn faults_say_what_is_wrong() {
    assert_eq!(
        JpegFault::Size {
            width: 1280,
            height: 720
        }
        .to_string(),
        "a JPEG of 1280x720, not the negotiated size"
    );
    assert_eq!(
        JpegFault::Corrupt("no start-of-image marker").to_string(),
        "corrupt JPEG: no start-of-image marker"
    );
    assert_eq!(
        decode(b"\x89PNG\r\n", 4, 4),
        Err(JpegFault::Corrupt("no start-of-image marker"))
    );
}

#[test]
fn the_inverse_dct_matches_its_definition() {
    // One coefficient at a time, against T.81's formula in f64.
    let idct = IdctMatrix::new();
    for natural in [0usize, 1, 8, 9, 27, 63] {
        let mut coefficients = [0.0f32; 64];
        coefficients[natural] = 240.0;
        let mut out = [0u8; 64];
        let nonzero = (1 << (natural / 8)) | (1 << (8 + natural % 8));
        inverse_dct(&idct, &mut coefficients, nonzero, &mut out, 8);
        assert!(coefficients.iter().all(|&c| c == 0.0), "left zero");
        let (v, u) = (natural / 8, natural % 8);
        let c = |k: usize| {
            if k == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            }
        };
        for y in 0..8 {
            for x in 0..8 {
                let cos = |i: usize, k: usize| {
                    ((2 * i + 1) as f64 * k as f64 * std::f64::consts::PI / 16.0).cos()
                };
                let f = 0.25 * c(u) * c(v) * 240.0 * cos(x, u) * cos(y, v) + 128.0;
                let expected = f.round().clamp(0.0, 255.0);
                assert!(
                    (f64::from(out[8 * y + x]) - expected).abs() <= 1.0,
                    "coefficient {natural}, sample ({x}, {y}): {} for {f}",
                    out[8 * y + x]
                );
            }
        }
    }
}

#[test]
fn jfif_colours_convert_as_the_standard_says() {
    assert_eq!(ycbcr_to_rgb(128, 128, 128), [128, 128, 128]);
    assert_eq!(ycbcr_to_rgb(255, 128, 128), [255, 255, 255]);
    assert_eq!(ycbcr_to_rgb(0, 128, 128), [0, 0, 0]);
    // Pure red, green and blue as JFIF encodes them (rounded).
    assert_eq!(ycbcr_to_rgb(76, 85, 255), [254, 0, 0]);
    assert_eq!(ycbcr_to_rgb(150, 44, 21), [0, 255, 1]);
    assert_eq!(ycbcr_to_rgb(29, 255, 107), [0, 0, 254]);
}

#[test]
fn fancy_upsampling_weighs_the_nearest_sample_three_quarters() {
    // A 4 x 2 image's chroma: one row of 2 samples, upsampled 2 x 2.
    let plane = [100u8, 200, 0, 0, 0, 0, 0, 0];
    let c = Component {
        stride: 8,
        width: 2,
        height: 1,
        ..Component::default()
    };
    let mut sums = [0i32; 4 + 2];
    let mut out = [0u8; 4];
    upsample_row(&plane, &c, 2, 2, 1, &mut sums, &mut out);
    // 100 at both ends' edges, (3 * 100 + 200) / 4 = 125 and (3 * 200 + 100) / 4 = 175.
    assert_eq!(out, [100, 125, 175, 200]);
    let mut out = [0u8; 3];
    upsample_row(&plane, &c, 2, 1, 0, &mut sums, &mut out);
    assert_eq!(out, [100, 125, 175]);
}

#[test]
fn upsampling_rounds_as_libjpeg() {
    // 2 x 1 (4:2:2): libjpeg biases even outputs by 1/4 and odd ones by 2/4. Samples
    // 102, 100, 102: the second column's outputs are (3 * 100 + 102) / 4 = 100.5 both,
    // which round to 100 (even) and 101 (odd); the third's even one, 101.5, to 101.
    let plane = [102u8, 100, 102, 0, 0, 0, 0, 0];
    let c = Component {
        stride: 8,
        width: 3,
        height: 1,
        ..Component::default()
    };
    let mut sums = [0i32; 3 + 2];
    let mut out = [0u8; 6];
    upsample_row(&plane, &c, 2, 1, 0, &mut sums, &mut out);
    assert_eq!(out, [102, 102, 100, 101, 101, 102]);
    // 1 x 2 (4:4:0): the upper output of each pair biased by 1/4, the lower by 2/4. A
    // column of 100 over 102: output row 1 (lower of the first pair) is 3/4 of 100 and
    // 1/4 of 102, 100.5, which rounds to 101; row 2 (upper of the second) is 3/4 of 102
    // and 1/4 of 100, 101.5, which rounds to 101 too.
    let column = [100u8, 0, 0, 0, 0, 0, 0, 0, 102, 0, 0, 0, 0, 0, 0, 0];
    let c = Component {
        stride: 8,
        width: 1,
        height: 2,
        ..Component::default()
    };
    let mut out = [0u8; 1];
    for (y, expected) in [(0, 100), (1, 101), (2, 101), (3, 102)] {
        upsample_row(&column, &c, 1, 2, y, &mut sums, &mut out);
        assert_eq!(out, [expected], "output row {y}");
    }
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for &(at, value) in edits {
        let i = at % bytes.len();
        bytes[i] = value;
    }
    let keep = bytes.len() - cut % (bytes.len() / 4);
    bytes.truncate(keep);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever a broken camera sends, the decoder returns: an image or a fault, never a
    /// panic, and in time bounded by the image size.
    #[test]
    fn damaged_jpegs_never_panic(
        fixture_index in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..12),
        cut in any::<usize>(),
    ) {
        let (name, width, height) = [
            ("ycbv_grey_odd.jpg", 203, 149),
            ("ycbv_420_odd.jpg", 331, 247),
            ("ycbv_420_restart_rows.jpg", 333, 250),
        ][fixture_index];
        let bytes = mutate(fixture(name), &edits, cut);
        let _ = decode(&bytes, width, height);
    }

    /// Damage inside the headers, where the parsing is.
    #[test]
    fn damaged_headers_never_panic(
        edits in prop::collection::vec((0usize..700, any::<u8>()), 1..6),
    ) {
        let bytes = mutate(fixture("ycbv_420_restart_rows.jpg"), &edits, 0);
        let _ = decode(&bytes, 333, 250);
    }
}

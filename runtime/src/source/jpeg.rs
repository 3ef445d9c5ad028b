//! A JPEG decoder for MJPEG cameras that allocates nothing per frame.
//!
//! A UVC camera at 720p or 1080p sends MJPEG, and the capture thread decodes every frame.
//! The general decoders on crates.io (zune-jpeg, which `image` uses, and jpeg-decoder)
//! allocate their working buffers at every image, and libjpeg-turbo does the same through
//! malloc. This one owns its buffers, sized once for the camera's negotiated size, so a
//! steady-state frame allocates nothing (`runtime/tests/daemon_alloc.rs`).
//!
//! It decodes what cameras send: sequential DCT with Huffman coding (SOF0, SOF1), 8-bit
//! samples, one component (grey) or three (YCbCr, JFIF), each sampled at the full or half
//! resolution in either direction (4:4:4, 4:2:2, 4:2:0, 4:4:0), restart intervals, one
//! interleaved scan or one scan per component, and frames without Huffman tables (most
//! UVC cameras leave them out and mean the standard ones of ITU T.81 annex K.3). Anything
//! else (progressive, lossless, arithmetic coding, 12-bit samples, CMYK, RGB-coded
//! Adobe files, other subsamplings) is [`JpegFault::Unsupported`], for which the caller
//! falls back to a general decoder.
//!
//! The results are libjpeg's to within 2 levels: an exact inverse DCT in f32 (libjpeg's
//! default is an integer approximation), libjpeg's "fancy" (triangle) upsampling of the
//! chroma with its rounding, JFIF's YCbCr to RGB. The tests compare them with
//! libjpeg-turbo's and zune-jpeg's decoding of fixtures libjpeg-turbo encoded
//! (`testdata/make_jpegs.py`). One scan per component and 4:4:0 are written to the
//! standard but have no fixture (libjpeg-turbo through Pillow makes neither).

use std::fmt;

/// Why a JPEG was not decoded. Only `Copy` data, so that a frame's failure costs no
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegFault {
    /// The data breaks the format; what is wrong.
    Corrupt(&'static str),
    /// A valid JPEG this decoder does not handle; what it is.
    Unsupported(&'static str),
    /// The RGB buffer given is not `width * height * 3` bytes for the decoder's size.
    OutputSize,
    /// The image is not of the size the decoder was made for.
    Size {
        /// Width in the frame header, pixels.
        width: u16,
        /// Height in the frame header, pixels.
        height: u16,
    },
}

impl fmt::Display for JpegFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JpegFault::Corrupt(what) => write!(f, "corrupt JPEG: {what}"),
            JpegFault::Unsupported(what) => write!(f, "a JPEG posed does not decode: {what}"),
            JpegFault::OutputSize => write!(f, "an RGB buffer not of the decoder's size"),
            JpegFault::Size { width, height } => {
                write!(f, "a JPEG of {width}x{height}, not the negotiated size")
            }
        }
    }
}

type Result<T> = std::result::Result<T, JpegFault>;

/// The natural (row-major) index of the k-th coefficient in zig-zag order.
const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// ITU T.81 annex K.3: the tables MJPEG frames without a DHT segment are coded with.
/// Code counts per length (1 to 16 bits), then the symbols.
const STANDARD_DC_LUMA: ([u8; 16], &[u8]) = (
    [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
);
const STANDARD_DC_CHROMA: ([u8; 16], &[u8]) = (
    [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
);
const STANDARD_AC_LUMA: ([u8; 16], &[u8]) = (
    [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
);
const STANDARD_AC_CHROMA: ([u8; 16], &[u8]) = (
    [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
    &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
);

/// Codes up to this many bits are decoded by one table lookup.
const FAST_BITS: u32 = 9;

/// A Huffman table, ready to decode.
#[derive(Clone)]
struct Huffman {
    /// For every `FAST_BITS`-bit prefix: `(length << 8) | symbol` of the code it starts
    /// with, 0 when that code is longer.
    fast: [u16; 1 << FAST_BITS],
    /// Largest code of each length (index 1 to 16), -1 where there is none.
    max_code: [i32; 17],
    /// Added to a code of each length to give its symbol's index in `symbols`.
    symbol_offset: [i32; 17],
    symbols: [u8; 256],
    symbol_count: usize,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Self> {
        let mut table = Huffman {
            fast: [0; 1 << FAST_BITS],
            max_code: [-1; 17],
            symbol_offset: [0; 17],
            symbols: [0; 256],
            symbol_count: symbols.len(),
        };
        if symbols.len() > 256 {
            return Err(JpegFault::Corrupt("a Huffman table with over 256 codes"));
        }
        table.symbols[..symbols.len()].copy_from_slice(symbols);
        let mut code: u32 = 0;
        let mut k: usize = 0;
        for length in 1..=16u32 {
            let count = u32::from(counts[length as usize - 1]);
            if code + count > 1 << length {
                return Err(JpegFault::Corrupt(
                    "a Huffman table with more codes than fit",
                ));
            }
            table.symbol_offset[length as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if length <= FAST_BITS {
                    let shift = FAST_BITS - length;
                    let first = (code << shift) as usize;
                    let entry = ((length as u16) << 8) | u16::from(symbols[k]);
                    table.fast[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                table.max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(table)
    }

    fn standard((counts, symbols): ([u8; 16], &[u8])) -> Self {
        match Self::new(&counts, symbols) {
            Ok(table) => table,
            // The standard tables are valid (a unit test builds them).
            Err(_) => unreachable!("the standard Huffman tables are valid"),
        }
    }
}

/// Reads the entropy-coded bits of a scan: undoes the byte stuffing (0xFF 0x00) and stops
/// at a marker, after which it reads zeros and counts them, so that a scan that runs past
/// its data (a truncated frame) is told from one that ends where it should.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The next bits, most significant first.
    bits: u64,
    bit_count: u32,
    at_marker: bool,
    /// Zero bytes fed after the data ended.
    padding_bytes: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            bits: 0,
            bit_count: 0,
            at_marker: false,
            padding_bytes: 0,
        }
    }

    /// Fills the bit buffer to at least 56 bits.
    #[inline]
    fn refill(&mut self) {
        // Most of the time: the next whole bytes that fit, in one go, when none of them
        // is 0xFF (stuffing or a marker, which the byte-wise loop below handles).
        let room_bytes = (63 - self.bit_count) / 8;
        if let (Some(chunk), 1..) = (self.data.get(self.pos..self.pos + 8), room_bytes) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let word = u64::from_be_bytes(word);
            let taken = !0u64 << (64 - 8 * room_bytes);
            // A byte of `!word` that is zero (a 0xFF in the data) sets its top bit here;
            // a borrow may also flag a byte above it, which only sends us the slow way.
            let inverted = !word;
            let ff_bytes =
                inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080;
            if ff_bytes & taken == 0 {
                self.bits |= (word & taken) >> self.bit_count;
                self.pos += room_bytes as usize;
                self.bit_count += 8 * room_bytes;
                return;
            }
        }
        while self.bit_count <= 56 {
            let byte = if self.at_marker {
                self.padding_bytes = self.padding_bytes.saturating_add(1);
                0
            } else {
                match self.data.get(self.pos) {
                    Some(&0xFF) if self.data.get(self.pos + 1) == Some(&0x00) => {
                        self.pos += 2;
                        0xFF
                    }
                    Some(&0xFF) => {
                        self.at_marker = true;
                        continue;
                    }
                    Some(&byte) => {
                        self.pos += 1;
                        byte
                    }
                    None => {
                        self.at_marker = true;
                        continue;
                    }
                }
            };
            self.bits |= u64::from(byte) << (56 - self.bit_count);
            self.bit_count += 8;
        }
    }

    /// The next `n` bits (1 to 16), not consumed; needs a refill before.
    #[inline]
    fn peek(&self, n: u32) -> u32 {
        (self.bits >> (64 - n)) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.bits <<= n;
        self.bit_count -= n;
    }

    /// The next Huffman-coded symbol.
    #[inline]
    fn symbol(&mut self, table: &Huffman) -> Result<u8> {
        if self.bit_count < 32 {
            self.refill();
        }
        let entry = table.fast[self.peek(FAST_BITS) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return Ok(entry as u8);
        }
        for length in FAST_BITS + 1..=16 {
            let code = self.peek(length) as i32;
            if code <= table.max_code[length as usize] {
                self.consume(length);
                let index = code + table.symbol_offset[length as usize];
                return match usize::try_from(index) {
                    Ok(i) if i < table.symbol_count => Ok(table.symbols[i]),
                    _ => Err(JpegFault::Corrupt("a Huffman code outside its table")),
                };
            }
        }
        Err(JpegFault::Corrupt("a bit pattern that is no Huffman code"))
    }

    /// The `n`-bit (0 to 16) signed value that follows a Huffman symbol (T.81 F.2.2.1).
    #[inline]
    fn signed(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        if self.bit_count < n {
            self.refill();
        }
        let raw = self.peek(n) as i32;
        self.consume(n);
        if raw < 1 << (n - 1) {
            raw - (1 << n) + 1
        } else {
            raw
        }
    }

    /// An error when the scan so far read past the end of its data.
    fn check_not_overrun(&self) -> Result<()> {
        if u64::from(self.padding_bytes) * 8 > u64::from(self.bit_count) {
            return Err(JpegFault::Corrupt(
                "the entropy-coded data ends early (a truncated frame)",
            ));
        }
        Ok(())
    }

    /// The position of the marker that ends the entropy-coded data, skipping any bytes
    /// the decoder did not read (as libjpeg does, with a warning there).
    fn marker_position(&self) -> usize {
        let mut pos = self.pos;
        while pos + 1 < self.data.len() {
            if self.data[pos] == 0xFF && self.data[pos + 1] != 0x00 && self.data[pos + 1] != 0xFF {
                return pos;
            }
            pos += 1;
        }
        self.data.len()
    }
}

/// One component of the frame header.
#[derive(Debug, Clone, Copy, Default)]
struct Component {
    id: u8,
    /// Sampling factors (1 or 2).
    h: usize,
    v: usize,
    quant_table: usize,
    /// Bytes per row of its plane.
    stride: usize,
    /// Samples of it in the image, across and down (before upsampling).
    width: usize,
    height: usize,
    decoded: bool,
}

/// The frame header (SOF) and what follows from it.
#[derive(Debug, Clone, Copy, Default)]
struct FrameHeader {
    width: usize,
    height: usize,
    components: [Component; 3],
    component_count: usize,
    h_max: usize,
    v_max: usize,
    mcus_across: usize,
    mcus_down: usize,
}

/// The inverse DCT as a matrix: `IDCT[x][u] = c(u) / 2 * cos((2x + 1) u pi / 16)`, with
/// c(0) = 1 / sqrt(2), else 1.
struct IdctMatrix {
    /// `rows[u]` is column u of the matrix: what coefficient u adds to each of the 8
    /// samples.
    rows: [[f32; 8]; 8],
}

impl IdctMatrix {
    fn new() -> Self {
        let mut rows = [[0.0f32; 8]; 8];
        for (u, row) in rows.iter_mut().enumerate() {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            for (x, value) in row.iter_mut().enumerate() {
                let angle = (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0;
                *value = (c / 2.0 * angle.cos()) as f32;
            }
        }
        Self { rows }
    }
}

/// Decodes the JPEG frames of one camera into RGB, reusing its buffers: see the module
/// documentation.
pub struct MjpegDecoder {
    width: usize,
    height: usize,
    /// One plane of samples per component, laid out in whole MCUs.
    planes: [Vec<u8>; 3],
    /// Quantisation tables (zig-zag order), as floats.
    quant: [[f32; 64]; 4],
    quant_defined: [bool; 4],
    /// Huffman tables by class (0: DC, 1: AC) and id.
    huffman: [[Huffman; 4]; 2],
    huffman_defined: [[bool; 4]; 2],
    standard: [[Huffman; 2]; 2],
    idct: IdctMatrix,
    /// One upsampled row per component.
    rows: [Vec<u8>; 3],
    /// The vertically weighted chroma row of the upsampler.
    column_sums: Vec<i32>,
    restart_interval: usize,
    adobe_rgb: bool,
}

impl fmt::Debug for MjpegDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MjpegDecoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl MjpegDecoder {
    /// A decoder for frames of `width` x `height` pixels; every buffer it will use is
    /// allocated here (about 3 bytes per pixel plus 15 rows and columns of margin).
    pub fn new(width: usize, height: usize) -> Self {
        // Whole MCUs of up to 16 x 16 pixels, for any sampling this decoder takes.
        let plane_len = (width + 15) * (height + 15);
        let dc = [
            Huffman::standard(STANDARD_DC_LUMA),
            Huffman::standard(STANDARD_DC_CHROMA),
        ];
        let ac = [
            Huffman::standard(STANDARD_AC_LUMA),
            Huffman::standard(STANDARD_AC_CHROMA),
        ];
        let blank = || [dc[0].clone(), dc[0].clone(), dc[0].clone(), dc[0].clone()];
        Self {
            width,
            height,
            planes: [vec![0; plane_len], vec![0; plane_len], vec![0; plane_len]],
            quant: [[0.0; 64]; 4],
            quant_defined: [false; 4],
            huffman: [blank(), blank()],
            huffman_defined: [[false; 4]; 2],
            standard: [dc, ac],
            idct: IdctMatrix::new(),
            rows: [vec![0; width], vec![0; width], vec![0; width]],
            column_sums: vec![0; width + 2],
            restart_interval: 0,
            adobe_rgb: false,
        }
    }

    /// The image size the decoder was made for.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Decodes one JPEG into `rgb` (`width * height * 3` bytes, row-major RGB). A grey
    /// JPEG gives R = G = B. On an error `rgb` is left as it was.
    pub fn decode_rgb(&mut self, data: &[u8], rgb: &mut [u8]) -> Result<()> {
        if rgb.len() != self.width * self.height * 3 {
            return Err(JpegFault::OutputSize);
        }
        self.quant_defined = [false; 4];
        self.huffman_defined = [[false; 4]; 2];
        self.restart_interval = 0;
        self.adobe_rgb = false;
        let frame = self.decode_scans(data)?;
        self.write_rgb(&frame, rgb);
        Ok(())
    }

    /// Reads the markers and decodes every scan into the planes.
    fn decode_scans(&mut self, data: &[u8]) -> Result<FrameHeader> {
        if data.get(..2) != Some(&[0xFF, 0xD8]) {
            return Err(JpegFault::Corrupt("no start-of-image marker"));
        }
        let mut pos = 2;
        let mut frame: Option<FrameHeader> = None;
        loop {
            // Markers may be preceded by any number of 0xFF fill bytes.
            if data.get(pos) != Some(&0xFF) {
                return match frame {
                    Some(frame) if all_decoded(&frame) => Ok(frame),
                    Some(_) => Err(JpegFault::Corrupt("the data ends before every scan")),
                    None => Err(JpegFault::Corrupt("the data ends before the frame header")),
                };
            }
            while data.get(pos + 1) == Some(&0xFF) {
                pos += 1;
            }
            let Some(&marker) = data.get(pos + 1) else {
                return Err(JpegFault::Corrupt("the data ends inside a marker"));
            };
            pos += 2;
            match marker {
                0xD9 => {
                    return match frame {
                        Some(frame) if all_decoded(&frame) => Ok(frame),
                        _ => Err(JpegFault::Corrupt("the image ends before every scan")),
                    };
                }
                // Restart markers outside a scan, and TEM, have no length: skip them.
                0xD0..=0xD7 | 0x01 => continue,
                _ => {}
            }
            let segment = segment(data, pos)?;
            pos += 2 + segment.len();
            match marker {
                0xC0 | 0xC1 => {
                    if frame.is_some() {
                        return Err(JpegFault::Corrupt("a second frame header"));
                    }
                    frame = Some(self.frame_header(segment)?);
                }
                0xC2 | 0xC6 | 0xCA | 0xCE => return Err(JpegFault::Unsupported("progressive")),
                0xC3 | 0xC7 | 0xCB | 0xCF => return Err(JpegFault::Unsupported("lossless")),
                0xC5 => return Err(JpegFault::Unsupported("hierarchical")),
                0xC9 | 0xCC | 0xCD => return Err(JpegFault::Unsupported("arithmetic-coded")),
                0xC4 => self.huffman_tables(segment)?,
                0xDB => self.quant_tables(segment)?,
                0xDD => {
                    let interval = be16(segment, 0)
                        .ok_or(JpegFault::Corrupt("a restart interval segment too short"))?;
                    self.restart_interval = usize::from(interval);
                }
                0xDA => {
                    let Some(header) = frame.as_mut() else {
                        return Err(JpegFault::Corrupt("a scan before the frame header"));
                    };
                    pos = self.scan(data, pos, segment, header)?;
                }
                // Adobe APP14: transform 0 means the components are not YCbCr.
                0xEE if segment.len() >= 12 && segment.starts_with(b"Adobe") => {
                    self.adobe_rgb = segment[11] == 0;
                }
                0xDC => return Err(JpegFault::Unsupported("a DNL (height after the scan)")),
                // APPn, COM, DAC-less extensions: nothing posed needs.
                _ => {}
            }
        }
    }

    fn frame_header(&self, segment: &[u8]) -> Result<FrameHeader> {
        let too_short = JpegFault::Corrupt("a frame header too short");
        let precision = *segment.first().ok_or(too_short)?;
        if precision != 8 {
            return Err(JpegFault::Unsupported("samples of other than 8 bits"));
        }
        let height = be16(segment, 1).ok_or(too_short)?;
        let width = be16(segment, 3).ok_or(too_short)?;
        let count = usize::from(*segment.get(5).ok_or(too_short)?);
        if height == 0 {
            return Err(JpegFault::Unsupported("a DNL (height after the scan)"));
        }
        if width == 0 {
            return Err(JpegFault::Corrupt("a frame of width 0"));
        }
        if (usize::from(width), usize::from(height)) != (self.width, self.height) {
            return Err(JpegFault::Size { width, height });
        }
        if count != 1 && count != 3 {
            return Err(if count == 0 {
                JpegFault::Corrupt("a frame of no components")
            } else {
                JpegFault::Unsupported("other than 1 or 3 components")
            });
        }
        if segment.len() < 6 + 3 * count {
            return Err(too_short);
        }
        let mut frame = FrameHeader {
            width: self.width,
            height: self.height,
            component_count: count,
            ..FrameHeader::default()
        };
        for (i, c) in frame.components[..count].iter_mut().enumerate() {
            let bytes = &segment[6 + 3 * i..9 + 3 * i];
            c.id = bytes[0];
            c.h = usize::from(bytes[1] >> 4);
            c.v = usize::from(bytes[1] & 15);
            c.quant_table = usize::from(bytes[2]);
            if !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v) || c.quant_table > 3 {
                return Err(JpegFault::Corrupt(
                    "a component's sampling or table out of range",
                ));
            }
        }
        if count == 1 {
            // One component is never interleaved: an MCU is one block, whatever the factors.
            frame.components[0].h = 1;
            frame.components[0].v = 1;
        }
        let components = &frame.components[..count];
        if components
            .iter()
            .enumerate()
            .any(|(i, c)| components[..i].iter().any(|d| d.id == c.id))
        {
            return Err(JpegFault::Corrupt("two components with one id"));
        }
        frame.h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
        frame.v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
        for c in &frame.components[..count] {
            let fits = |max: usize, f: usize| max.is_multiple_of(f) && max / f <= 2 && max <= 2;
            if !fits(frame.h_max, c.h) || !fits(frame.v_max, c.v) {
                return Err(JpegFault::Unsupported(
                    "a subsampling other than 4:4:4, 4:2:2, 4:2:0 or 4:4:0",
                ));
            }
        }
        frame.mcus_across = frame.width.div_ceil(8 * frame.h_max);
        frame.mcus_down = frame.height.div_ceil(8 * frame.v_max);
        for c in &mut frame.components[..count] {
            c.stride = frame.mcus_across * c.h * 8;
            c.width = (frame.width * c.h).div_ceil(frame.h_max);
            c.height = (frame.height * c.v).div_ceil(frame.v_max);
        }
        Ok(frame)
    }

    fn quant_tables(&mut self, mut segment: &[u8]) -> Result<()> {
        while let Some((&spec, rest)) = segment.split_first() {
            let sixteen_bit = spec >> 4;
            let id = usize::from(spec & 15);
            if sixteen_bit > 1 || id > 3 {
                return Err(JpegFault::Corrupt(
                    "a quantisation table of unknown id or precision",
                ));
            }
            let bytes = if sixteen_bit == 1 { 128 } else { 64 };
            let values = rest
                .get(..bytes)
                .ok_or(JpegFault::Corrupt("a quantisation table segment too short"))?;
            for (k, q) in self.quant[id].iter_mut().enumerate() {
                *q = if sixteen_bit == 1 {
                    f32::from(u16::from_be_bytes([values[2 * k], values[2 * k + 1]]))
                } else {
                    f32::from(values[k])
                };
            }
            self.quant_defined[id] = true;
            segment = &rest[bytes..];
        }
        Ok(())
    }

    fn huffman_tables(&mut self, mut segment: &[u8]) -> Result<()> {
        let too_short = JpegFault::Corrupt("a Huffman table segment too short");
        while let Some((&spec, rest)) = segment.split_first() {
            let class = usize::from(spec >> 4);
            let id = usize::from(spec & 15);
            if class > 1 || id > 3 {
                return Err(JpegFault::Corrupt("a Huffman table of unknown class or id"));
            }
            let counts: &[u8; 16] = rest
                .get(..16)
                .and_then(|c| c.try_into().ok())
                .ok_or(too_short)?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let symbols = rest.get(16..16 + total).ok_or(too_short)?;
            self.huffman[class][id] = Huffman::new(counts, symbols)?;
            self.huffman_defined[class][id] = true;
            segment = &rest[16 + total..];
        }
        Ok(())
    }

    /// Decodes one scan whose header is `segment` and whose data starts at `pos`; returns
    /// the position of the marker after it.
    fn scan(
        &mut self,
        data: &[u8],
        pos: usize,
        segment: &[u8],
        frame: &mut FrameHeader,
    ) -> Result<usize> {
        // Colour that is not YCbCr, as libjpeg recognises it: said before any decoding.
        if frame.component_count == 3 {
            if self.adobe_rgb {
                return Err(JpegFault::Unsupported("RGB-coded (Adobe transform 0)"));
            }
            let ids = frame.components.map(|c| c.id);
            if ids == *b"RGB" {
                return Err(JpegFault::Unsupported("RGB-coded (component ids R, G, B)"));
            }
        }
        let too_short = JpegFault::Corrupt("a scan header too short");
        let count = usize::from(*segment.first().ok_or(too_short)?);
        // Then Ss, Se, Ah and Al, which a sequential scan does not use (libjpeg only warns
        // when they are off).
        if count == 0 || count > frame.component_count || segment.len() < 4 + 2 * count {
            return Err(JpegFault::Corrupt("a scan of a wrong number of components"));
        }
        // (component index, DC table, AC table) of each component in the scan.
        let mut members = [(0usize, 0usize, 0usize); 3];
        for i in 0..count {
            let id = segment[1 + 2 * i];
            let tables = segment[2 + 2 * i];
            let index = frame.components[..frame.component_count]
                .iter()
                .position(|c| c.id == id)
                .ok_or(JpegFault::Corrupt("a scan of a component the frame lacks"))?;
            if members[..i].iter().any(|m| m.0 == index) || frame.components[index].decoded {
                return Err(JpegFault::Corrupt("a component in two scans"));
            }
            let (dc, ac) = (usize::from(tables >> 4), usize::from(tables & 15));
            if dc > 3 || ac > 3 {
                return Err(JpegFault::Corrupt(
                    "a scan naming a Huffman table id above 3",
                ));
            }
            if !self.quant_defined[frame.components[index].quant_table] {
                return Err(JpegFault::Corrupt(
                    "a component whose quantisation table is missing",
                ));
            }
            members[i] = (index, dc, ac);
        }
        // Each member's component index and Huffman tables: the frame's own, or, for a
        // table it did not define (MJPEG without DHT), the standard one (ids 0 and 1).
        let (huffman, defined, standard) = (&self.huffman, &self.huffman_defined, &self.standard);
        let table = |class: usize, id: usize| {
            if defined[class][id] {
                Ok(&huffman[class][id])
            } else {
                standard[class]
                    .get(id)
                    .ok_or(JpegFault::Corrupt("a scan naming a missing Huffman table"))
            }
        };
        let mut coders = [(0, &standard[0][0], &standard[1][0]); 3];
        for (coder, &(index, dc, ac)) in coders.iter_mut().zip(&members[..count]) {
            *coder = (index, table(0, dc)?, table(1, ac)?);
        }
        let coders = &coders[..count];

        let mut bits = BitReader::new(data, pos);
        let mut dc_predictions = [0i32; 3];
        let mut coefficients = [0.0f32; 64];
        // An interleaved scan codes whole MCUs; a scan of one component codes its blocks
        // in rows, as many as cover its samples.
        let (units_across, units_down) = if count == 1 {
            let c = &frame.components[coders[0].0];
            (c.width.div_ceil(8), c.height.div_ceil(8))
        } else {
            (frame.mcus_across, frame.mcus_down)
        };
        let mut next_restart = 0u8;
        let mut units_to_restart = self.restart_interval;
        for unit_y in 0..units_down {
            // A truncated frame stops here rather than decoding the rest as zeros.
            bits.check_not_overrun()?;
            for unit_x in 0..units_across {
                if self.restart_interval > 0 {
                    if units_to_restart == 0 {
                        bits = restart(bits, next_restart)?;
                        next_restart = (next_restart + 1) & 7;
                        dc_predictions = [0; 3];
                        units_to_restart = self.restart_interval;
                    }
                    units_to_restart -= 1;
                }
                for (slot, &(index, dc_table, ac_table)) in coders.iter().enumerate() {
                    let c = frame.components[index];
                    let (h, v) = if count == 1 { (1, 1) } else { (c.h, c.v) };
                    for block_y in 0..v {
                        for block_x in 0..h {
                            let nonzero = decode_block(
                                &mut bits,
                                dc_table,
                                ac_table,
                                &self.quant[c.quant_table],
                                &mut dc_predictions[slot],
                                &mut coefficients,
                            )?;
                            let x = (unit_x * h + block_x) * 8;
                            let y = (unit_y * v + block_y) * 8;
                            let out = &mut self.planes[index][y * c.stride + x..];
                            inverse_dct(&self.idct, &mut coefficients, nonzero, out, c.stride);
                        }
                    }
                }
            }
        }
        bits.check_not_overrun()?;
        for &(index, _, _) in coders {
            frame.components[index].decoded = true;
        }
        Ok(bits.marker_position())
    }

    /// Upsamples the planes and converts them to RGB.
    fn write_rgb(&mut self, frame: &FrameHeader, rgb: &mut [u8]) {
        let width = frame.width;
        for (y, out) in rgb.chunks_exact_mut(3 * width).enumerate() {
            for i in 0..frame.component_count {
                let c = &frame.components[i];
                upsample_row(
                    &self.planes[i],
                    c,
                    frame.h_max / c.h,
                    frame.v_max / c.v,
                    y,
                    &mut self.column_sums,
                    &mut self.rows[i][..width],
                );
            }
            if frame.component_count == 1 {
                for (pixel, &grey) in out.chunks_exact_mut(3).zip(&self.rows[0]) {
                    pixel.fill(grey);
                }
            } else {
                // Converted in place, plane by plane (which compilers vectorise), then
                // interleaved.
                let [luma, cb, cr] = &mut self.rows;
                for ((y, cb), cr) in luma.iter_mut().zip(cb.iter_mut()).zip(cr.iter_mut()) {
                    [*y, *cb, *cr] = ycbcr_to_rgb(*y, *cb, *cr);
                }
                let [r, g, b] = &self.rows;
                for (((pixel, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                    pixel.copy_from_slice(&[r, g, b]);
                }
            }
        }
    }
}

fn all_decoded(frame: &FrameHeader) -> bool {
    frame.components[..frame.component_count]
        .iter()
        .all(|c| c.decoded)
}

/// The big-endian u16 at `at`.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The payload of the marker segment whose length field is at `pos`.
fn segment(data: &[u8], pos: usize) -> Result<&[u8]> {
    let length = be16(data, pos).ok_or(JpegFault::Corrupt("the data ends inside a marker"))?;
    let length = usize::from(length);
    if length < 2 {
        return Err(JpegFault::Corrupt(
            "a marker segment shorter than its length field",
        ));
    }
    data.get(pos + 2..pos + length)
        .ok_or(JpegFault::Corrupt("the data ends inside a marker segment"))
}

/// Reads the restart marker RST`expected` that must end a restart interval, and starts
/// the bit reader afresh after it.
fn restart(bits: BitReader<'_>, expected: u8) -> Result<BitReader<'_>> {
    bits.check_not_overrun()?;
    let pos = bits.marker_position();
    if bits.data.get(pos + 1) != Some(&(0xD0 + expected)) {
        return Err(JpegFault::Corrupt(
            "a restart marker missing or out of order",
        ));
    }
    Ok(BitReader::new(bits.data, pos + 2))
}

/// Decodes one 8 x 8 block's coefficients, dequantised, into `coefficients` (natural
/// order; all zero on entry) and returns which of its rows (bit r) and columns (bit
/// 8 + c) are not all zero.
#[inline]
fn decode_block(
    bits: &mut BitReader<'_>,
    dc_table: &Huffman,
    ac_table: &Huffman,
    quant: &[f32; 64],
    dc_prediction: &mut i32,
    coefficients: &mut [f32; 64],
) -> Result<u16> {
    let category = u32::from(bits.symbol(dc_table)?);
    if category > 11 {
        return Err(JpegFault::Corrupt("a DC difference of over 11 bits"));
    }
    *dc_prediction = dc_prediction.wrapping_add(bits.signed(category));
    coefficients[0] = *dc_prediction as f32 * quant[0];
    // Rows (bits 0 to 7) and columns (bits 8 to 15) with a coefficient that is not zero.
    let mut nonzero = 0x0101u16;
    let mut k = 1;
    while k < 64 {
        let symbol = bits.symbol(ac_table)?;
        let run = usize::from(symbol >> 4);
        let size = u32::from(symbol & 15);
        if size == 0 {
            if run == 15 {
                k += 16;
                continue;
            }
            break;
        }
        k += run;
        if k > 63 {
            return Err(JpegFault::Corrupt("a block of over 64 coefficients"));
        }
        let natural = usize::from(ZIGZAG[k]);
        coefficients[natural] = bits.signed(size) as f32 * quant[k];
        nonzero |= (1 << (natural >> 3)) | (1 << (8 + (natural & 7)));
        k += 1;
    }
    if k > 64 {
        return Err(JpegFault::Corrupt("a block of over 64 coefficients"));
    }
    Ok(nonzero)
}

/// The inverse DCT of `coefficients` (dequantised, natural order; `nonzero` says which
/// rows (bit r) and columns (bit 8 + c) are not all zero), level-shifted, rounded and
/// clamped into 8 x 8 samples of `out`, rows `stride` bytes apart. Leaves `coefficients`
/// all zero.
#[inline]
fn inverse_dct(
    idct: &IdctMatrix,
    coefficients: &mut [f32; 64],
    nonzero: u16,
    out: &mut [u8],
    stride: usize,
) {
    let (row_mask, column_mask) = (nonzero as u8, (nonzero >> 8) as u8);
    if row_mask == 1 && column_mask == 1 {
        // Only the DC coefficient: a flat block.
        let value = to_sample(coefficients[0] / 8.0 + 128.0);
        coefficients[0] = 0.0;
        for row in out.chunks_mut(stride).take(8) {
            row[..8].fill(value);
        }
        return;
    }
    // Down the columns: partial[y][u] = sum over coefficient rows v of
    // IDCT[y][v] * coefficient[v][u].
    let mut partial = [[0.0f32; 8]; 8];
    for v in 0..8 {
        if row_mask & (1 << v) == 0 {
            continue;
        }
        let mut row = [0.0f32; 8];
        row.copy_from_slice(&coefficients[8 * v..8 * v + 8]);
        coefficients[8 * v..8 * v + 8].fill(0.0);
        for (y, partial_row) in partial.iter_mut().enumerate() {
            let weight = idct.rows[v][y];
            for (p, r) in partial_row.iter_mut().zip(row) {
                *p += weight * r;
            }
        }
    }
    // Along the rows: sample[y][x] = sum over u of partial[y][u] * IDCT[x][u]; a
    // coefficient column of zeros adds nothing.
    for (partial_row, out_row) in partial.iter().zip(out.chunks_mut(stride)) {
        let mut samples = [128.0f32; 8];
        for (u, &value) in partial_row.iter().enumerate() {
            if column_mask & (1 << u) == 0 {
                continue;
            }
            for (s, w) in samples.iter_mut().zip(idct.rows[u]) {
                *s += value * w;
            }
        }
        for (o, s) in out_row[..8].iter_mut().zip(samples) {
            *o = to_sample(s);
        }
    }
}

/// `value` rounded to the nearest integer and clamped to 0..=255. Adding 1.5 * 2^23 to a
/// float in that range leaves the rounded integer in the low bits of its mantissa: no
/// float-to-integer conversion, which compilers do one value at a time.
#[inline]
fn to_sample(value: f32) -> u8 {
    (value.clamp(0.0, 255.0) + 12_582_912.0).to_bits() as u8
}

/// Row `y` of the image from component `c`'s plane, upsampled by `h_factor` across and
/// `v_factor` down (1 or 2) with libjpeg's triangle filter ("fancy upsampling"): each
/// output sample weighs its nearest input sample 3/4 and the next nearest 1/4, in each
/// direction; edge samples repeat.
fn upsample_row(
    plane: &[u8],
    c: &Component,
    h_factor: usize,
    v_factor: usize,
    y: usize,
    column_sums: &mut [i32],
    out: &mut [u8],
) {
    let row_at = |row: usize| &plane[row * c.stride..row * c.stride + c.width];
    if h_factor == 1 && v_factor == 1 {
        out.copy_from_slice(&row_at(y)[..out.len()]);
        return;
    }
    // Column sums, weighted 4 in all (vertical weights 3 and 1, or the row alone), with
    // the edge sums repeated on either side: `padded[x + 1]` is column x's.
    let padded = &mut column_sums[..c.width + 2];
    let sums = &mut padded[1..=c.width];
    if v_factor == 2 {
        let near = y / 2;
        let far = if y.is_multiple_of(2) {
            near.saturating_sub(1)
        } else {
            (near + 1).min(c.height - 1)
        };
        for ((s, &n), &f) in sums.iter_mut().zip(row_at(near)).zip(row_at(far)) {
            *s = 3 * i32::from(n) + i32::from(f);
        }
    } else {
        for (s, &n) in sums.iter_mut().zip(row_at(y)) {
            *s = 4 * i32::from(n);
        }
    }
    // libjpeg's rounding, which alternates its bias between neighbouring outputs so
    // that the errors do not all lean one way.
    if h_factor == 1 {
        let bias = if y.is_multiple_of(2) { 1 } else { 2 };
        for (o, &s) in out.iter_mut().zip(sums.iter()) {
            *o = ((s + bias) >> 2) as u8;
        }
        return;
    }
    // In sixteenths: (even, odd) biases of libjpeg's h2v2 (8, 7) and h2v1 (1, 2 in
    // quarters).
    let (even_bias, odd_bias) = if v_factor == 2 { (8, 7) } else { (4, 8) };
    padded[0] = padded[1];
    padded[c.width + 1] = padded[c.width];
    let mut pairs = out.chunks_exact_mut(2);
    for (pair, window) in pairs.by_ref().zip(padded.windows(3)) {
        let here = 3 * window[1];
        pair[0] = ((here + window[0] + even_bias) >> 4) as u8;
        pair[1] = ((here + window[2] + odd_bias) >> 4) as u8;
    }
    if let [odd_last] = pairs.into_remainder() {
        // An odd width: the last sample is the even one of the last column.
        let x = c.width - 1;
        *odd_last = ((3 * padded[x + 1] + padded[x] + even_bias) >> 4) as u8;
    }
}

/// JFIF's YCbCr to RGB (full range), in 16-bit fixed point.
#[inline]
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = i32::from(y) << 16;
    let cb = i32::from(cb) - 128;
    let cr = i32::from(cr) - 128;
    let half = 1 << 15;
    let r = (y + 91_881 * cr + half) >> 16;
    let g = (y - 22_554 * cb - 46_802 * cr + half) >> 16;
    let b = (y + 116_130 * cb + half) >> 16;
    [clamp_u8(r), clamp_u8(g), clamp_u8(b)]
}

#[inline]
fn clamp_u8(value: i32) -> u8 {
    value.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests;

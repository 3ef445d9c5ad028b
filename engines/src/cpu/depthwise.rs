//! Depthwise convolutions (one input and one output channel per group: EfficientNet's
//! 3x3 and 5x5 convolutions), a channel at a time with its sums held in vector registers.
//! Through `kernels::gemm` such a convolution is a product of one row, made once per
//! output row, with the last `ow % 16` columns (10 of the 20 columns of a late
//! EfficientNet stage) in the slow blocked product: 3.3 GMAC/s, a third of the time of an
//! EfficientNet-B3 refiner.
//!
//! The input plane is `kernels::conv`'s padded, phase-split scratch, so every tap reads a
//! contiguous run for a whole output row. Output rows go in blocks of 4 and columns in
//! runs of 16 (two AVX2 registers, four NEON ones) or 8: with 8 (or 16) independent sums
//! the fused multiply-adds do not wait on each other, as they would summing one run
//! through 25 taps. The last run of a row is a whole register wide: it reads up to
//! [`READ_SLACK`] values past its row (the caller's scratch ends with that many more) and
//! stores only its row's columns.
//!
//! Each sum is the bias, then the taps in order, each added with one rounding, as in
//! [`super::tile`]. Runs only where tiles do ([`tile::available`]); the caller uses the
//! matrix product elsewhere.

use super::kernels::{store, Unary};
use super::tile;

/// Taps a channel may have for this kernel (a 7x7 kernel has 49); the weights are copied
/// onto the stack.
pub(crate) const MAX_TAPS: usize = 64;

/// Values a run may read past the end of the input plane: a scratch for this kernel is
/// that much longer.
pub(crate) const READ_SLACK: usize = 16;

/// Output rows summed together.
const BLOCK_ROWS: usize = 4;

/// One output channel of a depthwise convolution.
pub(crate) struct DepthwiseChannel<'p> {
    /// Per tap: unused here (its weight's offset, which the caller resolved into
    /// `weights`), and where its values for output row 0 start in the input plane.
    taps: &'p [[usize; 2]],
    /// The taps' weights, in tap order.
    weights: &'p [f32],
    /// How far the taps move in the input plane from one output row to the next.
    row_step: usize,
    /// Output columns.
    width: usize,
    bias: f32,
    /// The largest offset of `taps`, which every load is checked against
    /// (`checked_base`): found here, so that no caller's number lets a load out of the
    /// plane.
    max_offset: usize,
}

impl<'p> DepthwiseChannel<'p> {
    /// A channel whose output rows are `width` columns; see the fields.
    pub(crate) fn new(
        (taps, weights): (&'p [[usize; 2]], &'p [f32]),
        row_step: usize,
        width: usize,
        bias: f32,
    ) -> DepthwiseChannel<'p> {
        DepthwiseChannel {
            taps,
            weights,
            row_step,
            width,
            bias,
            max_offset: taps.iter().map(|&[_, offset]| offset).max().unwrap_or(0),
        }
    }
}

/// Writes `activation(bias + sum over taps of weight x input)` over the channel's output
/// plane `out` (rows of `channel.width`). `plane` is the input plane followed by at least
/// [`READ_SLACK`] values of any content. Does nothing where [`tile::available`] is false.
#[inline(always)]
pub(crate) fn channel(
    channel: &DepthwiseChannel<'_>,
    out: &mut [f32],
    plane: &[f32],
    activation: Option<Unary>,
) {
    debug_assert_eq!(channel.taps.len(), channel.weights.len());
    if !tile::available() || channel.width == 0 {
        return;
    }
    let rows = out.len() / channel.width;
    let mut blocks = out.chunks_exact_mut(BLOCK_ROWS * channel.width);
    for (index, rows) in (&mut blocks).enumerate() {
        let start = index * BLOCK_ROWS * channel.row_step;
        rows_of::<BLOCK_ROWS>(channel, rows, plane, start, activation);
    }
    let rest = blocks.into_remainder();
    let start = rows / BLOCK_ROWS * BLOCK_ROWS * channel.row_step;
    match rows % BLOCK_ROWS {
        1 => rows_of::<1>(channel, rest, plane, start, activation),
        2 => rows_of::<2>(channel, rest, plane, start, activation),
        3 => rows_of::<3>(channel, rest, plane, start, activation),
        _ => {}
    }
}

/// `R` output rows (`out`, rows of `channel.width`), the first of which reads the plane
/// from `start`: runs of 16 columns, the last one 8 wide where 8 or fewer are left.
#[inline(always)]
fn rows_of<const R: usize>(
    channel: &DepthwiseChannel<'_>,
    out: &mut [f32],
    plane: &[f32],
    start: usize,
    activation: Option<Unary>,
) {
    let width = channel.width;
    let mut column = 0;
    while column < width {
        let valid = (width - column).min(16);
        let mut sums = [[0f32; 16]; R];
        if valid > 8 {
            run::<R, 2>(channel, &mut sums, plane, (start, column));
        } else {
            run::<R, 1>(channel, &mut sums, plane, (start, column));
        }
        for (r, row_sums) in sums.iter().enumerate() {
            let at = r * width + column;
            store(&mut out[at..at + valid], &row_sums[..valid], activation);
        }
        column += valid;
    }
}

/// Sums `R` rows x `N` 8-column halves of a run from `column` into `sums`.
#[inline(always)]
fn run<const R: usize, const N: usize>(
    channel: &DepthwiseChannel<'_>,
    sums: &mut [[f32; 16]; R],
    plane: &[f32],
    at: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `channel` runs only when `available` found AVX2 and FMA.
        unsafe { run_avx2_fma::<R, N>(channel, sums, plane, at) }
    }
    #[cfg(target_arch = "aarch64")]
    {
        run_neon::<R, N>(channel, sums, plane, at)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (channel, sums, plane, at);
        unreachable!("no depthwise kernel on this architecture: `available` is false");
    }
}

/// A pointer to `plane[first]`, after checking once for a whole run that every tap of
/// `R` rows from there reads inside `plane`: the loads need no check of their own (25
/// bounds checks per register cost as much as the loads and multiply-adds they guard).
#[inline(always)]
fn checked_base<const R: usize>(
    channel: &DepthwiseChannel<'_>,
    plane: &[f32],
    first: usize,
    run_len: usize,
) -> *const f32 {
    let last_row = (R - 1) * channel.row_step;
    let end = first + last_row + channel.max_offset + run_len;
    assert!(end <= plane.len(), "depthwise run past its plane");
    plane[first..].as_ptr()
}

/// [`run`] with AVX2 and FMA: one register per row and 8 columns.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma<const R: usize, const N: usize>(
    channel: &DepthwiseChannel<'_>,
    sums: &mut [[f32; 16]; R],
    plane: &[f32],
    (start, column): (usize, usize),
) {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };
    let base = checked_base::<R>(channel, plane, start + column, 8 * N);
    let mut acc: [[__m256; N]; R] = [[_mm256_set1_ps(channel.bias); N]; R];
    for (&[_, offset], &w) in channel.taps.iter().zip(channel.weights) {
        let w = _mm256_set1_ps(w);
        for (r, row) in acc.iter_mut().enumerate() {
            for (q, register) in row.iter_mut().enumerate() {
                // SAFETY: `checked_base` checked that every tap's run of 8 * N values
                // for each of the R rows lies in `plane`: an unaligned load of 8 of them.
                let lanes =
                    unsafe { _mm256_loadu_ps(base.add(r * channel.row_step + offset + 8 * q)) };
                *register = _mm256_fmadd_ps(w, lanes, *register);
            }
        }
    }
    for (row_sums, row) in sums.iter_mut().zip(&acc) {
        for (q, &register) in row.iter().enumerate() {
            // SAFETY: a row of `sums` holds 16 >= 8 * N floats: an unaligned store of 8.
            unsafe { _mm256_storeu_ps(row_sums.as_mut_ptr().add(8 * q), register) };
        }
    }
}

/// [`run`] with NEON: two registers per row and 8 columns.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn run_neon<const R: usize, const N: usize>(
    channel: &DepthwiseChannel<'_>,
    sums: &mut [[f32; 16]; R],
    plane: &[f32],
    (start, column): (usize, usize),
) {
    use std::arch::aarch64::{float32x4_t, vdupq_n_f32, vfmaq_n_f32, vld1q_f32, vst1q_f32};
    // SAFETY: NEON is part of the aarch64 baseline; registers only.
    let bias = unsafe { vdupq_n_f32(channel.bias) };
    // Two 4-lane registers per 8 columns; only the first 2 * N are used.
    let base = checked_base::<R>(channel, plane, start + column, 8 * N);
    let mut acc: [[float32x4_t; 4]; R] = [[bias; 4]; R];
    for (&[_, offset], &w) in channel.taps.iter().zip(channel.weights) {
        for (r, row) in acc.iter_mut().enumerate() {
            for (q, register) in row.iter_mut().take(2 * N).enumerate() {
                // SAFETY: NEON is part of the aarch64 baseline, and `checked_base`
                // checked that every tap's run of 8 * N values for each of the R rows
                // lies in `plane`: a load of 4 of them.
                *register = unsafe {
                    let lanes = vld1q_f32(base.add(r * channel.row_step + offset + 4 * q));
                    vfmaq_n_f32(*register, lanes, w)
                };
            }
        }
    }
    for (row_sums, row) in sums.iter_mut().zip(&acc) {
        for (lanes, &register) in row_sums.chunks_exact_mut(4).zip(row).take(2 * N) {
            // SAFETY: NEON is part of the aarch64 baseline; `lanes` holds the 4 floats
            // written.
            unsafe { vst1q_f32(lanes.as_mut_ptr(), register) };
        }
    }
}

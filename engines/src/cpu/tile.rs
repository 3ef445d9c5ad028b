//! The register-tiled core of [`super::kernels`]' matrix product: 6 output rows x 16
//! columns held in vector registers while the reduction runs, with fused multiply-adds
//! (AVX2 + FMA on x86_64 when the CPU has them, NEON on aarch64, where both are always
//! there). On a network of CosyPose's size (an EfficientNet-B3 refiner) three quarters of
//! the time is 1x1 convolutions, which are these products; the blocked product of
//! `kernels::gemm` keeps its sums in memory, and runs at about a quarter of this speed.
//!
//! Sums keep `kernels::gemm`'s order (the bias, then the terms in reduction order), but
//! each term is added with one rounding instead of two, so the results differ from the
//! portable path in the last bits.

use super::kernels::{store, GemmBias, Out, Unary};

/// Rows of a tile.
pub(crate) const TILE_ROWS: usize = 6;
/// Columns of a tile.
pub(crate) const TILE_COLUMNS: usize = 16;
/// Reduction terms packed at a time: the tile's packed weights (6 KiB) stay in L1.
const REDUCTION_BLOCK: usize = 256;
/// Bytes of `b` (a block of the reduction x some columns) that every tile of rows reads
/// in turn: they stay in cache between tiles (half the L2 of a Cortex-A78AE core on
/// Orin). Without this, every 6 rows read all of `b` from memory again: the product of a
/// 1x1 convolution over 4,800 pixels and 192 channels ran at 13 GMAC/s.
const PANEL_BYTES: usize = 128 * 1024;
/// Floats of a tile's packed weights ([`product`]'s working space).
pub(crate) const PACKED_LEN: usize = REDUCTION_BLOCK * TILE_ROWS;

/// Where a tiled product reads and writes; the same meaning as `kernels::Gemm`.
pub(crate) struct TileProduct<'p> {
    pub(crate) rows: &'p [[usize; 2]],
    pub(crate) reduction: &'p [[usize; 2]],
    pub(crate) a_base: usize,
    pub(crate) b_base: usize,
    /// Added to a row's output offset with wrapping, as in `kernels::Gemm`.
    pub(crate) c_base: usize,
}

#[cfg(test)]
thread_local! {
    /// Set by a test to run the portable product on this thread.
    pub(crate) static OFF_IN_TESTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this CPU runs the tiles.
#[inline(always)]
pub(crate) fn available() -> bool {
    #[cfg(test)]
    if OFF_IN_TESTS.with(std::cell::Cell::get) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Computes every row x `columns` (whose length is a multiple of 16), writing
/// `activation(bias + sum)`: panels of columns, each in tiles of 6 rows, then one of the
/// rows left. Does nothing where [`available`] is false; the caller computes what is
/// left. Inlined, like the rest of the run, into each instruction-set variant of
/// `PlannedGraph::run` (so that the activation applied as tiles are stored runs in AVX2
/// and FMA where the CPU has them).
#[inline(always)]
pub(crate) fn product<O: Out + ?Sized>(
    product: &TileProduct<'_>,
    (out, a, b): (&mut O, &[f32], &[f32]),
    columns: std::ops::Range<usize>,
    bias: GemmBias<'_>,
    activation: Option<Unary>,
    packed: &mut [f32; PACKED_LEN],
) {
    // Not just a debug check: a part of a step split by columns relies on it to write
    // only its own columns.
    assert_eq!(
        columns.len() % TILE_COLUMNS,
        0,
        "tiles over a partial run of columns"
    );
    if !available() {
        return;
    }
    let terms = product.reduction.len().clamp(1, REDUCTION_BLOCK);
    let panel =
        (PANEL_BYTES / (terms * std::mem::size_of::<f32>()) / TILE_COLUMNS).max(1) * TILE_COLUMNS;
    for panel_start in columns.clone().step_by(panel) {
        let panel_columns = panel_start..(panel_start + panel).min(columns.end);
        let mut tiles = product.rows.chunks_exact(TILE_ROWS);
        let ranges = |first: usize| (first, panel_columns.clone());
        for (index, rows) in (&mut tiles).enumerate() {
            let first = ranges(index * TILE_ROWS);
            rows_of::<TILE_ROWS, O>(
                product,
                rows,
                first,
                (&mut *out, a, b),
                bias,
                activation,
                packed,
            );
        }
        let rest = tiles.remainder();
        let first = ranges(product.rows.len() - rest.len());
        let io = (&mut *out, a, b);
        match rest.len() {
            1 => rows_of::<1, O>(product, rest, first, io, bias, activation, packed),
            2 => rows_of::<2, O>(product, rest, first, io, bias, activation, packed),
            3 => rows_of::<3, O>(product, rest, first, io, bias, activation, packed),
            4 => rows_of::<4, O>(product, rest, first, io, bias, activation, packed),
            5 => rows_of::<5, O>(product, rest, first, io, bias, activation, packed),
            _ => {}
        }
    }
}

/// `R` rows (the first of which is row `first` of the product, for its bias) x
/// `columns`: for each block of the reduction, the rows' weights packed once, then every
/// tile of 16 columns summed in registers over the block. Between blocks the sums wait in
/// `out`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_of<const R: usize, O: Out + ?Sized>(
    product: &TileProduct<'_>,
    rows: &[[usize; 2]],
    (first, columns): (usize, std::ops::Range<usize>),
    (out, a, b): (&mut O, &[f32], &[f32]),
    bias: GemmBias<'_>,
    activation: Option<Unary>,
    packed: &mut [f32; PACKED_LEN],
) {
    let blocks = product.reduction.len().div_ceil(REDUCTION_BLOCK);
    for (block_index, block) in product.reduction.chunks(REDUCTION_BLOCK).enumerate() {
        for (k, &[a_k, _]) in block.iter().enumerate() {
            for (r, &[a_r, _]) in rows.iter().enumerate() {
                packed[k * R + r] = a[product.a_base + a_r + a_k];
            }
        }
        let packed = &packed[..block.len() * R];
        let last_block = block_index + 1 == blocks;
        for column in columns.clone().step_by(TILE_COLUMNS) {
            let mut acc = [[0f32; TILE_COLUMNS]; R];
            for (r, (row, &[_, c_r])) in acc.iter_mut().zip(rows).enumerate() {
                if block_index > 0 {
                    let c = product.c_base.wrapping_add(c_r) + column;
                    row.copy_from_slice(out.run(c, TILE_COLUMNS));
                    continue;
                }
                match bias {
                    GemmBias::None => {}
                    GemmBias::PerRow(bias) => row.fill(bias[first + r]),
                    GemmBias::PerColumn(bias) => {
                        row.copy_from_slice(&bias[column..column + TILE_COLUMNS])
                    }
                }
            }
            accumulate::<R>(&mut acc, packed, block, b, product.b_base + column);
            for (row, &[_, c_r]) in acc.iter().zip(rows) {
                let c = product.c_base.wrapping_add(c_r) + column;
                store(
                    out.run(c, TILE_COLUMNS),
                    row,
                    activation.filter(|_| last_block),
                );
            }
        }
    }
}

/// `acc[r][j] += packed[k * R + r] * b[b_start + block[k].1 + j]` for every k in order.
#[inline(always)]
fn accumulate<const R: usize>(
    acc: &mut [[f32; TILE_COLUMNS]; R],
    packed: &[f32],
    block: &[[usize; 2]],
    b: &[f32],
    b_start: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `product` runs only when `available` found AVX2 and FMA.
        unsafe { accumulate_avx2_fma(acc, packed, block, b, b_start) }
    }
    #[cfg(target_arch = "aarch64")]
    {
        accumulate_neon(acc, packed, block, b, b_start)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (acc, packed, block, b, b_start);
        unreachable!("no tiles on this architecture: `available` is false");
    }
}

/// [`accumulate`] with AVX2 and FMA: two 8-lane registers per row.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2_fma<const R: usize>(
    acc: &mut [[f32; TILE_COLUMNS]; R],
    packed: &[f32],
    block: &[[usize; 2]],
    b: &[f32],
    b_start: usize,
) {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };
    let mut c: [[__m256; 2]; R] =
        // SAFETY: each row of `acc` holds 16 floats: two unaligned loads of 8.
        std::array::from_fn(|r| unsafe {
            [
                _mm256_loadu_ps(acc[r].as_ptr()),
                _mm256_loadu_ps(acc[r].as_ptr().add(8)),
            ]
        });
    for (weights, &[_, b_k]) in packed.chunks_exact(R).zip(block) {
        let x = &b[b_start + b_k..b_start + b_k + TILE_COLUMNS];
        // SAFETY: `x` holds 16 floats (sliced above): two unaligned loads of 8.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
            )
        };
        for (row, &w) in c.iter_mut().zip(weights) {
            let w = _mm256_set1_ps(w);
            row[0] = _mm256_fmadd_ps(w, x0, row[0]);
            row[1] = _mm256_fmadd_ps(w, x1, row[1]);
        }
    }
    for (row, registers) in acc.iter_mut().zip(&c) {
        // SAFETY: each row of `acc` holds 16 floats: two unaligned stores of 8.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), registers[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), registers[1]);
        }
    }
}

/// [`accumulate`] with NEON: four 4-lane registers per row.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn accumulate_neon<const R: usize>(
    acc: &mut [[f32; TILE_COLUMNS]; R],
    packed: &[f32],
    block: &[[usize; 2]],
    b: &[f32],
    b_start: usize,
) {
    use std::arch::aarch64::{float32x4_t, vfmaq_n_f32, vld1q_f32, vst1q_f32};
    let mut c: [[float32x4_t; 4]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|q| {
            let lanes = &acc[r][4 * q..4 * q + 4];
            // SAFETY: NEON is part of the aarch64 baseline; `lanes` holds the 4 floats read.
            unsafe { vld1q_f32(lanes.as_ptr()) }
        })
    });
    for (weights, &[_, b_k]) in packed.chunks_exact(R).zip(block) {
        let x = &b[b_start + b_k..b_start + b_k + TILE_COLUMNS];
        let x: [float32x4_t; 4] = std::array::from_fn(|q| {
            let lanes = &x[4 * q..4 * q + 4];
            // SAFETY: NEON is part of the aarch64 baseline; `lanes` holds the 4 floats read.
            unsafe { vld1q_f32(lanes.as_ptr()) }
        });
        for (row, &w) in c.iter_mut().zip(weights) {
            for (register, &xq) in row.iter_mut().zip(&x) {
                // SAFETY: NEON is part of the aarch64 baseline; registers only.
                *register = unsafe { vfmaq_n_f32(*register, xq, w) };
            }
        }
    }
    for (row, registers) in acc.iter_mut().zip(&c) {
        for (lanes, &register) in row.chunks_exact_mut(4).zip(registers) {
            // SAFETY: NEON is part of the aarch64 baseline; `lanes` holds the 4 floats
            // written.
            unsafe { vst1q_f32(lanes.as_mut_ptr(), register) };
        }
    }
}

//! The numeric kernels of the planned executor: plain safe Rust over `f32` slices (but for
//! the register tiles of [`tile`], which use intrinsics), written
//! so the compiler vectorises the inner loops (contiguous rows, no calls in the loop body).
//! Every index a kernel uses is checked by the planner when it lays the step out; a kernel
//! still indexes through bounds-checked slices, so a planning mistake is a panic in a test,
//! never a wrong read.

use super::{depthwise, tile};

/// Largest rank the strided loops handle (after merging, real networks use 1 to 4).
pub(crate) const MAX_RANK: usize = 8;

/// An N-d walk over an output and up to two operands, each with its own strides (0 where
/// an operand is broadcast or an output axis is reduced). Adjacent axes that are contiguous
/// for every operand are merged at construction, so the innermost loop is as long as the
/// layout allows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StridedWalk {
    rank: usize,
    dims: [usize; MAX_RANK],
    /// Strides of the output, then of each operand.
    strides: [[isize; MAX_RANK]; 3],
}

impl StridedWalk {
    /// A walk over `dims` with the given strides (output first). `None` when the rank is
    /// too high.
    pub(crate) fn new(dims: &[usize], strides: [&[isize]; 3]) -> Option<StridedWalk> {
        if dims.contains(&0) {
            // Nothing to visit: one row of length 0.
            return Some(StridedWalk {
                rank: 1,
                dims: [0; MAX_RANK],
                strides: [[0; MAX_RANK]; 3],
            });
        }
        // Drop unit axes, then merge axis i into i + 1 when every stride agrees.
        let mut kept_dims = [1usize; MAX_RANK];
        let mut kept = [[0isize; MAX_RANK]; 3];
        let mut rank = 0;
        for (axis, &dim) in dims.iter().enumerate() {
            if dim == 1 {
                continue;
            }
            if rank > 0 {
                let prev = rank - 1;
                let mergeable = (0..3).all(|o| kept[o][prev] == strides[o][axis] * dim as isize);
                if mergeable {
                    kept_dims[prev] *= dim;
                    for (o, stride) in strides.iter().enumerate() {
                        kept[o][prev] = stride[axis];
                    }
                    continue;
                }
            }
            if rank == MAX_RANK {
                return None;
            }
            kept_dims[rank] = dim;
            for (o, stride) in strides.iter().enumerate() {
                kept[o][rank] = stride[axis];
            }
            rank += 1;
        }
        if rank == 0 {
            // A scalar: one inner loop of length 1.
            rank = 1;
        }
        Some(StridedWalk {
            rank,
            dims: kept_dims,
            strides: kept,
        })
    }

    /// Calls `inner(offsets, len, inner_strides)` for every innermost row, offsets being
    /// those of the row's first element (output, operand a, operand b).
    #[inline(always)]
    fn for_each_row(&self, mut inner: impl FnMut([isize; 3], usize, [isize; 3])) {
        let last = self.rank - 1;
        let len = self.dims[last];
        let inner_strides = [
            self.strides[0][last],
            self.strides[1][last],
            self.strides[2][last],
        ];
        let mut index = [0usize; MAX_RANK];
        let mut offsets = [0isize; 3];
        loop {
            inner(offsets, len, inner_strides);
            // Odometer over the outer axes.
            let mut axis = last;
            loop {
                if axis == 0 {
                    return;
                }
                axis -= 1;
                index[axis] += 1;
                for (o, offset) in offsets.iter_mut().enumerate() {
                    *offset += self.strides[o][axis];
                }
                if index[axis] < self.dims[axis] {
                    break;
                }
                for (o, offset) in offsets.iter_mut().enumerate() {
                    *offset -= self.strides[o][axis] * self.dims[axis] as isize;
                }
                index[axis] = 0;
            }
        }
    }
}

/// `out[i] = f(a[i], b[i])` with broadcasting (the walk's strides).
#[inline(always)]
pub(crate) fn binary(
    walk: &StridedWalk,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    walk.for_each_row(|[o, ao, bo], len, [os, as_, bs]| {
        let (o, ao, bo) = (o as usize, ao as usize, bo as usize);
        let out = &mut out[o..o + len];
        match (os, as_, bs) {
            (1, 1, 1) => {
                for ((y, &x), &z) in out.iter_mut().zip(&a[ao..ao + len]).zip(&b[bo..bo + len]) {
                    *y = f(x, z);
                }
            }
            (1, 1, 0) => {
                let z = b[bo];
                for (y, &x) in out.iter_mut().zip(&a[ao..ao + len]) {
                    *y = f(x, z);
                }
            }
            (1, 0, 1) => {
                let x = a[ao];
                for (y, &z) in out.iter_mut().zip(&b[bo..bo + len]) {
                    *y = f(x, z);
                }
            }
            _ => {
                for (i, y) in out.iter_mut().enumerate() {
                    let x = a[(ao as isize + i as isize * as_) as usize];
                    let z = b[(bo as isize + i as isize * bs) as usize];
                    *y = f(x, z);
                }
            }
        }
    });
}

/// Partial results a [`reduce`] keeps for a contiguous row.
const REDUCE_LANES: usize = 16;

/// `out[reduced index] = f(out[..], x[i])` over every element of `x`; the walk's output
/// strides are 0 on the reduced axes, and `out` holds the reducer's identity beforehand.
/// `f` must be associative and commutative up to rounding: a long contiguous row is
/// reduced in [`REDUCE_LANES`] interleaved parts (a sum then rounds differently from a
/// left-to-right sum, and typically errs less).
#[inline(always)]
pub(crate) fn reduce(walk: &StridedWalk, out: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32) {
    walk.for_each_row(|[o, xo, _], len, [os, xs, _]| {
        if os == 0 && xs == 1 && len >= 2 * REDUCE_LANES {
            // A contiguous row into one value: REDUCE_LANES partial results side by side
            // (one vector), combined at the end, instead of one chain of dependent adds.
            let row = &x[xo as usize..xo as usize + len];
            let mut chunks = row.chunks_exact(REDUCE_LANES);
            let mut lanes = [0f32; REDUCE_LANES];
            if let Some(first) = chunks.next() {
                lanes.copy_from_slice(first);
            }
            for chunk in &mut chunks {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane = f(*lane, v);
                }
            }
            let acc = lanes
                .iter()
                .fold(out[o as usize], |acc, &lane| f(acc, lane));
            out[o as usize] = chunks.remainder().iter().fold(acc, |acc, &v| f(acc, v));
        } else if os == 0 {
            let mut acc = out[o as usize];
            for i in 0..len {
                acc = f(acc, x[(xo + i as isize * xs) as usize]);
            }
            out[o as usize] = acc;
        } else {
            for i in 0..len {
                let y = &mut out[(o + i as isize * os) as usize];
                *y = f(*y, x[(xo + i as isize * xs) as usize]);
            }
        }
    });
}

/// `out[i] = x[i]` through the walk's strides (transposes, slices, pads, concatenations,
/// broadcasts).
#[inline(always)]
pub(crate) fn copy(walk: &StridedWalk, out: &mut [f32], x: &[f32], out_base: usize, x_base: usize) {
    walk.for_each_row(|[o, xo, _], len, [os, xs, _]| {
        let o = out_base as isize + o;
        let xo = x_base as isize + xo;
        if os == 1 && xs == 1 {
            out[o as usize..o as usize + len].copy_from_slice(&x[xo as usize..xo as usize + len]);
        } else {
            for i in 0..len as isize {
                out[(o + i * os) as usize] = x[(xo + i * xs) as usize];
            }
        }
    });
}

/// Element-wise functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unary {
    Sigmoid,
    Silu,
    Exp,
    Tanh,
    Abs,
    Neg,
    Sqrt,
    Recip,
    Square,
}

impl Unary {
    /// The function for tract's element-wise op of that name.
    pub(crate) fn from_tract_name(name: &str) -> Option<Unary> {
        Some(match name {
            "Sigmoid" => Unary::Sigmoid,
            "Silu" => Unary::Silu,
            "Exp" => Unary::Exp,
            "Tanh" => Unary::Tanh,
            "Abs" => Unary::Abs,
            "Neg" => Unary::Neg,
            "Sqrt" => Unary::Sqrt,
            "Recip" => Unary::Recip,
            "Square" => Unary::Square,
            _ => return None,
        })
    }
}

/// `out = f(x)`, same length. With fused multiply-adds where the CPU has them
/// ([`tile::available`], as the tiles decide: AVX2 + FMA on x86_64, always on aarch64),
/// which makes SiLU 1.8x faster; the portable polynomials otherwise. On x86_64 the fused
/// form is one instruction only when inlined into code compiled for FMA, as it is in
/// `PlannedGraph::run`'s AVX2 + FMA build (elsewhere `mul_add` is a call to the C
/// library's `fmaf`: the same bits, slowly). A function of its own compiled for FMA
/// would not be inlined into the tiles' stores, and a call per 16 values cost 4% of an
/// EfficientNet-B3 run.
#[inline(always)]
pub(crate) fn unary(op: Unary, out: &mut [f32], x: &[f32]) {
    if tile::available() {
        return unary_with::<Fused>(op, out, x);
    }
    unary_with::<Separate>(op, out, x)
}

#[inline(always)]
fn unary_with<M: MulAdd>(op: Unary, out: &mut [f32], x: &[f32]) {
    #[inline(always)]
    fn map(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
        for (y, &v) in out.iter_mut().zip(x) {
            *y = f(v);
        }
    }
    match op {
        Unary::Sigmoid => map(out, x, sigmoid_with::<M>),
        Unary::Silu => map(out, x, |v| v * sigmoid_with::<M>(v)),
        Unary::Exp => map(out, x, exp_with::<M>),
        Unary::Tanh => map(out, x, tanh_with::<M>),
        Unary::Abs => map(out, x, f32::abs),
        Unary::Neg => map(out, x, |v| -v),
        Unary::Sqrt => map(out, x, f32::sqrt),
        Unary::Recip => map(out, x, |v| 1.0 / v),
        Unary::Square => map(out, x, |v| v * v),
    }
}

/// `out = x`, or `out = f(x)` with an activation.
#[inline(always)]
pub(crate) fn store(out: &mut [f32], x: &[f32], activation: Option<Unary>) {
    match activation {
        None => out.copy_from_slice(x),
        Some(op) => unary(op, out, x),
    }
}

/// How the polynomials below compute `a * b + c`: Rust never contracts the two into a
/// fused multiply-add by itself, and `f32::mul_add` is a library call where the CPU (or
/// the function's compiled features) lacks the instruction.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One instruction, one rounding.
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A product and a sum, two roundings.
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x` to about 2 ulp, branch-free so that a loop of it vectorises (the standard
/// library's `exp` is a call per element). Cody-Waite range reduction, Cephes' degree-6
/// polynomial, and 2^n applied as two factors so that results overflow to infinity above
/// 88.72 and underflow gradually to 0 below -87.3, as `f32::exp` does; NaN stays NaN.
#[inline(always)]
fn exp_with<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer, and the sum's
    // low mantissa bits hold that integer.
    const ROUND: f32 = 12_582_912.0;
    // Past these e^x is infinite / below the smallest subnormal anyway.
    let x = x.clamp(-104.0, 89.0);
    let shifted = M::mul_add(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, x));
    let r2 = r * r;
    let mut p = 1.987_569_1e-4;
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = M::mul_add(p, r, coefficient);
    }
    let e = M::mul_add(p, r2, r) + 1.0;
    // n is within [-150, 129]: 2^n as 2^(n/2) * 2^(n - n/2), each a normal float.
    let n = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half = n >> 1;
    let scale = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    e * scale(half) * scale(n - half)
}

/// `tanh(x)`: an odd Taylor polynomial near 0 (where `2 sigmoid(2x) - 1` would cancel),
/// the logistic form elsewhere.
#[inline(always)]
fn tanh_with<M: MulAdd>(x: f32) -> f32 {
    let x2 = x * x;
    let mut series = 62.0 / 2835.0;
    for coefficient in [-17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0, 1.0] {
        series = M::mul_add(series, x2, coefficient);
    }
    let series = x * series;
    let logistic = 2.0 * sigmoid_with::<M>(2.0 * x) - 1.0;
    if x.abs() < 0.25 {
        series
    } else {
        logistic
    }
}

/// The logistic function.
#[inline(always)]
fn sigmoid_with<M: MulAdd>(x: f32) -> f32 {
    1.0 / (1.0 + exp_with::<M>(-x))
}

/// A batched matrix product laid out by offset tables: for every batch entry, row `m`
/// and reduction index `k`, `out[c_batch + c_m[m] + n] += a[a_batch + a_m[m] + a_k[k]] *
/// b[b_batch + b_k[k] + n]` over a contiguous run of `n` (the einsum axes that only one
/// operand and the output carry, laid out contiguously in both). The operand with the
/// contiguous rows is `b`; the planner swaps the operands when needed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatmulPlan {
    pub(crate) batch: Vec<[usize; 3]>,
    pub(crate) rows: Vec<[usize; 2]>,
    pub(crate) reduction: Vec<[usize; 2]>,
    pub(crate) n: usize,
}

/// What a matmul adds to its sums: one value per output row of each batch entry
/// (`batch index * rows + row index`), or one per column (the contiguous run `n`, the
/// same for every row).
#[derive(Debug, Clone, Copy)]
pub(crate) enum MatmulBias<'a> {
    PerRow(&'a [f32]),
    PerColumn(&'a [f32]),
}

/// Runs a [`MatmulPlan`]: `out` is overwritten with `bias + sum`, through `activation`
/// when there is one.
#[inline(always)]
pub(crate) fn matmul(
    plan: &MatmulPlan,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: Option<MatmulBias<'_>>,
    activation: Option<Unary>,
) {
    matmul_columns(plan, out, (a, b), bias, activation, 0..plan.n);
}

/// Where a matrix product writes: runs of values at offsets of the step's output. A
/// slice, or a part's handle on a [`SharedOut`].
pub(crate) trait Out {
    /// The `len` values from `start`. Panics past the end, like slicing.
    fn run(&mut self, start: usize, len: usize) -> &mut [f32];
}

impl Out for [f32] {
    #[inline(always)]
    fn run(&mut self, start: usize, len: usize) -> &mut [f32] {
        &mut self[start..start + len]
    }
}

/// A step's output shared by the parts of a step split across threads where each part's
/// values are interleaved with the others' (a product's columns: every row holds some of
/// each part's; a convolution's output rows: every channel plane does). Each part writes
/// through its own `&SharedOut`, and only the values no other part writes: its columns
/// ([`matmul_columns`]) or its output rows ([`conv_rows`]).
pub(crate) struct SharedOut<'a> {
    values: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> SharedOut<'a> {
    /// Shares `out`, which stays borrowed until every part is done.
    ///
    /// # Safety
    /// Whatever writes through the result, on however many threads, must write values
    /// no other writer writes or reads while it holds them: the parts of one split step,
    /// over disjoint ranges ([`matmul_columns`]' columns, [`conv_rows`]' output rows),
    /// each asking for one run at a time.
    pub(crate) unsafe fn new(out: &'a mut [f32]) -> SharedOut<'a> {
        SharedOut {
            values: out.as_mut_ptr(),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }
}

// SAFETY: the threads that share it write disjoint values (`SharedOut::new`'s contract),
// and `f32` is `Send`.
unsafe impl Sync for SharedOut<'_> {}

impl Out for &SharedOut<'_> {
    #[inline(always)]
    fn run(&mut self, start: usize, len: usize) -> &mut [f32] {
        assert!(
            start <= self.len && len <= self.len - start,
            "values {start}..{} of an output of {}",
            start.wrapping_add(len),
            self.len
        );
        // SAFETY: in bounds (checked above) of the slice `new` borrowed mutably for 'a, so
        // nothing but the writers through this share uses it, and by `new`'s contract no
        // two of them use the same values at once: the parts of a split step each ask for
        // one run at a time, of their own columns of every row (`matmul_columns`, through
        // `gemm_columns`, whose tiles cover whole runs of 16 inside the range) or their own
        // output rows of every channel (`conv_rows`).
        unsafe { std::slice::from_raw_parts_mut(self.values.add(start), len) }
    }
}

impl MatmulPlan {
    /// Whether the product can be computed in parts of its rows, each part writing only
    /// its own window of the output: one batch entry, rows written in order, none
    /// overlapping the next (a 1x1 convolution's product, a linear layer's).
    pub(crate) fn rows_split_apart(&self) -> bool {
        self.batch.len() == 1
            && self
                .rows
                .windows(2)
                .all(|pair| pair[1][1] >= pair[0][1] + self.n)
    }

    /// Where in the output row `row` (of a product with [`MatmulPlan::rows_split_apart`])
    /// starts.
    pub(crate) fn row_out_start(&self, row: usize) -> usize {
        self.batch[0][2] + self.rows[row][1]
    }

    /// Multiply-adds of a run.
    pub(crate) fn macs(&self) -> usize {
        self.batch.len() * self.rows.len() * self.reduction.len() * self.n
    }
}

/// Rows `rows` of a [`MatmulPlan`] with [`MatmulPlan::rows_split_apart`], into `out`: the
/// output's values from index `out_start` on, as far as these rows write. The values are
/// the same as [`matmul`]'s.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_rows(
    plan: &MatmulPlan,
    (out, out_start): (&mut [f32], usize),
    a: &[f32],
    b: &[f32],
    bias: Option<MatmulBias<'_>>,
    activation: Option<Unary>,
    rows: std::ops::Range<usize>,
) {
    debug_assert!(plan.rows_split_apart());
    let [a_batch, b_batch, c_batch] = plan.batch[0];
    gemm(
        Gemm {
            rows: &plan.rows[rows.clone()],
            reduction: &plan.reduction,
            n: plan.n,
            a_base: a_batch,
            b_base: b_batch,
            c_base: c_batch.wrapping_sub(out_start),
        },
        (out, a, b),
        match bias {
            None => GemmBias::None,
            Some(MatmulBias::PerRow(bias)) => GemmBias::PerRow(&bias[rows]),
            Some(MatmulBias::PerColumn(bias)) => GemmBias::PerColumn(bias),
        },
        activation,
        &mut GemmWork::new(),
    );
}

/// Columns `columns` of every row and batch entry of a [`MatmulPlan`], written through
/// `out` (for a part of a step split by columns, its handle on the step's output). The
/// values are the same as [`matmul`]'s.
#[inline(always)]
pub(crate) fn matmul_columns<O: Out + ?Sized>(
    plan: &MatmulPlan,
    out: &mut O,
    (a, b): (&[f32], &[f32]),
    bias: Option<MatmulBias<'_>>,
    activation: Option<Unary>,
    columns: std::ops::Range<usize>,
) {
    let row_count = plan.rows.len();
    let mut work = GemmWork::new();
    for (batch_index, &[a_batch, b_batch, c_batch]) in plan.batch.iter().enumerate() {
        gemm_columns(
            Gemm {
                rows: &plan.rows,
                reduction: &plan.reduction,
                n: plan.n,
                a_base: a_batch,
                b_base: b_batch,
                c_base: c_batch,
            },
            columns.clone(),
            (&mut *out, a, b),
            match bias {
                None => GemmBias::None,
                Some(MatmulBias::PerRow(bias)) => {
                    GemmBias::PerRow(&bias[batch_index * row_count..][..row_count])
                }
                Some(MatmulBias::PerColumn(bias)) => GemmBias::PerColumn(bias),
            },
            activation,
            &mut work,
        );
    }
}

/// Columns of the output a [`gemm`] block computes at a time: small enough for its rows
/// to stay in L1 while the reduction runs over them, long enough for the inner loops to
/// vectorise well. (Accumulators held in registers over 16 columns measured 2x to 10x
/// slower: the compiler keeps them in scalars on the stack.)
const GEMM_COLUMNS: usize = 512;

/// What a [`gemm`] adds to its sums: nothing, a value per row of its `rows`, or a value
/// per column.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GemmBias<'a> {
    None,
    PerRow(&'a [f32]),
    PerColumn(&'a [f32]),
}

/// Where a [`gemm`] reads and writes: output row `r` (a row of `rows`: its offsets in `a`
/// and in the output) is its bias plus the sum over (a_k, b_k) in reduction of
/// a[a_base + a_r + a_k] * b[b_base + b_k + j]`, for `j` in `0..n`, written at
/// `c_base + c_r + j`.
struct Gemm<'p> {
    rows: &'p [[usize; 2]],
    reduction: &'p [[usize; 2]],
    n: usize,
    a_base: usize,
    b_base: usize,
    /// Added to `c_r` with wrapping: where `out` is a window that starts past where the
    /// rows' offsets count from (a part of a split step), this is "negative", and
    /// `c_base + c_r` lands inside the window.
    c_base: usize,
}

/// Working space of [`gemm`], given by the caller so that it is not set up again for every
/// output row of a convolution: the blocked product's sums (8 KiB) and a tile's packed
/// weights.
pub(crate) struct GemmWork {
    acc: [[f32; GEMM_COLUMNS]; 4],
    packed: [f32; tile::PACKED_LEN],
}

impl GemmWork {
    pub(crate) fn new() -> Self {
        Self {
            acc: [[0.0; GEMM_COLUMNS]; 4],
            packed: [0.0; tile::PACKED_LEN],
        }
    }
}

/// The matrix product both convolutions and einsums run. Tiles of up to 6 rows x 16
/// columns run in registers with fused multiply-adds where the CPU has them
/// ([`tile::product`]); the rest (the last columns, or everything) runs in blocks of 4
/// output rows x [`GEMM_COLUMNS`] columns (each run of `b` read feeds four
/// rows). Each output value is its bias, then the terms added in reduction order,
/// whatever the blocking.
#[inline(always)]
fn gemm<O: Out + ?Sized>(
    gemm: Gemm<'_>,
    io: (&mut O, &[f32], &[f32]),
    bias: GemmBias<'_>,
    activation: Option<Unary>,
    work: &mut GemmWork,
) {
    gemm_columns(gemm, 0..usize::MAX, io, bias, activation, work);
}

/// Columns `columns` (clamped to the product's) of a [`gemm`], with the same values as
/// the whole product's: the columns run in tiles up to the same column, whatever the
/// range. (A part of a step split by columns runs this with its range.)
#[inline(always)]
fn gemm_columns<O: Out + ?Sized>(
    gemm: Gemm<'_>,
    columns: std::ops::Range<usize>,
    (out, a, b): (&mut O, &[f32], &[f32]),
    bias: GemmBias<'_>,
    activation: Option<Unary>,
    work: &mut GemmWork,
) {
    let all_tiled = if tile::available() {
        gemm.n / tile::TILE_COLUMNS * tile::TILE_COLUMNS
    } else {
        0
    };
    let columns = columns.start.min(gemm.n)..columns.end.min(gemm.n);
    let tiled = columns.start.min(all_tiled)..columns.end.min(all_tiled);
    if !tiled.is_empty() {
        let product = tile::TileProduct {
            rows: gemm.rows,
            reduction: gemm.reduction,
            a_base: gemm.a_base,
            b_base: gemm.b_base,
            c_base: gemm.c_base,
        };
        let io = (&mut *out, a, b);
        tile::product(&product, io, tiled, bias, activation, &mut work.packed);
    }
    let blocked = columns.start.max(all_tiled)..columns.end;
    if !blocked.is_empty() {
        let (rows, columns) = (0..gemm.rows.len(), blocked);
        gemm_blocked(
            &gemm,
            rows,
            columns,
            (out, a, b),
            bias,
            activation,
            &mut work.acc,
        );
    }
}

/// Rows `rows` (indices into `gemm.rows`) x `columns` of a [`gemm`], in blocks of 4 rows x
/// [`GEMM_COLUMNS`] columns with their sums in `acc`.
#[inline(always)]
fn gemm_blocked<O: Out + ?Sized>(
    gemm: &Gemm<'_>,
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    (out, a, b): (&mut O, &[f32], &[f32]),
    bias: GemmBias<'_>,
    activation: Option<Unary>,
    acc: &mut [[f32; GEMM_COLUMNS]; 4],
) {
    let mut start = columns.start;
    while start < columns.end {
        let chunk = start..GEMM_COLUMNS.min(columns.end - start) + start;
        let mut blocks = gemm.rows[rows.clone()].chunks_exact(4);
        for (index, four) in (&mut blocks).enumerate() {
            let block = GemmBlock {
                rows: four,
                first: rows.start + index * 4,
                columns: chunk.clone(),
            };
            gemm_block(gemm, block, acc, (out, a, b), bias, activation);
        }
        let first = rows.end - blocks.remainder().len();
        for (index, one) in blocks.remainder().chunks(1).enumerate() {
            let block = GemmBlock {
                rows: one,
                first: first + index,
                columns: chunk.clone(),
            };
            let [one_row, ..] = acc;
            gemm_block(
                gemm,
                block,
                std::array::from_mut(one_row),
                (out, a, b),
                bias,
                activation,
            );
        }
        start = chunk.end;
    }
}

/// `R` output rows of a [`gemm`] over some of its columns.
struct GemmBlock<'p> {
    /// The rows (offsets in `a` and in the output)...
    rows: &'p [[usize; 2]],
    /// ... the first of which is this row of the [`gemm`] (for its bias).
    first: usize,
    columns: std::ops::Range<usize>,
}

/// Computes one [`GemmBlock`] in `acc` and stores it.
#[inline(always)]
fn gemm_block<const R: usize, O: Out + ?Sized>(
    gemm: &Gemm<'_>,
    block: GemmBlock<'_>,
    acc: &mut [[f32; GEMM_COLUMNS]; R],
    (out, a, b): (&mut O, &[f32], &[f32]),
    bias: GemmBias<'_>,
    activation: Option<Unary>,
) {
    let len = block.columns.len();
    let a_rows: [usize; R] = std::array::from_fn(|r| gemm.a_base + block.rows[r][0]);
    for (r, row) in acc.iter_mut().enumerate() {
        match bias {
            GemmBias::None => row[..len].fill(0.0),
            GemmBias::PerRow(bias) => row[..len].fill(bias[block.first + r]),
            GemmBias::PerColumn(bias) => row[..len].copy_from_slice(&bias[block.columns.clone()]),
        }
    }
    let b_start = gemm.b_base + block.columns.start;
    for &[a_k, b_k] in gemm.reduction {
        let x = &b[b_start + b_k..][..len];
        let w: [f32; R] = std::array::from_fn(|r| a[a_rows[r] + a_k]);
        if let [r0, r1, r2, r3] = &mut acc[..] {
            for (j, &v) in x.iter().enumerate() {
                r0[j] += w[0] * v;
                r1[j] += w[1] * v;
                r2[j] += w[2] * v;
                r3[j] += w[3] * v;
            }
        } else {
            for (r, row) in acc.iter_mut().enumerate() {
                for (y, &v) in row[..len].iter_mut().zip(x) {
                    *y += w[r] * v;
                }
            }
        }
    }
    for (row, &[_, c_r]) in acc.iter().zip(block.rows) {
        let c = gemm.c_base.wrapping_add(c_r) + block.columns.start;
        store(out.run(c, len), &row[..len], activation);
    }
}

/// A 2-D convolution over channel-first planes (one image: C x H x W in, O x OH x OW out),
/// weights O x (C / group) x KH x KW.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConvGeometry {
    pub(crate) in_channels: usize,
    pub(crate) in_hw: [usize; 2],
    pub(crate) out_channels: usize,
    pub(crate) out_hw: [usize; 2],
    pub(crate) kernel_hw: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) dilation: [usize; 2],
    pub(crate) pad_before: [usize; 2],
    pub(crate) group: usize,
    /// Images in the batch (the planner folds a leading N here).
    pub(crate) images: usize,
}

/// A convolution laid out as matrix products: see [`conv`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConvPlan {
    pub(crate) geometry: ConvGeometry,
    /// Per output channel: its weights' offset and its output plane's offset.
    rows: Vec<[usize; 2]>,
    /// Per tap of a group (input channel, ky, kx): its weight's offset in a channel's
    /// weights, and where its values for output row 0 start in the scratch planes.
    taps: Vec<[usize; 2]>,
}

impl ConvGeometry {
    /// Rows and columns of the zero-padded input the taps read.
    fn padded_hw(&self) -> [usize; 2] {
        let span = |axis: usize| {
            (self.out_hw[axis] - 1) * self.stride[axis]
                + (self.kernel_hw[axis] - 1) * self.dilation[axis]
                + 1
        };
        [span(0), span(1)]
    }

    /// Values of one phase of a padded row (columns `p, p + stride, ...`).
    fn phase_len(&self) -> usize {
        self.padded_hw()[1].div_ceil(self.stride[1])
    }

    /// Whether each group has one input and one output channel (a depthwise
    /// convolution, or a single-channel one).
    fn one_channel_per_group(&self) -> bool {
        self.in_channels == self.group && self.out_channels == self.group
    }

    /// Values of one input channel, padded and split into phases.
    fn phased_plane_len(&self) -> usize {
        self.padded_hw()[0] * self.stride[1] * self.phase_len()
    }

    /// Values of the scratch buffer [`conv`] needs: one group's input channels, padded
    /// and split into phases, and the values the depthwise kernel may read past them;
    /// `None` when that overflows (strides, dilations and kernels come from the file).
    /// The planner takes this before any other size of the convolution, so those, all
    /// smaller, cannot overflow.
    pub(crate) fn scratch_len(&self) -> Option<usize> {
        let span = |axis: usize| {
            let outputs = self.out_hw[axis]
                .checked_sub(1)?
                .checked_mul(self.stride[axis])?;
            let taps = self.kernel_hw[axis]
                .checked_sub(1)?
                .checked_mul(self.dilation[axis])?;
            outputs.checked_add(taps)?.checked_add(1)
        };
        let (rows, columns) = (span(0)?, span(1)?);
        let phase_len = columns.div_ceil(self.stride[1].max(1));
        let plane = rows.checked_mul(self.stride[1])?.checked_mul(phase_len)?;
        (self.in_channels / self.group.max(1))
            .checked_mul(plane)?
            .checked_add(depthwise::READ_SLACK)
    }

    /// The convolution's matrix-product layout. The geometry must be consistent (the
    /// planner checks: every size at least 1, channels divisible by the group).
    pub(crate) fn plan(&self) -> ConvPlan {
        let [kh, kw] = self.kernel_hw;
        let cin_per_group = self.in_channels / self.group;
        let taps_per_channel = cin_per_group * kh * kw;
        let out_plane = self.out_hw[0] * self.out_hw[1];
        let rows = (0..self.out_channels)
            .map(|co| [co * taps_per_channel, co * out_plane])
            .collect();
        let (sx, phase_len) = (self.stride[1], self.phase_len());
        let padded_row = sx * phase_len;
        let mut taps = Vec::with_capacity(taps_per_channel);
        for ci in 0..cin_per_group {
            for ky in 0..kh {
                for kx in 0..kw {
                    // Padded column ox * sx + kx * dx = (ox + shift) * sx + phase.
                    let column = kx * self.dilation[1];
                    let (shift, phase) = (column / sx, column % sx);
                    let offset = ci * self.phased_plane_len()
                        + ky * self.dilation[0] * padded_row
                        + phase * phase_len
                        + shift;
                    taps.push([(ci * kh + ky) * kw + kx, offset]);
                }
            }
        }
        ConvPlan {
            geometry: self.clone(),
            rows,
            taps,
        }
    }
}

/// Runs a convolution: `out` is overwritten with bias + sum of weight x input, through
/// `activation` when there is one. For each image and group, the group's input channels
/// are copied once into `scratch` zero-padded and split into stride phases (row `y`,
/// phase `p` holds padded columns `p, p + sx, ...`), so that every tap reads a
/// contiguous run of the scratch for a whole output row. An output row is then a matrix
/// product of the weights with those runs ([`gemm`]), with no patch gathered per row.
#[inline(always)]
pub(crate) fn conv(
    plan: &ConvPlan,
    out: &mut [f32],
    x: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    activation: Option<Unary>,
    scratch: &mut [f32],
) {
    let geo = &plan.geometry;
    let in_len = geo.in_channels * geo.in_hw[0] * geo.in_hw[1];
    let out_len = geo.out_channels * plan.out_plane();
    let layer = ConvLayer {
        plan,
        weights,
        bias,
        activation,
    };
    zero_scratch(plan, scratch);
    for image in 0..geo.images {
        let x = &x[image * in_len..][..in_len];
        let out = &mut out[image * out_len..][..out_len];
        filled_groups(&layer, (out, 0), x, scratch, 0..geo.group);
    }
}

/// How a convolution of one image can be split across threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvSplit {
    /// One group: parts of the output rows, every channel of them, all reading the
    /// scratch the caller filled ([`conv_fill`], then [`conv_rows`]).
    OutputRows,
    /// Several groups (a depthwise convolution's are one channel each): parts of the
    /// groups, each writing its own run of output planes and filling a scratch of its
    /// own ([`conv_groups`]).
    Groups,
}

impl ConvPlan {
    /// How the convolution can be split; `None` over several images. One with a channel
    /// per group (however many groups) splits by groups, as [`conv_channels`] sums it
    /// with the depthwise kernel, which splitting by output rows would not.
    pub(crate) fn split(&self) -> Option<ConvSplit> {
        if self.geometry.images != 1 {
            return None;
        }
        if self.geometry.group == 1 && !self.geometry.one_channel_per_group() {
            Some(ConvSplit::OutputRows)
        } else {
            Some(ConvSplit::Groups)
        }
    }

    /// Values of one output channel's plane.
    pub(crate) fn out_plane(&self) -> usize {
        self.geometry.out_hw[0] * self.geometry.out_hw[1]
    }

    /// Multiply-adds of a run.
    pub(crate) fn macs(&self) -> usize {
        self.geometry.images * self.rows.len() * self.taps.len() * self.out_plane()
    }
}

/// A convolution's constants: what every part of it reads.
#[derive(Clone, Copy)]
pub(crate) struct ConvLayer<'a> {
    pub(crate) plan: &'a ConvPlan,
    pub(crate) weights: &'a [f32],
    pub(crate) bias: Option<&'a [f32]>,
    pub(crate) activation: Option<Unary>,
}

/// Zeroes the pads of a convolution's scratch. They are the same for every channel:
/// zeroed once per run, they stay zero, as [`fill_scratch`] writes only the values it
/// copies from the input (for small planes, filling the pads for every channel took as
/// long as the depthwise sums).
#[inline(always)]
fn zero_scratch(plan: &ConvPlan, scratch: &mut [f32]) {
    let geo = &plan.geometry;
    scratch[..geo.in_channels / geo.group * geo.phased_plane_len()].fill(0.0);
}

/// For [`ConvSplit::OutputRows`]: the scratch every part reads, filled from image `x`.
#[inline(always)]
pub(crate) fn conv_fill(plan: &ConvPlan, x: &[f32], scratch: &mut [f32]) {
    zero_scratch(plan, scratch);
    fill_scratch(plan, x, 0, scratch);
}

/// For [`ConvSplit::Groups`]: groups `groups` of image `x`, filling `scratch` (this part's
/// own) for each; `out` holds the output from index `out_start` on, as far as these
/// groups write.
#[inline(always)]
pub(crate) fn conv_groups(
    layer: &ConvLayer<'_>,
    out: (&mut [f32], usize),
    x: &[f32],
    scratch: &mut [f32],
    groups: std::ops::Range<usize>,
) {
    zero_scratch(layer.plan, scratch);
    filled_groups(layer, out, x, scratch, groups);
}

/// Groups `groups` of image `x` into `out` (as [`conv_groups`]), each filling the
/// scratch, whose pads [`zero_scratch`] zeroed.
#[inline(always)]
fn filled_groups(
    layer: &ConvLayer<'_>,
    (out, out_start): (&mut [f32], usize),
    x: &[f32],
    scratch: &mut [f32],
    groups: std::ops::Range<usize>,
) {
    let geo = &layer.plan.geometry;
    let cout_per_group = geo.out_channels / geo.group;
    for group in groups {
        fill_scratch(layer.plan, x, group, scratch);
        let channels = group * cout_per_group..(group + 1) * cout_per_group;
        conv_channels(layer, (&mut *out, out_start), scratch, channels);
    }
}

/// Copies group `group`'s input channels of image `x` into the scratch (the values
/// inside the pads; [`zero_scratch`] zeroed the pads).
#[inline(always)]
fn fill_scratch(plan: &ConvPlan, x: &[f32], group: usize, scratch: &mut [f32]) {
    let geo = &plan.geometry;
    let [ih, iw] = geo.in_hw;
    let sx = geo.stride[1];
    let [py, px] = geo.pad_before;
    let phase_len = geo.phase_len();
    let padded_row = sx * phase_len;
    let plane_len = geo.phased_plane_len();
    let cin_per_group = geo.in_channels / geo.group;
    let in_plane = ih * iw;
    let padded_rows = plane_len / padded_row;
    let rows_inside = py.min(padded_rows)..(py + ih).min(padded_rows);
    for ci in 0..cin_per_group {
        let input = &x[(group * cin_per_group + ci) * in_plane..][..in_plane];
        let plane = &mut scratch[ci * plane_len..][..plane_len];
        for y in rows_inside.clone() {
            let row = &mut plane[y * padded_row..][..padded_row];
            let row_in = &input[(y - py) * iw..][..iw];
            for (phase, dst) in row.chunks_exact_mut(phase_len).enumerate() {
                // Input column j * sx + phase - px for the phase's j-th value.
                let offset = phase as isize - px as isize;
                let begin = first_inside(offset, sx).min(phase_len);
                let end = last_inside(offset, sx, iw).clamp(begin, phase_len);
                if begin == end {
                    continue;
                }
                let ix0 = ((begin * sx) as isize + offset) as usize;
                let dst = &mut dst[begin..end];
                match sx {
                    1 => dst.copy_from_slice(&row_in[ix0..ix0 + dst.len()]),
                    2 => gather_every::<2>(dst, &row_in[ix0..]),
                    _ => {
                        for (d, &v) in dst.iter_mut().zip(row_in[ix0..].iter().step_by(sx)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

/// Output channels `channels` (all of one group, whose input the scratch holds) of one
/// image, into `out`: the image's output from index `out_start` on, as far as these
/// channels write.
#[inline(always)]
fn conv_channels(
    layer: &ConvLayer<'_>,
    (out, out_start): (&mut [f32], usize),
    scratch: &[f32],
    channels: std::ops::Range<usize>,
) {
    let plan = layer.plan;
    let geo = &plan.geometry;
    let [oh, ow] = geo.out_hw;
    let sy = geo.stride[0];
    let padded_row = geo.stride[1] * geo.phase_len();
    let out_plane = oh * ow;
    let depthwise =
        geo.one_channel_per_group() && plan.taps.len() <= depthwise::MAX_TAPS && tile::available();
    if depthwise {
        for co in channels {
            let [weights_at, plane_at] = plan.rows[co];
            let mut tap_weights = [0f32; depthwise::MAX_TAPS];
            let tap_weights = &mut tap_weights[..plan.taps.len()];
            for (w, &[w_k, _]) in tap_weights.iter_mut().zip(&plan.taps) {
                *w = layer.weights[weights_at + w_k];
            }
            let channel = depthwise::DepthwiseChannel::new(
                (&plan.taps, tap_weights),
                sy * padded_row,
                ow,
                layer.bias.map_or(0.0, |bias| bias[co]),
            );
            let out = &mut out[plane_at - out_start..][..out_plane];
            depthwise::channel(&channel, out, scratch, layer.activation);
        }
        return;
    }
    conv_products(layer, (out, out_start), scratch, channels, 0..oh);
}

/// For [`ConvSplit::OutputRows`]: output rows `rows` of every channel of one image,
/// written through `out` (a part's handle on the step's output), from the scratch
/// [`conv_fill`] filled. The values are the same as [`conv`]'s.
#[inline(always)]
pub(crate) fn conv_rows(
    layer: &ConvLayer<'_>,
    mut out: &SharedOut<'_>,
    scratch: &[f32],
    rows: std::ops::Range<usize>,
) {
    let channels = 0..layer.plan.geometry.out_channels;
    conv_products(layer, (&mut out, 0), scratch, channels, rows);
}

/// Output rows `rows` of channels `channels` (all of one group, whose input the
/// scratch holds) as matrix products, one per output row.
#[inline(always)]
fn conv_products<O: Out + ?Sized>(
    layer: &ConvLayer<'_>,
    (out, out_start): (&mut O, usize),
    scratch: &[f32],
    channels: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) {
    let plan = layer.plan;
    let geo = &plan.geometry;
    let ow = geo.out_hw[1];
    let sy = geo.stride[0];
    let padded_row = geo.stride[1] * geo.phase_len();
    let mut work = GemmWork::new();
    for oy in rows {
        gemm(
            Gemm {
                rows: &plan.rows[channels.clone()],
                reduction: &plan.taps,
                n: ow,
                a_base: 0,
                b_base: oy * sy * padded_row,
                c_base: (oy * ow).wrapping_sub(out_start),
            },
            (&mut *out, layer.weights, scratch),
            layer.bias.map_or(GemmBias::None, |bias| {
                GemmBias::PerRow(&bias[channels.clone()])
            }),
            layer.activation,
            &mut work,
        );
    }
}

/// `dst[j] = src[j * S]`: with the stride known, the compiler vectorises the gather.
#[inline(always)]
fn gather_every<const S: usize>(dst: &mut [f32], src: &[f32]) {
    let mut chunks = src.chunks_exact(S);
    let whole = dst.len().min(chunks.len());
    for (d, chunk) in dst[..whole].iter_mut().zip(&mut chunks) {
        *d = chunk[0];
    }
    if whole < dst.len() {
        dst[whole] = chunks.remainder()[0];
    }
}

/// The first output index whose input index `o * stride + offset` is >= 0.
fn first_inside(offset: isize, stride: usize) -> usize {
    if offset >= 0 {
        0
    } else {
        (-offset as usize).div_ceil(stride)
    }
}

/// One past the last output index whose input index `o * stride + offset` is < `len`.
fn last_inside(offset: isize, stride: usize, len: usize) -> usize {
    let limit = len as isize - offset; // o * stride < limit
    if limit <= 0 {
        0
    } else {
        (limit as usize).div_ceil(stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_to_a_few_ulp() {
        exp_tanh_and_sigmoid_match_the_standard_library::<Separate>();
    }

    #[test]
    fn exp_with_fused_multiply_adds_matches_the_standard_library_to_a_few_ulp() {
        exp_tanh_and_sigmoid_match_the_standard_library::<Fused>();
    }

    fn exp_tanh_and_sigmoid_match_the_standard_library<M: MulAdd>() {
        let exp = exp_with::<M>;
        let tanh = tanh_with::<M>;
        let sigmoid = sigmoid_with::<M>;
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let expected = x.exp();
            let relative = ((exp(x) - expected) / expected).abs();
            worst = worst.max(relative);
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON, "worst relative error {worst}");
        // Overflow, underflow and NaN as the standard library has them.
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        for x in [88.5f32, 88.7, -87.5, -95.0, -103.0] {
            let expected = x.exp();
            let got = exp(x);
            assert!(
                (got - expected).abs() <= 4.0 * f32::EPSILON * expected.max(f32::MIN_POSITIVE),
                "exp({x}) = {got:e}, expected {expected:e}"
            );
        }
        let mut worst_tanh = 0f32;
        let mut x = -5.0f32;
        while x < 5.0 {
            let expected = x.tanh();
            if expected != 0.0 {
                worst_tanh = worst_tanh.max(((tanh(x) - expected) / expected).abs());
            }
            x += 0.001_3;
        }
        assert!(worst_tanh < 1e-6, "tanh: worst relative error {worst_tanh}");
        assert_eq!(tanh(1e-8), 1e-8);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
    }

    #[test]
    fn a_walk_merges_contiguous_axes_and_keeps_broadcasts() {
        // [2, 3, 4] + [2, 1, 1]: the last two axes merge (both contiguous in out and a,
        // stride 0 in b).
        let walk = StridedWalk::new(&[2, 3, 4], [&[12, 4, 1], &[12, 4, 1], &[1, 0, 0]]).unwrap();
        assert_eq!(walk.rank, 2);
        assert_eq!(&walk.dims[..2], &[2, 12]);
        let a: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let b = [100.0, 200.0];
        let mut out = vec![0.0; 24];
        binary(&walk, &mut out, &a, &b, |x, y| x + y);
        assert_eq!(out[0], 100.0);
        assert_eq!(out[11], 111.0);
        assert_eq!(out[12], 212.0);
    }

    #[test]
    fn conv_matches_a_direct_sum_with_padding_strides_and_groups() {
        let geo = ConvGeometry {
            in_channels: 4,
            in_hw: [7, 9],
            out_channels: 6,
            out_hw: [4, 4],
            kernel_hw: [3, 2],
            stride: [2, 2],
            dilation: [1, 2],
            pad_before: [1, 0],
            group: 2,
            images: 1,
        };
        let x: Vec<f32> = (0..4 * 63).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..6 * 2 * 6)
            .map(|i| ((i * 13) % 7) as f32 - 3.0)
            .collect();
        let bias = [0.5, -1.0, 2.0, 0.0, 1.0, -0.5];
        let out = run_conv(&geo, &x, &w, &bias, None);
        // With an activation: the same values through it, bit for bit.
        let activated = run_conv(&geo, &x, &w, &bias, Some(Unary::Silu));
        let mut expected = out.clone();
        unary(Unary::Silu, &mut expected, &out);
        assert_eq!(activated, expected);
        for co in 0..6 {
            let g = co / 3;
            for oy in 0..4 {
                for ox in 0..4 {
                    let mut sum = bias[co];
                    for ci in 0..2 {
                        for ky in 0..3 {
                            for kx in 0..2 {
                                let iy = (oy * 2 + ky) as isize - 1;
                                let ix = (ox * 2 + kx * 2) as isize;
                                if !(0..7).contains(&iy) || ix >= 9 {
                                    continue;
                                }
                                let v = x[(g * 2 + ci) * 63 + iy as usize * 9 + ix as usize];
                                sum += w[((co * 2 + ci) * 3 + ky) * 2 + kx] * v;
                            }
                        }
                    }
                    assert_eq!(out[co * 16 + oy * 4 + ox], sum, "co {co} oy {oy} ox {ox}");
                }
            }
        }
    }

    #[test]
    fn matmul_tiles_and_their_edges_match_a_direct_sum() {
        matmul_matches_a_direct_sum();
    }

    #[test]
    fn matmul_without_tiles_matches_a_direct_sum() {
        tile::OFF_IN_TESTS.with(|off| off.set(true));
        matmul_matches_a_direct_sum();
    }

    fn matmul_matches_a_direct_sum() {
        // 13 rows (two register tiles of 6 and one of 1), 300 reduction terms (two packed
        // blocks), 37 columns (two tiles of 16, then 5 in the blocked product); without
        // tiles, blocks of 4 rows and one row.
        let (m, k, n) = (13, 300, 37);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 29) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let plan = MatmulPlan {
            batch: vec![[0, 0, 0]],
            rows: (0..m).map(|r| [r * k, r * n]).collect(),
            reduction: (0..k).map(|t| [t, t * n]).collect(),
            n,
        };
        let row_bias: Vec<f32> = (0..m).map(|r| r as f32 * 0.25 - 1.0).collect();
        let column_bias: Vec<f32> = (0..n).map(|j| 0.5 - j as f32 * 0.125).collect();
        for (bias, activation) in [
            (MatmulBias::PerRow(&row_bias), None),
            (MatmulBias::PerColumn(&column_bias), Some(Unary::Silu)),
        ] {
            let mut out = vec![f32::NAN; m * n];
            matmul(&plan, &mut out, &a, &b, Some(bias), activation);
            for r in 0..m {
                for j in 0..n {
                    let start = match bias {
                        MatmulBias::PerRow(bias) => bias[r],
                        MatmulBias::PerColumn(bias) => bias[j],
                    };
                    let (mut sum, mut magnitude) = (f64::from(start), f64::from(start.abs()));
                    for t in 0..k {
                        let term = f64::from(a[r * k + t]) * f64::from(b[t * n + j]);
                        sum += term;
                        magnitude += term.abs();
                    }
                    let expected = match activation {
                        None => sum,
                        Some(_) => sum / (1.0 + (-sum).exp()),
                    };
                    let got = f64::from(out[r * n + j]);
                    assert!(
                        (got - expected).abs() <= 1e-5 * magnitude.max(1.0),
                        "row {r} column {j}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    /// [`conv`] into a fresh output, its buffers filled with NaN beforehand.
    fn run_conv(
        geo: &ConvGeometry,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        activation: Option<Unary>,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; geo.images * geo.out_channels * geo.out_hw[0] * geo.out_hw[1]];
        let mut scratch = vec![f32::NAN; geo.scratch_len().expect("scratch fits")];
        conv(
            &geo.plan(),
            &mut out,
            x,
            w,
            Some(bias),
            activation,
            &mut scratch,
        );
        out
    }

    /// The direct sum a convolution must equal.
    fn reference_conv(geo: &ConvGeometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let [ih, iw] = geo.in_hw;
        let [oh, ow] = geo.out_hw;
        let [kh, kw] = geo.kernel_hw;
        let cin_g = geo.in_channels / geo.group;
        let cout_g = geo.out_channels / geo.group;
        let mut out = vec![0.0; geo.out_channels * oh * ow];
        for co in 0..geo.out_channels {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = bias[co];
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * geo.stride[0] + ky * geo.dilation[0]) as isize
                                    - geo.pad_before[0] as isize;
                                let ix = (ox * geo.stride[1] + kx * geo.dilation[1]) as isize
                                    - geo.pad_before[1] as isize;
                                if iy < 0 || iy >= ih as isize || ix < 0 || ix >= iw as isize {
                                    continue;
                                }
                                let v = x[((g * cin_g + ci) * ih + iy as usize) * iw + ix as usize];
                                sum += w[((co * cin_g + ci) * kh + ky) * kw + kx] * v;
                            }
                        }
                    }
                    out[(co * oh + oy) * ow + ox] = sum;
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_conv_matches_a_direct_sum_at_strides_1_to_4() {
        depthwise_conv_matches_a_direct_sum();
    }

    #[test]
    fn depthwise_conv_without_its_kernel_matches_a_direct_sum() {
        // Through the blocked product, one output row at a time.
        tile::OFF_IN_TESTS.with(|off| off.set(true));
        depthwise_conv_matches_a_direct_sum();
    }

    fn depthwise_conv_matches_a_direct_sum() {
        // Rows of 29, 15 and 11 columns: the kernel's runs of 16 and 8 columns and the
        // single columns after them. The last cases: a stride larger than the row
        // (iw + 2), phases past the row's end.
        for (stride, pad, dilation, iw, k) in [
            (1, 2, 1, 29, 5),
            (2, 1, 1, 29, 3),
            (1, 1, 1, 16, 3),
            (1, 2, 1, 11, 5),
            (2, 1, 1, 11, 5),
            (2, 2, 1, 11, 5),
            (3, 1, 2, 11, 5),
            (3, 1, 1, 1, 3),
            (4, 0, 1, 2, 1),
        ] {
            let ih = 9;
            let oh = (ih + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
            let ow = (iw + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
            let geo = ConvGeometry {
                in_channels: 3,
                in_hw: [ih, iw],
                out_channels: 3,
                out_hw: [oh, ow],
                kernel_hw: [k, k],
                stride: [stride, stride],
                dilation: [dilation, dilation],
                pad_before: [pad, pad],
                group: 3,
                images: 1,
            };
            let x: Vec<f32> = (0..3 * ih * iw)
                .map(|i| ((i * 37) % 11) as f32 - 5.0)
                .collect();
            let w: Vec<f32> = (0..3 * k * k)
                .map(|i| ((i * 13) % 7) as f32 - 3.0)
                .collect();
            let bias = [0.5, -1.0, 2.0];
            let out = run_conv(&geo, &x, &w, &bias, None);
            // Small integers: every order of summation gives the same floats.
            let reference = reference_conv(&geo, &x, &w, &bias);
            assert_eq!(out, reference, "stride {stride} pad {pad}");
            let out = run_conv(&geo, &x, &w, &bias, Some(Unary::Sigmoid));
            let mut expected = reference.clone();
            unary(Unary::Sigmoid, &mut expected, &reference);
            assert_eq!(out, expected, "stride {stride} pad {pad}, sigmoid");
        }
    }

    #[test]
    fn a_long_contiguous_reduction_stays_accurate_and_covers_every_value() {
        // Rows of 1,000 values into [3]: partial sums in lanes, then the 8 left over.
        let x: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.001)
            .collect();
        let walk = StridedWalk::new(&[3, 1000], [&[1, 0], &[1000, 1], &[0, 0]]).unwrap();
        let mut sum = vec![0.0f32; 3];
        reduce(&walk, &mut sum, &x, |acc, v| acc + v);
        let mut max = vec![f32::NEG_INFINITY; 3];
        reduce(&walk, &mut max, &x, f32::max);
        for (row, values) in x.chunks(1000).enumerate() {
            let exact: f64 = values.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (f64::from(sum[row]) - exact).abs() < 1e-4 * exact,
                "{} vs {exact}",
                sum[row]
            );
            assert_eq!(
                max[row],
                values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
            );
        }
    }

    #[test]
    fn matmul_handles_row_blocks_and_remainders() {
        // out[m][n] = sum_k a[m][k] * b[k][n], 6 rows (a block of 4 and 2 left), n = 700
        // (two tiles).
        let (m, k, n) = (6, 3, 700);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 - 4.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 17) as f32).collect();
        let plan = MatmulPlan {
            batch: vec![[0, 0, 0]],
            rows: (0..m).map(|r| [r * k, r * n]).collect(),
            reduction: (0..k).map(|j| [j, j * n]).collect(),
            n,
        };
        let mut out = vec![f32::NAN; m * n];
        matmul(&plan, &mut out, &a, &b, None, None);
        for r in 0..m {
            for c in 0..n {
                let expected: f32 = (0..k).map(|j| a[r * k + j] * b[j * n + c]).sum();
                assert_eq!(out[r * n + c], expected);
            }
        }
        // A bias per row (rows in the block of 4 and in the remainder) and an activation.
        let bias: Vec<f32> = (0..m).map(|r| r as f32 * 0.5 - 1.0).collect();
        let per_row = Some(MatmulBias::PerRow(&bias));
        matmul(&plan, &mut out, &a, &b, per_row, Some(Unary::Tanh));
        for r in 0..m {
            for c in 0..n {
                let sum = (0..k).fold(bias[r], |acc, j| acc + a[r * k + j] * b[j * n + c]);
                let mut expected = [0f32];
                unary(Unary::Tanh, &mut expected, &[sum]);
                assert_eq!(out[r * n + c], expected[0], "row {r} column {c}");
            }
        }
        // A bias per column, across both tiles.
        let bias: Vec<f32> = (0..n).map(|c| (c % 13) as f32 - 6.0).collect();
        matmul(
            &plan,
            &mut out,
            &a,
            &b,
            Some(MatmulBias::PerColumn(&bias)),
            None,
        );
        for r in 0..m {
            for c in 0..n {
                let sum = (0..k).fold(bias[c], |acc, j| acc + a[r * k + j] * b[j * n + c]);
                assert_eq!(out[r * n + c], sum, "row {r} column {c}");
            }
        }
    }
}

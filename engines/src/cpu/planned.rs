//! The planned executor: runs tract's decluttered graph with every buffer laid out ahead
//! of time, so a run allocates nothing.
//!
//! tract parses the ONNX file, types it, folds its constants and simplifies it (that is
//! most of the work of an ONNX runtime, and tract does it well); its own plan then
//! evaluates each operator into a freshly allocated tensor, about 160 allocations per
//! refiner crop. Here the decluttered graph, with every shape known (one batch item), is
//! compiled once into a list of steps over numbered buffers: each value gets a slot, slots
//! are reused once their value is dead, and a session allocates the slots when it is
//! created. The op set is what CosyPose's networks decluttered into (convolutions,
//! einsums for the 1x1 convolutions and linear layers, broadcast arithmetic, sigmoid and
//! SiLU, reductions, reshapes, pads, slices, concatenations); a graph with anything else is
//! reported by [`PlanError`] and runs on tract's plan instead.

use std::collections::HashMap;
use std::fmt;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{MultiBroadcastTo, Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;

use super::kernels::{
    self, ConvGeometry, ConvLayer, ConvPlan, ConvSplit, MatmulBias, MatmulPlan, SharedOut,
    StridedWalk, Unary,
};
use super::tile::{TILE_COLUMNS, TILE_ROWS};
use super::workers::{run_parts, Team, Worker};
use super::MAX_BUFFER_BYTES;
use crate::error::describe_bytes;

/// `len` zeros, or `None` where the memory is not there: sizes come from the file, and a
/// failed allocation must be an error, not an abort of the process.
pub(crate) fn zeroed(len: usize) -> Option<Vec<f32>> {
    let mut values = Vec::new();
    values.try_reserve_exact(len).ok()?;
    values.resize(len, 0.0);
    Some(values)
}

/// A copy of `values`, or `None` where the memory is not there (see [`zeroed`]).
fn copied<T: Copy>(values: &[T]) -> Option<Vec<T>> {
    let mut copy = Vec::new();
    copy.try_reserve_exact(values.len()).ok()?;
    copy.extend_from_slice(values);
    Some(copy)
}

/// Values of `dims`, counting a dimension of 0 as 1 (so that it bounds every partial
/// product the planner takes of them), or `None` when that overflows.
fn footprint(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
}

/// Why a graph cannot be planned: the node, its op, and what is missing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlanError {
    pub(crate) node: String,
    pub(crate) op: String,
    pub(crate) reason: String,
    /// The graph's values (or its buffers in all) are too large for
    /// [`MAX_BUFFER_BYTES`], or their sizes overflow: tract's plan would need as much, so
    /// this is no reason to fall back to it.
    pub(crate) too_large: bool,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node `{}` ({}): {}", self.node, self.op, self.reason)
    }
}

/// Where a step reads a value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Operand {
    /// The run's input.
    Input,
    /// A session buffer, holding `len` values.
    Slot { slot: usize, len: usize },
    /// A constant of the plan.
    Const(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ReduceOp {
    Sum,
    Max,
    Min,
    Prod,
}

#[derive(Debug, Clone, PartialEq)]
struct CopyPart {
    x: Operand,
    walk: StridedWalk,
    out_base: usize,
    x_base: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Conv {
        x: Operand,
        weights: usize,
        bias: Option<usize>,
        conv: ConvPlan,
        /// The slot of the convolutions' scratch buffer (holds no value).
        scratch: usize,
        /// An element-wise function of the next node, applied as values are written.
        activation: Option<Unary>,
    },
    Matmul {
        a: Operand,
        b: Operand,
        plan: MatmulPlan,
        /// What the next nodes added (a constant per row or per column).
        bias: Option<PlannedBias>,
        activation: Option<Unary>,
    },
    Binary {
        op: BinaryOp,
        a: Operand,
        b: Operand,
        walk: StridedWalk,
    },
    Unary {
        op: Unary,
        x: Operand,
    },
    Reduce {
        op: ReduceOp,
        x: Operand,
        walk: StridedWalk,
    },
    Copy {
        fill: Option<f32>,
        parts: Vec<CopyPart>,
    },
}

impl Step {
    /// Calls `f` with every constant the step reads.
    fn for_each_const(&self, mut f: impl FnMut(usize)) {
        let mut operand = |operand: &Operand| {
            if let Operand::Const(c) = operand {
                f(*c);
            }
        };
        match self {
            Step::Conv {
                x, weights, bias, ..
            } => {
                operand(x);
                operand(&Operand::Const(*weights));
                if let Some(bias) = bias {
                    operand(&Operand::Const(*bias));
                }
            }
            Step::Matmul { a, b, bias, .. } => {
                operand(a);
                operand(b);
                if let Some(bias) = bias {
                    operand(&Operand::Const(bias.constant()));
                }
            }
            Step::Binary { a, b, .. } => {
                operand(a);
                operand(b);
            }
            Step::Unary { x, .. } | Step::Reduce { x, .. } => operand(x),
            Step::Copy { parts, .. } => parts.iter().for_each(|part| operand(&part.x)),
        }
    }
}

/// A matmul's bias: the constant holding one value per output row of each batch entry, or
/// one per column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PlannedBias {
    PerRow(usize),
    PerColumn(usize),
}

impl PlannedBias {
    fn constant(self) -> usize {
        match self {
            PlannedBias::PerRow(c) | PlannedBias::PerColumn(c) => c,
        }
    }
}

/// One planned step and the slot it writes (`len` values).
#[derive(Debug, Clone, PartialEq)]
struct PlannedStep {
    step: Step,
    out_slot: usize,
    out_len: usize,
}

/// A model output: a computed or constant `f32` value, or an `i64` constant (the label
/// lists detectors carry).
#[derive(Debug, Clone, PartialEq)]
enum PlannedOutput {
    F32 { value: Operand, dims: Vec<usize> },
    I64 { values: Vec<i64>, dims: Vec<usize> },
}

/// What an output holds after a run.
pub(crate) enum OutputView<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// A graph compiled into steps over numbered buffers. Shared by the sessions of a model;
/// each session owns its buffers ([`PlannedGraph::new_buffers`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedGraph {
    steps: Vec<PlannedStep>,
    /// Per step, how it splits across a [`Team`]'s threads (`None`: it runs whole on the
    /// caller's).
    splits: Vec<Option<Split>>,
    consts: Vec<Vec<f32>>,
    slot_lens: Vec<usize>,
    /// The convolutions' scratch slot, if there is a convolution.
    scratch_slot: Option<usize>,
    input_len: usize,
    outputs: Vec<PlannedOutput>,
}

/// How a step splits across threads: parts of its `units` (a matrix product's rows or
/// columns, a convolution's output rows or groups).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    kind: SplitKind,
    units: usize,
    /// Each part but the last has a multiple of this many units (a tile's rows or
    /// columns)...
    align: usize,
    /// ... always (a tile's columns), or only where every part gets several (rows: any
    /// row can start a tile).
    strict: bool,
    /// Multiply-adds of the whole step...
    macs: usize,
    /// ... and of the smallest part worth a thread ([`MIN_PART_MACS`]).
    min_part_macs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SplitKind {
    /// Each part writes its own window of the output ([`MatmulPlan::rows_split_apart`]).
    MatmulRows,
    /// Each part writes its columns of every row, through a [`SharedOut`].
    MatmulColumns,
    Conv(ConvSplit),
}

/// Multiply-adds of the smallest part worth handing to another thread. A hand-off costs
/// about 8 us on the 2-core VM this was tuned on (`workers`' `hand_off_time`), and the
/// next step then reads what the other core wrote; 1 M multiply-adds take about 30 us in
/// the tiles. (On a B3-sized refiner, 1 M measured best of 0.25, 0.5, 1, 4 and 16 M.)
const MIN_PART_MACS: usize = 1 << 20;

/// Most parts a step is split into (the most threads `engines.cpu_threads` allows).
pub(crate) const MAX_LANES: usize = 64;

/// One part of a split step: its units, the window of the output it writes (starting at
/// index `out_start` of the step's output) and, for a convolution split by groups, the
/// scratch it fills.
struct Part<'a> {
    units: std::ops::Range<usize>,
    out: &'a mut [f32],
    out_start: usize,
    scratch: &'a mut [f32],
}

impl Split {
    /// How `step` splits, when it is large enough for parts of `min_part_macs`.
    fn of(step: &Step, min_part_macs: usize) -> Option<Split> {
        let split = |kind, units, align, strict, macs| Split {
            kind,
            units,
            align,
            strict,
            macs,
            min_part_macs,
        };
        let split = match step {
            // Columns where there are enough of them: each part then reads only its
            // columns of the input (the few-row products of a network's 1x1 projections
            // are bound by reading it); rows otherwise.
            Step::Matmul { plan, .. }
                if plan.n >= 16 * TILE_COLUMNS || !plan.rows_split_apart() =>
            {
                let kind = SplitKind::MatmulColumns;
                split(kind, plan.n, TILE_COLUMNS, true, plan.macs())
            }
            Step::Matmul { plan, .. } => {
                let kind = SplitKind::MatmulRows;
                split(kind, plan.rows.len(), TILE_ROWS, false, plan.macs())
            }
            Step::Conv { conv, .. } => {
                let kind = conv.split()?;
                let units = match kind {
                    ConvSplit::OutputRows => conv.geometry.out_hw[0],
                    ConvSplit::Groups => conv.geometry.group,
                };
                split(SplitKind::Conv(kind), units, 1, false, conv.macs())
            }
            _ => return None,
        };
        (split.macs >= 2 * min_part_macs && split.units > split.align).then_some(split)
    }

    /// Where each of `parts` parts starts, in units, and `units` last: as even as the
    /// alignment allows, none empty. Fewer than `parts` parts when there are too few
    /// units.
    fn bounds(&self, parts: usize) -> heapless::Vec<usize, { MAX_LANES + 1 }> {
        let parts = parts
            .min(self.macs / self.min_part_macs.max(1))
            .clamp(1, MAX_LANES);
        // Whole tiles per part where every part gets several; otherwise, where parts may
        // start mid-tile, an even split (32 rows in 4 parts: 8 each, not 6, 12, 6 and 8).
        let align = if self.strict || self.units >= 4 * parts * self.align {
            self.align
        } else {
            1
        };
        let blocks = self.units.div_ceil(align);
        let parts = parts.min(blocks);
        let mut bounds = heapless::Vec::new();
        for part in 0..parts {
            // Whole blocks, spread evenly; the last block may be short.
            let start = (part * blocks / parts * align).min(self.units);
            if bounds.last() != Some(&start) {
                let _ = bounds.push(start);
            }
        }
        let _ = bounds.push(self.units);
        bounds
    }
}

/// What the planner knows of a value.
#[derive(Debug, Clone)]
enum Value {
    F32 { operand: Operand, dims: Vec<usize> },
    I64 { values: Vec<i64>, dims: Vec<usize> },
}

impl PlannedGraph {
    /// Compiles a graph whose every shape is known. Fails, naming the node, on an op or a
    /// layout the executor does not have.
    pub(crate) fn plan(model: &TypedModel) -> Result<PlannedGraph, PlanError> {
        Planner::new(model).run()
    }

    /// Values a run's input holds.
    pub(crate) fn input_len(&self) -> usize {
        self.input_len
    }

    /// The buffers one session runs in, allocated once; `None` when the memory is not
    /// there ([`PlannedGraph::buffer_bytes`] of them).
    pub(crate) fn new_buffers(&self) -> Option<Vec<Vec<f32>>> {
        self.slot_lens.iter().map(|&len| zeroed(len)).collect()
    }

    /// Values of the convolutions' scratch buffer (0 without a convolution): what each
    /// worker of a [`Team`] needs of its own.
    pub(crate) fn scratch_len(&self) -> usize {
        self.scratch_slot.map_or(0, |slot| self.slot_lens[slot])
    }

    /// The same graph with every step that can be split split, however small: for tests
    /// of the split kernels on small networks.
    #[cfg(test)]
    fn splitting_every_step(mut self) -> PlannedGraph {
        for (split, planned) in self.splits.iter_mut().zip(&self.steps) {
            *split = Split::of(&planned.step, 1);
        }
        self
    }

    /// Bytes of buffers a session holds.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.slot_lens.iter().sum::<usize>() * std::mem::size_of::<f32>()
    }

    /// Runs the graph on `input` (of [`PlannedGraph::input_len`] values) in `buffers`,
    /// splitting its large steps across `team`'s threads. Allocates nothing. On x86_64
    /// CPUs with AVX2 and FMA the kernels run compiled for them (twice the lanes of the
    /// SSE2 baseline). The results are the same bit for bit, whatever the build and the
    /// team: the same operations in the same order, no contraction into fused
    /// multiply-adds by the compiler; the kernels that use them (tiles, depthwise,
    /// activations) choose them from what the CPU has, whichever build runs.
    pub(crate) fn run(&self, buffers: &mut [Vec<f32>], input: &[f32], team: &mut Team<'_>) {
        self.run_timed(buffers, input, team, &mut []);
    }

    /// [`PlannedGraph::run`] with the time of each step, in `step_ns` (one per step, in
    /// order, added to; none taken when it is empty): what `posed engines profile` and
    /// the benches print. A split step's time is its slowest part's, hand-offs included.
    pub(crate) fn run_timed(
        &self,
        buffers: &mut [Vec<f32>],
        input: &[f32],
        team: &mut Team<'_>,
        step_ns: &mut [u64],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_and_fma() {
                // SAFETY: the CPU supports AVX2 and FMA, the features the function enables.
                return unsafe { self.run_avx2_fma(buffers, input, team, step_ns) };
            }
        }
        self.run_steps(buffers, input, team, step_ns);
    }

    /// [`PlannedGraph::run_steps`] compiled for AVX2 and FMA. (The closures that run a
    /// split step's parts, on whichever thread, inherit the features.)
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2_fma(
        &self,
        buffers: &mut [Vec<f32>],
        input: &[f32],
        team: &mut Team<'_>,
        step_ns: &mut [u64],
    ) {
        self.run_steps(buffers, input, team, step_ns);
    }

    /// The steps in order; inlined into each instruction-set variant of [`PlannedGraph::run`]
    /// with every kernel.
    #[inline(always)]
    fn run_steps(
        &self,
        buffers: &mut [Vec<f32>],
        input: &[f32],
        team: &mut Team<'_>,
        step_ns: &mut [u64],
    ) {
        for (index, planned) in self.steps.iter().enumerate() {
            let started = (!step_ns.is_empty()).then(std::time::Instant::now);
            let split = self.splits[index].filter(|_| team.lanes() > 1);
            self.run_step(planned, split, buffers, input, team);
            if let (Some(started), Some(ns)) = (started, step_ns.get_mut(index)) {
                *ns += started.elapsed().as_nanos() as u64;
            }
        }
    }

    #[inline(always)]
    fn run_step(
        &self,
        planned: &PlannedStep,
        split: Option<Split>,
        buffers: &mut [Vec<f32>],
        input: &[f32],
        team: &mut Team<'_>,
    ) {
        // Take the output buffer out so the step can read the others; `take` leaves an
        // empty Vec, which does not allocate.
        let mut out_buffer = std::mem::take(&mut buffers[planned.out_slot]);
        let out = &mut out_buffer[..planned.out_len];
        // A convolution's scratch buffer comes out the same way.
        let scratch = match planned.step {
            Step::Conv { scratch, .. } => Some(scratch),
            _ => None,
        };
        let mut scratch_values =
            scratch.map_or_else(Vec::new, |slot| std::mem::take(&mut buffers[slot]));
        let read = |operand: Operand| self.operand(buffers, input, operand);
        if let Some(split) = split {
            self.run_split(planned, split, (out, &mut scratch_values), read, team);
        } else {
            Self::run_whole(planned, out, &mut scratch_values, read, &self.consts);
        }
        buffers[planned.out_slot] = out_buffer;
        if let Some(slot) = scratch {
            buffers[slot] = scratch_values;
        }
    }

    /// A step on this thread.
    #[inline(always)]
    fn run_whole<'a>(
        planned: &PlannedStep,
        out: &mut [f32],
        scratch_values: &mut [f32],
        read: impl Fn(Operand) -> &'a [f32],
        consts: &'a [Vec<f32>],
    ) {
        match &planned.step {
            Step::Conv {
                x,
                weights,
                bias,
                conv,
                scratch: _,
                activation,
            } => kernels::conv(
                conv,
                out,
                read(*x),
                &consts[*weights],
                bias.map(|b| &consts[b][..]),
                *activation,
                scratch_values,
            ),
            Step::Matmul {
                a,
                b,
                plan,
                bias,
                activation,
            } => kernels::matmul(
                plan,
                out,
                read(*a),
                read(*b),
                matmul_bias(*bias, consts),
                *activation,
            ),
            Step::Binary { op, a, b, walk } => {
                let (a, b) = (read(*a), read(*b));
                match op {
                    BinaryOp::Add => kernels::binary(walk, out, a, b, |x, y| x + y),
                    BinaryOp::Sub => kernels::binary(walk, out, a, b, |x, y| x - y),
                    BinaryOp::Mul => kernels::binary(walk, out, a, b, |x, y| x * y),
                    BinaryOp::Div => kernels::binary(walk, out, a, b, |x, y| x / y),
                    BinaryOp::Max => kernels::binary(walk, out, a, b, f32::max),
                    BinaryOp::Min => kernels::binary(walk, out, a, b, f32::min),
                }
            }
            Step::Unary { op, x } => kernels::unary(*op, out, read(*x)),
            Step::Reduce { op, x, walk } => {
                let x = read(*x);
                match op {
                    ReduceOp::Sum => {
                        out.fill(0.0);
                        kernels::reduce(walk, out, x, |acc, v| acc + v);
                    }
                    ReduceOp::Prod => {
                        out.fill(1.0);
                        kernels::reduce(walk, out, x, |acc, v| acc * v);
                    }
                    ReduceOp::Max => {
                        out.fill(f32::NEG_INFINITY);
                        kernels::reduce(walk, out, x, f32::max);
                    }
                    ReduceOp::Min => {
                        out.fill(f32::INFINITY);
                        kernels::reduce(walk, out, x, f32::min);
                    }
                }
            }
            Step::Copy { fill, parts } => {
                if let Some(value) = fill {
                    out.fill(*value);
                }
                for part in parts {
                    kernels::copy(&part.walk, out, read(part.x), part.out_base, part.x_base);
                }
            }
        }
    }

    /// A step split into parts across the team's threads: each part writes its own
    /// window of `out`, or its own values of it through a [`SharedOut`].
    #[inline(always)]
    fn run_split<'a>(
        &'a self,
        planned: &PlannedStep,
        split: Split,
        (out, scratch_values): (&mut [f32], &mut [f32]),
        read: impl Fn(Operand) -> &'a [f32],
        team: &mut Team<'_>,
    ) {
        let bounds = split.bounds(team.lanes());
        let workers = team.workers;
        let mut ranges: heapless::Vec<std::ops::Range<usize>, MAX_LANES> =
            bounds.windows(2).map(|pair| pair[0]..pair[1]).collect();
        match (&planned.step, split.kind) {
            (
                Step::Matmul {
                    a,
                    b,
                    plan,
                    bias,
                    activation,
                },
                kind,
            ) => {
                let (a, b) = (read(*a), read(*b));
                let bias = matmul_bias(*bias, &self.consts);
                let activation = *activation;
                if kind == SplitKind::MatmulRows {
                    let window_start = |row: usize| plan.row_out_start(row);
                    let mut parts = split_output(&bounds, window_start, out, Default::default);
                    let kernel = MatmulRowsKernel {
                        plan,
                        operands: (a, b),
                        bias,
                        activation,
                    };
                    run_kernel_parts(workers, &mut parts, &kernel);
                } else {
                    let kernel = MatmulColumnsKernel {
                        plan,
                        // SAFETY: the parts' column ranges (`bounds`) are disjoint, and
                        // each writes only its own columns.
                        out: unsafe { SharedOut::new(out) },
                        operands: (a, b),
                        bias,
                        activation,
                    };
                    run_kernel_parts(workers, &mut ranges, &kernel);
                }
            }
            (
                Step::Conv {
                    x,
                    weights,
                    bias,
                    conv,
                    activation,
                    ..
                },
                kind,
            ) => {
                let layer = ConvLayer {
                    plan: conv,
                    weights: &self.consts[*weights],
                    bias: bias.map(|b| &self.consts[b][..]),
                    activation: *activation,
                };
                let x = read(*x);
                let geometry = &conv.geometry;
                if kind == SplitKind::Conv(ConvSplit::Groups) {
                    let group_len = geometry.out_channels / geometry.group * conv.out_plane();
                    let window_start = |group: usize| group * group_len;
                    // The caller's scratch, then each worker's.
                    let mut scratches = std::iter::once(scratch_values)
                        .chain(team.scratches.iter_mut().map(|scratch| &mut scratch[..]));
                    let next_scratch = || scratches.next().unwrap_or_default();
                    let mut parts = split_output(&bounds, window_start, out, next_scratch);
                    run_kernel_parts(workers, &mut parts, &ConvGroupsKernel { layer, x });
                } else {
                    // The caller fills the scratch every part reads.
                    kernels::conv_fill(conv, x, scratch_values);
                    let kernel = ConvRowsKernel {
                        layer,
                        // SAFETY: the parts' output-row ranges (`bounds`) are disjoint, and
                        // each writes only its own rows.
                        out: unsafe { SharedOut::new(out) },
                        scratch: scratch_values,
                    };
                    run_kernel_parts(workers, &mut ranges, &kernel);
                }
            }
            // `Split::of` splits nothing else.
            _ => Self::run_whole(planned, out, scratch_values, read, &self.consts),
        }
    }

    /// The values `operand` names.
    #[inline(always)]
    fn operand<'a>(
        &'a self,
        buffers: &'a [Vec<f32>],
        input: &'a [f32],
        operand: Operand,
    ) -> &'a [f32] {
        match operand {
            Operand::Input => input,
            Operand::Slot { slot, len } => &buffers[slot][..len],
            Operand::Const(index) => &self.consts[index],
        }
    }

    /// Output `index` after a run in `buffers` on `input`, with its dimensions.
    pub(crate) fn output<'a>(
        &'a self,
        buffers: &'a [Vec<f32>],
        input: &'a [f32],
        index: usize,
    ) -> Option<(OutputView<'a>, &'a [usize])> {
        Some(match self.outputs.get(index)? {
            PlannedOutput::F32 { value, dims } => (
                OutputView::F32(self.operand(buffers, input, *value)),
                &dims[..],
            ),
            PlannedOutput::I64 { values, dims } => (OutputView::I64(values), &dims[..]),
        })
    }

    /// Number of outputs.
    pub(crate) fn output_count(&self) -> usize {
        self.outputs.len()
    }

    /// What each step does, in order: `conv`, `matmul+Silu`, `Mul`, `copy`...
    #[cfg(test)]
    pub(crate) fn step_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|planned| match &planned.step {
                Step::Conv { activation, .. } => with_activation("conv", activation),
                Step::Matmul { activation, .. } => with_activation("matmul", activation),
                Step::Binary { op, .. } => format!("{op:?}"),
                Step::Unary { op, .. } => format!("{op:?}"),
                Step::Reduce { op, .. } => format!("reduce {op:?}"),
                Step::Copy { .. } => "copy".to_owned(),
            })
            .collect()
    }

    /// Each step with its sizes, in order, for profiles: `conv 3x3/2 x1 6->40 120x160+Silu`
    /// (kernel, stride, groups, channels, output size), `matmul 1x16x9`, `Mul 76800`.
    pub(crate) fn step_labels(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|planned| match &planned.step {
                Step::Conv {
                    conv, activation, ..
                } => {
                    let g = &conv.geometry;
                    let label = format!(
                        "conv {}x{}/{} x{} {}->{} {}x{}",
                        g.kernel_hw[0],
                        g.kernel_hw[1],
                        g.stride[0],
                        g.group,
                        g.in_channels,
                        g.out_channels,
                        g.out_hw[0],
                        g.out_hw[1]
                    );
                    with_activation(&label, activation)
                }
                Step::Matmul {
                    plan, activation, ..
                } => {
                    let label = format!(
                        "matmul {}x{}x{}x{}",
                        plan.batch.len(),
                        plan.rows.len(),
                        plan.reduction.len(),
                        plan.n
                    );
                    with_activation(&label, activation)
                }
                Step::Binary { op, .. } => format!("{op:?} {}", planned.out_len),
                Step::Unary { op, .. } => format!("{op:?} {}", planned.out_len),
                Step::Reduce { op, .. } => format!("reduce {op:?} {}", planned.out_len),
                Step::Copy { .. } => format!("copy {}", planned.out_len),
            })
            .collect()
    }
}

/// What each part of a split step runs.
trait PartKernel: Sync {
    /// What a part is: the units it computes, and the window of the output it writes
    /// where it has one.
    type Part: Send;

    /// Computes `part`; implementations are `#[inline(always)]`, so that each build of
    /// [`run_part_best`] holds its own copy of the kernels.
    fn run(&self, part: &mut Self::Part);
}

/// [`MatmulPlan`] rows, each part into its window.
struct MatmulRowsKernel<'a> {
    plan: &'a MatmulPlan,
    operands: (&'a [f32], &'a [f32]),
    bias: Option<MatmulBias<'a>>,
    activation: Option<Unary>,
}

impl<'a> PartKernel for MatmulRowsKernel<'a> {
    type Part = Part<'a>;

    #[inline(always)]
    fn run(&self, part: &mut Part<'a>) {
        let out = (&mut *part.out, part.out_start);
        let ((a, b), rows) = (self.operands, part.units.clone());
        kernels::matmul_rows(self.plan, out, a, b, self.bias, self.activation, rows);
    }
}

/// [`MatmulPlan`] columns.
struct MatmulColumnsKernel<'a> {
    plan: &'a MatmulPlan,
    out: SharedOut<'a>,
    operands: (&'a [f32], &'a [f32]),
    bias: Option<MatmulBias<'a>>,
    activation: Option<Unary>,
}

impl PartKernel for MatmulColumnsKernel<'_> {
    type Part = std::ops::Range<usize>;

    #[inline(always)]
    fn run(&self, columns: &mut std::ops::Range<usize>) {
        let (plan, mut out, operands) = (self.plan, &self.out, self.operands);
        let columns = columns.clone();
        kernels::matmul_columns(
            plan,
            &mut out,
            operands,
            self.bias,
            self.activation,
            columns,
        );
    }
}

/// A convolution's groups, each part into its window, filling its own scratch.
struct ConvGroupsKernel<'a> {
    layer: ConvLayer<'a>,
    x: &'a [f32],
}

impl<'a> PartKernel for ConvGroupsKernel<'a> {
    type Part = Part<'a>;

    #[inline(always)]
    fn run(&self, part: &mut Part<'a>) {
        let out = (&mut *part.out, part.out_start);
        let groups = part.units.clone();
        kernels::conv_groups(&self.layer, out, self.x, part.scratch, groups);
    }
}

/// A convolution's output rows, every part reading the scratch the caller filled.
struct ConvRowsKernel<'a> {
    layer: ConvLayer<'a>,
    out: SharedOut<'a>,
    scratch: &'a [f32],
}

impl PartKernel for ConvRowsKernel<'_> {
    type Part = std::ops::Range<usize>;

    #[inline(always)]
    fn run(&self, rows: &mut std::ops::Range<usize>) {
        kernels::conv_rows(&self.layer, &self.out, self.scratch, rows.clone());
    }
}

/// Runs `kernel` on every part, across `workers` and this thread.
#[inline(always)]
fn run_kernel_parts<K: PartKernel>(workers: &[Worker], parts: &mut [K::Part], kernel: &K) {
    run_parts(workers, parts, &|part: &mut K::Part| {
        run_part_best(kernel, part)
    });
}

/// Runs one part in the build of the kernels this CPU runs best, like
/// [`PlannedGraph::run`]. (The closure [`run_parts`] calls is a function of its own,
/// which does not inherit the features of the build that made it: without this, the
/// activations' fused multiply-adds became calls to a software `fmaf`.)
fn run_part_best<K: PartKernel>(kernel: &K, part: &mut K::Part) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_and_fma() {
            // SAFETY: the CPU supports AVX2 and FMA, the features the function enables.
            return unsafe { run_part_avx2_fma(kernel, part) };
        }
    }
    kernel.run(part);
}

/// [`PartKernel::run`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_part_avx2_fma<K: PartKernel>(kernel: &K, part: &mut K::Part) {
    kernel.run(part);
}

/// A matmul step's bias, read from the constants.
#[inline(always)]
fn matmul_bias(bias: Option<PlannedBias>, consts: &[Vec<f32>]) -> Option<MatmulBias<'_>> {
    bias.map(|bias| match bias {
        PlannedBias::PerRow(c) => MatmulBias::PerRow(&consts[c]),
        PlannedBias::PerColumn(c) => MatmulBias::PerColumn(&consts[c]),
    })
}

/// Cuts `out` into one window per part of `bounds` (the units where parts start, then
/// the end): part `i` writes from `window_start(bounds[i])` (from 0 for the first) up to
/// where the next starts (to the end for the last). `next_scratch` gives each part its
/// scratch.
#[inline(always)]
fn split_output<'p>(
    bounds: &[usize],
    window_start: impl Fn(usize) -> usize,
    out: &'p mut [f32],
    mut next_scratch: impl FnMut() -> &'p mut [f32],
) -> heapless::Vec<Part<'p>, MAX_LANES> {
    let mut parts = heapless::Vec::new();
    let mut rest = out;
    let mut rest_start = 0;
    for (index, units) in bounds.windows(2).enumerate() {
        let end = if index + 2 < bounds.len() {
            window_start(units[1])
        } else {
            rest_start + rest.len()
        };
        let (window, after) = std::mem::take(&mut rest).split_at_mut(end - rest_start);
        let part = Part {
            units: units[0]..units[1],
            out: window,
            out_start: rest_start,
            scratch: next_scratch(),
        };
        if parts.push(part).is_err() {
            unreachable!("`Split::bounds` makes at most {MAX_LANES} parts");
        }
        rest = after;
        rest_start = end;
    }
    parts
}

/// `name+Silu`, or `name` without an activation.
fn with_activation(name: &str, activation: &Option<Unary>) -> String {
    match activation {
        Some(op) => format!("{name}+{op:?}"),
        None => name.to_owned(),
    }
}

/// Row-major strides of `dims`.
fn contiguous_strides(dims: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; dims.len()];
    for axis in (0..dims.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * dims[axis + 1] as isize;
    }
    strides
}

/// Strides reading `dims` broadcast to `out_dims` (right-aligned, 0 on broadcast axes).
fn broadcast_strides(dims: &[usize], out_dims: &[usize]) -> Option<Vec<isize>> {
    if dims.len() > out_dims.len() {
        return None;
    }
    let own = contiguous_strides(dims);
    let lead = out_dims.len() - dims.len();
    let mut strides = vec![0isize; out_dims.len()];
    for (axis, &dim) in dims.iter().enumerate() {
        let out_dim = out_dims[lead + axis];
        if dim == out_dim {
            strides[lead + axis] = own[axis];
        } else if dim != 1 {
            return None;
        }
    }
    Some(strides)
}

struct Planner<'m> {
    model: &'m TypedModel,
    values: HashMap<OutletId, Value>,
    consts: Vec<Vec<f32>>,
    steps: Vec<PlannedStep>,
    slot_lens: Vec<usize>,
    free_slots: Vec<usize>,
    /// For each slot value, the index (in evaluation order) of its last reader;
    /// `usize::MAX` for model outputs.
    last_use: HashMap<OutletId, usize>,
    /// The convolutions' shared scratch buffer (padded, phase-split input planes).
    scratch_slot: Option<usize>,
    /// Slots a node's extra steps used, freed once its output slot is allocated.
    pending_free: Vec<usize>,
    node: Option<usize>,
    /// The value of the last node, when a convolution or a matmul computes it that a
    /// following node can be folded into.
    fusable: Option<Fusable>,
}

/// A node's value computed by a convolution or a matmul step.
#[derive(Debug, Clone, Copy)]
struct Fusable {
    outlet: OutletId,
    /// The index of the step.
    step: usize,
    /// The node's value is the step's output transposed to channels last (a convolution
    /// tract laid out that way: see [`Planner::conv`]).
    channels_last: bool,
}

impl<'m> Planner<'m> {
    fn new(model: &'m TypedModel) -> Planner<'m> {
        Planner {
            model,
            values: HashMap::new(),
            consts: Vec::new(),
            steps: Vec::new(),
            slot_lens: Vec::new(),
            free_slots: Vec::new(),
            last_use: HashMap::new(),
            scratch_slot: None,
            pending_free: Vec::new(),
            node: None,
            fusable: None,
        }
    }

    fn error(&self, reason: impl Into<String>) -> PlanError {
        let (node, op) = match self.node {
            Some(id) => {
                let node = self.model.node(id);
                (node.name.clone(), node.op().name().to_string())
            }
            None => ("(graph)".to_owned(), "-".to_owned()),
        };
        PlanError {
            node,
            op,
            reason: reason.into(),
            too_large: false,
        }
    }

    /// A [`PlanError`] for a value (or buffers) too large to plan.
    fn too_large(&self, reason: impl Into<String>) -> PlanError {
        PlanError {
            too_large: true,
            ..self.error(reason)
        }
    }

    /// Refuses a value of `dims` with elements of `bytes` bytes over [`MAX_BUFFER_BYTES`]
    /// (or whose size overflows). Checked for every value before anything is sized from
    /// it, so the planner's own products of dimensions cannot overflow.
    fn check_size(&self, dims: &[usize], bytes: usize) -> Result<(), PlanError> {
        let size = footprint(dims).and_then(|n| n.checked_mul(bytes));
        match size {
            Some(size) if size as u64 <= MAX_BUFFER_BYTES => Ok(()),
            _ => Err(self.too_large(format!(
                "a value of shape {dims:?} takes {}, more than the {} a value may take",
                describe_bytes(size),
                describe_bytes(Some(MAX_BUFFER_BYTES as usize)),
            ))),
        }
    }

    fn run(mut self) -> Result<PlannedGraph, PlanError> {
        let model = self.model;
        let order = model
            .eval_order_opt_ram()
            .map_err(|e| self.error(format!("ordering the graph: {e}")))?;
        for (position, &id) in order.iter().enumerate() {
            for input in &model.node(id).inputs {
                self.last_use.insert(*input, position);
            }
        }
        let outputs = model
            .output_outlets()
            .map_err(|e| self.error(format!("{e}")))?
            .to_vec();
        for output in &outputs {
            self.last_use.insert(*output, usize::MAX);
        }
        let inputs = model
            .input_outlets()
            .map_err(|e| self.error(format!("{e}")))?;
        if inputs.len() != 1 {
            return Err(self.error(format!("expected one input, found {}", inputs.len())));
        }
        let mut input_len = 0;
        for (position, &id) in order.iter().enumerate() {
            self.node = Some(id);
            let node = model.node(id);
            if node.outputs.len() != 1 {
                return Err(
                    self.error(format!("expected one output, found {}", node.outputs.len()))
                );
            }
            let fact = &node.outputs[0].fact;
            let dims = fact
                .shape
                .as_concrete()
                .ok_or_else(|| self.error(format!("shape {:?} is not fully known", fact.shape)))?
                .to_vec();
            self.check_size(&dims, fact.datum_type.size_of())?;
            let outlet = OutletId::new(id, 0);
            if node.op_is::<TypedSource>() {
                if fact.datum_type != f32::datum_type() {
                    return Err(self.error(format!("input is {:?}, expected f32", fact.datum_type)));
                }
                input_len = dims.iter().product();
                self.values.insert(
                    outlet,
                    Value::F32 {
                        operand: Operand::Input,
                        dims,
                    },
                );
                continue;
            }
            if let Some(konst) = node.op_as::<Const>() {
                let tensor = konst.val();
                let view = tensor
                    .try_as_plain_ram()
                    .map_err(|e| self.error(format!("reading the constant: {e}")))?;
                let out_of_memory = || self.too_large("no memory for a copy of the constant");
                let value = if let Ok(values) = view.as_slice::<f32>() {
                    let values = copied(values).ok_or_else(out_of_memory)?;
                    self.consts.push(values);
                    Value::F32 {
                        operand: Operand::Const(self.consts.len() - 1),
                        dims,
                    }
                } else if let Ok(values) = view.as_slice::<i64>() {
                    Value::I64 {
                        values: copied(values).ok_or_else(out_of_memory)?,
                        dims,
                    }
                } else {
                    return Err(self.error(format!(
                        "constant of type {:?} (expected f32 or i64)",
                        tensor.datum_type()
                    )));
                };
                self.values.insert(outlet, value);
                continue;
            }
            if fact.datum_type != f32::datum_type() {
                return Err(self.error(format!("computes {:?}, expected f32", fact.datum_type)));
            }
            if dims.contains(&0) {
                return Err(self.error(format!("computes an empty tensor {dims:?}")));
            }
            if let Some(value) = self.fuse_into_last_step(node, &dims) {
                self.values.insert(outlet, value);
                if let Some(fusable) = &mut self.fusable {
                    fusable.outlet = outlet;
                }
                continue;
            }
            let step = self.step(node, &dims)?;
            let inner_conv = matches!(
                self.steps.last(),
                Some(PlannedStep {
                    step: Step::Conv { .. },
                    ..
                })
            ) && node.op_is::<Conv>();
            self.fusable = match step {
                Step::Conv { .. } | Step::Matmul { .. } => Some(Fusable {
                    outlet,
                    step: self.steps.len(),
                    channels_last: false,
                }),
                // A channels-last convolution: its step, then this transpose.
                Step::Copy { .. } if inner_conv => Some(Fusable {
                    outlet,
                    step: self.steps.len() - 1,
                    channels_last: true,
                }),
                _ => None,
            };
            let out_len: usize = dims.iter().product();
            let out_slot = self.allocate(out_len);
            self.steps.push(PlannedStep {
                step,
                out_slot,
                out_len,
            });
            self.values.insert(
                outlet,
                Value::F32 {
                    operand: Operand::Slot {
                        slot: out_slot,
                        len: out_len,
                    },
                    dims,
                },
            );
            // Free the inputs read for the last time, and the node's temporaries (after
            // allocating the output, so a step never writes a slot it reads).
            self.free_slots.append(&mut self.pending_free);
            let mut freed = Vec::new();
            for input in &node.inputs {
                if self.last_use.get(input) == Some(&position) && !freed.contains(input) {
                    freed.push(*input);
                    if let Some(Value::F32 {
                        operand: Operand::Slot { slot, .. },
                        ..
                    }) = self.values.get(input)
                    {
                        self.free_slots.push(*slot);
                    }
                }
            }
        }
        self.node = None;
        let total = self
            .slot_lens
            .iter()
            .try_fold(0usize, |sum, &len| sum.checked_add(len));
        if total.is_none_or(|n| n as u64 > MAX_BUFFER_BYTES / 4) {
            return Err(self.too_large(format!(
                "the session's buffers take {} in all, more than the {} they may take",
                describe_bytes(total.and_then(|n| n.checked_mul(4))),
                describe_bytes(Some(MAX_BUFFER_BYTES as usize)),
            )));
        }
        let mut planned_outputs = Vec::with_capacity(outputs.len());
        for output in &outputs {
            planned_outputs.push(match self.values.get(output) {
                Some(Value::F32 { operand, dims }) => PlannedOutput::F32 {
                    value: *operand,
                    dims: dims.clone(),
                },
                Some(Value::I64 { values, dims }) => PlannedOutput::I64 {
                    values: values.clone(),
                    dims: dims.clone(),
                },
                None => return Err(self.error(format!("output {output:?} was never computed"))),
            });
        }
        // Constants every step now reads folded copies of (weights scaled by a following
        // Mul): drop them, keeping the indices.
        let mut in_use = vec![false; self.consts.len()];
        for planned in &self.steps {
            planned.step.for_each_const(|c| in_use[c] = true);
        }
        for output in &planned_outputs {
            if let PlannedOutput::F32 {
                value: Operand::Const(c),
                ..
            } = output
            {
                in_use[*c] = true;
            }
        }
        for (values, used) in self.consts.iter_mut().zip(in_use) {
            if !used {
                *values = Vec::new();
            }
        }
        Ok(PlannedGraph {
            splits: self
                .steps
                .iter()
                .map(|planned| Split::of(&planned.step, MIN_PART_MACS))
                .collect(),
            steps: self.steps,
            consts: self.consts,
            slot_lens: self.slot_lens,
            scratch_slot: self.scratch_slot,
            input_len,
            outputs: planned_outputs,
        })
    }

    /// Folds `node` into the convolution or matmul step that computes its input (the last
    /// step, or the one before a channels-last convolution's transpose) when it is an
    /// element-wise function, or a `Mul` or an `Add` of a constant that is the same over
    /// each output row of the step (a batch normalisation after a convolution, say), and
    /// it is the only reader of that value: the weights and the bias take the constant, and the function is
    /// applied as the step writes its output, instead of one more pass over the values.
    /// Returns the node's value (the step's), or `None` to plan the node as usual.
    fn fuse_into_last_step(&mut self, node: &TypedNode, out_dims: &[usize]) -> Option<Value> {
        let fusable = self.fusable?;
        let previous = fusable.outlet;
        if self.model.outlet_successors(previous).len() != 1
            || self.last_use.get(&previous) == Some(&usize::MAX)
        {
            return None;
        }
        let value = self.values.get(&previous)?.clone();
        match &value {
            Value::F32 { dims, .. } if dims == out_dims => {}
            _ => return None,
        }
        let fused = if let Some(element_wise) = node.op_as::<ElementWiseOp>() {
            let op = Unary::from_tract_name(&element_wise.0.name())
                .filter(|_| element_wise.1.is_none_or(|dt| dt == f32::datum_type()))?;
            node.inputs[..] == [previous] && self.fuse_activation(fusable.step, op)
        } else if let Some(binary) = node.op_as::<TypedBinOp>() {
            let other = match node.inputs[..] {
                [a, b] if a == previous => b,
                [a, b] if b == previous => a,
                _ => return None,
            };
            let Some(Value::F32 {
                operand: Operand::Const(constant),
                dims: constant_dims,
            }) = self.values.get(&other)
            else {
                return None;
            };
            // The constant as the output sees it, one value per output value.
            let expanded = self.expanded(*constant, constant_dims, out_dims)?;
            let is_mul = match binary.0.name() {
                "Mul" => true,
                "Add" => false,
                _ => return None,
            };
            // A scale of 0 stays a Mul: folded, it would turn an infinite or NaN sum
            // into 0 where the graph computes NaN.
            if is_mul && expanded.contains(&0.0) {
                return None;
            }
            let by_row = self
                .per_output_row(fusable, &expanded)
                .is_some_and(|per_row| {
                    if is_mul {
                        self.fuse_scale(fusable.step, &per_row)
                    } else {
                        self.fuse_shift(fusable.step, &per_row, false)
                    }
                });
            // Else one value per column (a matmul whose rows are pixels, channels last;
            // or whose row weights are computed).
            by_row
                || self
                    .per_output_column(fusable, &expanded)
                    .is_some_and(|per_column| {
                        if is_mul {
                            self.fuse_matmul_scale(fusable.step, &per_column, true)
                        } else {
                            self.fuse_shift(fusable.step, &per_column, true)
                        }
                    })
        } else {
            false
        };
        fused.then_some(value)
    }

    /// Where the rows a step computes (a convolution's output channel of each image, a
    /// matmul's row of each batch entry) lie in the node's value: (start, length, stride).
    fn output_rows(&self, fusable: Fusable) -> Vec<(usize, usize, usize)> {
        match &self.steps.get(fusable.step).map(|planned| &planned.step) {
            Some(Step::Conv { conv, .. }) => {
                let geometry = &conv.geometry;
                let (plane, channels) = (
                    geometry.out_hw[0] * geometry.out_hw[1],
                    geometry.out_channels,
                );
                (0..geometry.images * channels)
                    .map(|i| {
                        if fusable.channels_last {
                            let (image, channel) = (i / channels, i % channels);
                            (image * plane * channels + channel, plane, channels)
                        } else {
                            (i * plane, plane, 1)
                        }
                    })
                    .collect()
            }
            Some(Step::Matmul { plan, .. }) => plan
                .batch
                .iter()
                .flat_map(|&[_, _, c_batch]| {
                    plan.rows
                        .iter()
                        .map(move |&[_, c_m]| (c_batch + c_m, plan.n, 1))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A constant (`expanded` to one value per output value) as one finite value per
    /// output row of the step (per output channel for a convolution), or `None` when it
    /// varies along a row (or across a convolution's images).
    fn per_output_row(&self, fusable: Fusable, expanded: &[f32]) -> Option<Vec<f32>> {
        let mut per_row = Vec::new();
        for (start, len, stride) in self.output_rows(fusable) {
            let row = expanded.get(start..start + (len - 1) * stride + 1)?;
            let first = row[0];
            if !first.is_finite()
                || row
                    .iter()
                    .step_by(stride)
                    .any(|v| v.to_bits() != first.to_bits())
            {
                return None;
            }
            per_row.push(first);
        }
        if let Some(Step::Conv { conv, .. }) = self.steps.get(fusable.step).map(|p| &p.step) {
            let geometry = &conv.geometry;
            // The images share the weights: each channel needs one value.
            let (channels, images) = (&per_row[..geometry.out_channels], &per_row);
            if images.chunks(geometry.out_channels).any(|image| {
                image
                    .iter()
                    .zip(channels)
                    .any(|(a, b)| a.to_bits() != b.to_bits())
            }) {
                return None;
            }
            per_row.truncate(geometry.out_channels);
        }
        (!per_row.is_empty()).then_some(per_row)
    }

    /// The constant `constant` (of `dims`) broadcast to `out_dims`: one value per output
    /// value.
    fn expanded(&self, constant: usize, dims: &[usize], out_dims: &[usize]) -> Option<Vec<f32>> {
        let strides = broadcast_strides(dims, out_dims)?;
        let out_strides = contiguous_strides(out_dims);
        let walk = StridedWalk::new(out_dims, [&out_strides, &strides, &strides])?;
        let mut expanded = zeroed(out_dims.iter().product())?;
        kernels::copy(&walk, &mut expanded, &self.consts[constant], 0, 0);
        Some(expanded)
    }

    /// A constant (`expanded` to one value per output value) as one finite value per
    /// column of a matmul's output (the same along every row), or `None`.
    fn per_output_column(&self, fusable: Fusable, expanded: &[f32]) -> Option<Vec<f32>> {
        if !matches!(self.steps.get(fusable.step)?.step, Step::Matmul { .. }) {
            return None;
        }
        let mut rows = self.output_rows(fusable).into_iter();
        let (start, len, _) = rows.next()?;
        let first = expanded.get(start..start + len)?;
        if len < 2 || first.iter().any(|v| !v.is_finite()) {
            return None;
        }
        for (start, len, _) in rows {
            let row = expanded.get(start..start + len)?;
            if row
                .iter()
                .zip(first)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return None;
            }
        }
        Some(first.to_vec())
    }

    /// Sets step `step`'s activation, if it has none.
    fn fuse_activation(&mut self, step: usize, op: Unary) -> bool {
        match self.steps.get_mut(step).map(|planned| &mut planned.step) {
            Some(Step::Conv { activation, .. } | Step::Matmul { activation, .. })
                if activation.is_none() =>
            {
                *activation = Some(op);
                true
            }
            _ => false,
        }
    }

    /// A new constant; its index.
    fn push_const(&mut self, values: Vec<f32>) -> usize {
        self.consts.push(values);
        self.consts.len() - 1
    }

    /// `values` with each element `index` of `indices` multiplied by its `scale`, or
    /// `None` when an element would need two different scales.
    fn scaled_copy(
        values: &[f32],
        indices_and_scales: impl Iterator<Item = (usize, f32)>,
    ) -> Option<Vec<f32>> {
        let mut scaled = values.to_vec();
        let mut scale_of: Vec<Option<u32>> = vec![None; scaled.len()];
        for (index, scale) in indices_and_scales {
            match scale_of.get(index)? {
                None => {
                    scale_of[index] = Some(scale.to_bits());
                    scaled[index] *= scale;
                }
                Some(bits) if *bits == scale.to_bits() => {}
                Some(_) => return None,
            }
        }
        Some(scaled)
    }

    /// `a op b` element by element.
    fn combined(a: &[f32], b: &[f32], op: impl Fn(f32, f32) -> f32) -> Vec<f32> {
        a.iter().zip(b).map(|(&a, &b)| op(a, b)).collect()
    }

    /// Multiplies step `step`'s output rows by `scale` (one value per row), through its
    /// weights and bias.
    fn fuse_scale(&mut self, step: usize, scale: &[f32]) -> bool {
        let Some(planned) = self.steps.get(step) else {
            return false;
        };
        match &planned.step {
            Step::Conv {
                weights,
                bias,
                activation: None,
                ..
            } => {
                let per_channel = self.consts[*weights].len() / scale.len();
                let indices = (0..self.consts[*weights].len()).map(|i| (i, scale[i / per_channel]));
                let Some(scaled) = Self::scaled_copy(&self.consts[*weights], indices) else {
                    return false;
                };
                let new_bias = bias.map(|b| Self::combined(&self.consts[b], scale, |b, s| b * s));
                let new_weights = self.push_const(scaled);
                let new_bias = new_bias.map(|b| self.push_const(b));
                if let Step::Conv { weights, bias, .. } = &mut self.steps[step].step {
                    *weights = new_weights;
                    *bias = new_bias;
                }
                true
            }
            Step::Matmul { .. } => self.fuse_matmul_scale(step, scale, false),
            _ => false,
        }
    }

    /// Multiplies a matmul's output rows by `scale` (one value per row of each batch
    /// entry), or its columns with `per_column` (one value per column, the same for every
    /// row), through its weights (`a` for rows, `b` for columns) and its bias. A weight
    /// two rows (columns) share must get one scale.
    fn fuse_matmul_scale(&mut self, step: usize, scale: &[f32], per_column: bool) -> bool {
        let Some(Step::Matmul {
            a,
            b,
            plan,
            bias,
            activation: None,
        }) = self.steps.get(step).map(|planned| &planned.step)
        else {
            return false;
        };
        let bias_fits = match bias {
            None => true,
            Some(PlannedBias::PerRow(_)) => !per_column,
            Some(PlannedBias::PerColumn(_)) => per_column,
        };
        let (Operand::Const(weights), true) = (if per_column { *b } else { *a }, bias_fits) else {
            return false;
        };
        let indices: Vec<(usize, f32)> = if per_column {
            plan.batch
                .iter()
                .flat_map(|&[_, b_batch, _]| {
                    plan.reduction.iter().map(move |&[_, b_k]| b_batch + b_k)
                })
                .flat_map(|base| scale.iter().enumerate().map(move |(j, &s)| (base + j, s)))
                .collect()
        } else {
            plan.batch
                .iter()
                .flat_map(|&[a_batch, _, _]| plan.rows.iter().map(move |&[a_m, _]| a_batch + a_m))
                .zip(scale)
                .flat_map(|(base, &s)| plan.reduction.iter().map(move |&[a_k, _]| (base + a_k, s)))
                .collect()
        };
        let Some(scaled) = Self::scaled_copy(&self.consts[weights], indices.into_iter()) else {
            return false;
        };
        let new_bias =
            bias.map(|bias| Self::combined(&self.consts[bias.constant()], scale, |b, s| b * s));
        let new_weights = Operand::Const(self.push_const(scaled));
        let new_bias = new_bias.map(|values| {
            let constant = self.push_const(values);
            if per_column {
                PlannedBias::PerColumn(constant)
            } else {
                PlannedBias::PerRow(constant)
            }
        });
        if let Step::Matmul { a, b, bias, .. } = &mut self.steps[step].step {
            *if per_column { b } else { a } = new_weights;
            *bias = new_bias;
        }
        true
    }

    /// Adds `shift` (one value per output row, or per column with `per_column`) to step
    /// `step`'s output, through its bias.
    fn fuse_shift(&mut self, step: usize, shift: &[f32], per_column: bool) -> bool {
        let shifted = |consts: &[Vec<f32>], bias: Option<usize>| match bias {
            Some(bias) => Self::combined(&consts[bias], shift, |b, t| b + t),
            None => shift.to_vec(),
        };
        match self.steps.get(step).map(|planned| &planned.step) {
            Some(Step::Conv {
                bias,
                activation: None,
                ..
            }) if !per_column => {
                let new_bias = self.push_const(shifted(&self.consts, *bias));
                if let Step::Conv { bias, .. } = &mut self.steps[step].step {
                    *bias = Some(new_bias);
                }
                true
            }
            Some(Step::Matmul {
                bias,
                activation: None,
                ..
            }) => {
                let new_bias = match (*bias, per_column) {
                    (None | Some(PlannedBias::PerRow(_)), false) => PlannedBias::PerRow(
                        self.push_const(shifted(&self.consts, bias.map(PlannedBias::constant))),
                    ),
                    (None | Some(PlannedBias::PerColumn(_)), true) => PlannedBias::PerColumn(
                        self.push_const(shifted(&self.consts, bias.map(PlannedBias::constant))),
                    ),
                    _ => return false,
                };
                if let Step::Matmul { bias, .. } = &mut self.steps[step].step {
                    *bias = Some(new_bias);
                }
                true
            }
            _ => false,
        }
    }

    /// A slot for `len` values: the smallest free one that fits, else the largest free one
    /// grown, else a new one.
    fn allocate(&mut self, len: usize) -> usize {
        let fitting = self
            .free_slots
            .iter()
            .enumerate()
            .filter(|(_, &slot)| self.slot_lens[slot] >= len)
            .min_by_key(|(_, &slot)| self.slot_lens[slot])
            .map(|(i, _)| i);
        let largest = || {
            self.free_slots
                .iter()
                .enumerate()
                .max_by_key(|(_, &slot)| self.slot_lens[slot])
                .map(|(i, _)| i)
        };
        match fitting.or_else(largest) {
            Some(i) => {
                let slot = self.free_slots.swap_remove(i);
                self.slot_lens[slot] = self.slot_lens[slot].max(len);
                slot
            }
            None => {
                self.slot_lens.push(len);
                self.slot_lens.len() - 1
            }
        }
    }

    /// An `f32` input of the current node, with its dimensions.
    fn input(&self, node: &TypedNode, index: usize) -> Result<(Operand, Vec<usize>), PlanError> {
        let outlet = node
            .inputs
            .get(index)
            .ok_or_else(|| self.error(format!("missing input {index}")))?;
        match self.values.get(outlet) {
            Some(Value::F32 { operand, dims }) => Ok((*operand, dims.clone())),
            Some(Value::I64 { .. }) => {
                Err(self.error(format!("input {index} is i64, expected f32")))
            }
            None => Err(self.error(format!("input {index} is not computed before the node"))),
        }
    }

    /// A constant `f32` input of the current node (weights, biases).
    fn const_input(
        &self,
        node: &TypedNode,
        index: usize,
    ) -> Result<(usize, Vec<usize>), PlanError> {
        match self.input(node, index)? {
            (Operand::Const(c), dims) => Ok((c, dims)),
            _ => Err(self.error(format!("input {index} must be a constant"))),
        }
    }

    fn step(&mut self, node: &TypedNode, out_dims: &[usize]) -> Result<Step, PlanError> {
        if let Some(conv) = node.op_as::<Conv>() {
            return self.conv(node, conv, out_dims);
        }
        if let Some(einsum) = node.op_as::<EinSum>() {
            return self.einsum(node, einsum, out_dims);
        }
        if let Some(binary) = node.op_as::<TypedBinOp>() {
            let op = match binary.0.name() {
                "Add" => BinaryOp::Add,
                "Sub" => BinaryOp::Sub,
                "Mul" => BinaryOp::Mul,
                "Div" => BinaryOp::Div,
                "Max" => BinaryOp::Max,
                "Min" => BinaryOp::Min,
                other => return Err(self.error(format!("binary op {other} is not planned"))),
            };
            let (a, a_dims) = self.input(node, 0)?;
            let (b, b_dims) = self.input(node, 1)?;
            let out_strides = contiguous_strides(out_dims);
            let (Some(a_strides), Some(b_strides)) = (
                broadcast_strides(&a_dims, out_dims),
                broadcast_strides(&b_dims, out_dims),
            ) else {
                return Err(self.error(format!(
                    "{a_dims:?} and {b_dims:?} do not broadcast to {out_dims:?}"
                )));
            };
            let walk = StridedWalk::new(out_dims, [&out_strides, &a_strides, &b_strides])
                .ok_or_else(|| self.error("rank too high"))?;
            return Ok(Step::Binary { op, a, b, walk });
        }
        if let Some(element_wise) = node.op_as::<ElementWiseOp>() {
            let name = element_wise.0.name();
            let op = Unary::from_tract_name(&name)
                .filter(|_| element_wise.1.is_none_or(|dt| dt == f32::datum_type()))
                .ok_or_else(|| self.error(format!("element-wise op {name} is not planned")))?;
            let (x, _) = self.input(node, 0)?;
            return Ok(Step::Unary { op, x });
        }
        if let Some(reduce) = node.op_as::<Reduce>() {
            let op = match reduce.reducer {
                Reducer::Sum => ReduceOp::Sum,
                Reducer::Max => ReduceOp::Max,
                Reducer::Min => ReduceOp::Min,
                Reducer::Prod => ReduceOp::Prod,
                other => return Err(self.error(format!("reducer {other:?} is not planned"))),
            };
            let (x, x_dims) = self.input(node, 0)?;
            if x_dims.len() != out_dims.len() {
                return Err(self.error("reduction changes the rank"));
            }
            let mut out_strides = contiguous_strides(out_dims);
            for &axis in &reduce.axes {
                if axis >= out_strides.len() || out_dims[axis] != 1 {
                    return Err(self.error(format!("reduced axis {axis} is not of size 1")));
                }
                out_strides[axis] = 0;
            }
            let x_strides = contiguous_strides(&x_dims);
            let zeros = vec![0isize; x_dims.len()];
            let walk = StridedWalk::new(&x_dims, [&out_strides, &x_strides, &zeros])
                .ok_or_else(|| self.error("rank too high"))?;
            return Ok(Step::Reduce { op, x, walk });
        }
        if let Some(axis_op) = node.op_as::<AxisOp>() {
            let (x, x_dims) = self.input(node, 0)?;
            let x_strides = contiguous_strides(&x_dims);
            // Add, Rm and Reshape keep the row-major order: a plain copy. Move permutes.
            let read_strides: Vec<isize> = match axis_op {
                AxisOp::Move(from, to) => {
                    let mut permutation: Vec<usize> = (0..x_dims.len()).collect();
                    if *from >= permutation.len() || *to >= permutation.len() {
                        return Err(self.error("axis out of range"));
                    }
                    let moved = permutation.remove(*from);
                    permutation.insert(*to, moved);
                    permutation.iter().map(|&axis| x_strides[axis]).collect()
                }
                _ => contiguous_strides(out_dims),
            };
            return self.copy_step(x, out_dims, &read_strides, 0);
        }
        if let Some(slice) = node.op_as::<Slice>() {
            let (x, x_dims) = self.input(node, 0)?;
            let start = slice
                .start
                .as_i64()
                .and_then(|start| usize::try_from(start).ok())
                .ok_or_else(|| self.error("slice start is not a known index"))?;
            let x_strides = contiguous_strides(&x_dims);
            let x_base = start * x_strides.get(slice.axis).copied().unwrap_or(0) as usize;
            return self.copy_step(x, out_dims, &x_strides, x_base);
        }
        if let Some(pad) = node.op_as::<Pad>() {
            let PadMode::Constant(value) = &pad.mode else {
                return Err(self.error("only constant padding is planned"));
            };
            let fill = value
                .cast_to_scalar::<f32>()
                .map_err(|_| self.error("pad value is not a scalar"))?;
            let (x, x_dims) = self.input(node, 0)?;
            let out_strides = contiguous_strides(out_dims);
            if pad.pads.len() != x_dims.len() {
                return Err(self.error("pads do not match the rank"));
            }
            let out_base: isize = pad
                .pads
                .iter()
                .zip(&out_strides)
                .map(|(&(before, _), &stride)| before as isize * stride)
                .sum();
            let x_strides = contiguous_strides(&x_dims);
            let walk = StridedWalk::new(&x_dims, [&out_strides, &x_strides, &x_strides])
                .ok_or_else(|| self.error("rank too high"))?;
            return Ok(Step::Copy {
                fill: Some(fill),
                parts: vec![CopyPart {
                    x,
                    walk,
                    out_base: out_base as usize,
                    x_base: 0,
                }],
            });
        }
        if let Some(concat) = node.op_as::<TypedConcat>() {
            let out_strides = contiguous_strides(out_dims);
            let mut parts = Vec::new();
            let mut at = 0usize;
            for index in 0..node.inputs.len() {
                let (x, x_dims) = self.input(node, index)?;
                let x_strides = contiguous_strides(&x_dims);
                let walk = StridedWalk::new(&x_dims, [&out_strides, &x_strides, &x_strides])
                    .ok_or_else(|| self.error("rank too high"))?;
                parts.push(CopyPart {
                    x,
                    walk,
                    out_base: at * out_strides.get(concat.axis).copied().unwrap_or(0) as usize,
                    x_base: 0,
                });
                at += x_dims.get(concat.axis).copied().unwrap_or(1);
            }
            return Ok(Step::Copy { fill: None, parts });
        }
        if let Some(cast) = node.op_as::<Cast>() {
            // Only a cast that keeps f32 (NNEF archives carry some): a copy.
            let (x, x_dims) = self.input(node, 0)?;
            if cast.to != f32::datum_type() || x_dims != out_dims {
                return Err(self.error(format!("cast to {:?} is not planned", cast.to)));
            }
            let strides = contiguous_strides(out_dims);
            return self.copy_step(x, out_dims, &strides, 0);
        }
        if node.op_is::<MultiBroadcastTo>() {
            let (x, x_dims) = self.input(node, 0)?;
            let strides = broadcast_strides(&x_dims, out_dims)
                .ok_or_else(|| self.error("input does not broadcast to the output"))?;
            return self.copy_step(x, out_dims, &strides, 0);
        }
        Err(self.error("op is not planned"))
    }

    /// A copy of `x`, read from `x_base` through `x_strides`, into a contiguous output of
    /// `out_dims`.
    fn copy_step(
        &self,
        x: Operand,
        out_dims: &[usize],
        x_strides: &[isize],
        x_base: usize,
    ) -> Result<Step, PlanError> {
        let out_strides = contiguous_strides(out_dims);
        let walk = StridedWalk::new(out_dims, [&out_strides, x_strides, x_strides])
            .ok_or_else(|| self.error("rank too high"))?;
        Ok(Step::Copy {
            fill: None,
            parts: vec![CopyPart {
                x,
                walk,
                out_base: 0,
                x_base,
            }],
        })
    }

    fn conv(
        &mut self,
        node: &TypedNode,
        conv: &Conv,
        out_dims: &[usize],
    ) -> Result<Step, PlanError> {
        if conv.q_params.is_some() {
            return Err(self.error("quantised convolution"));
        }
        if conv.kernel_fmt != KernelFormat::OIHW {
            return Err(self.error(format!(
                "kernel format {:?}, expected OIHW",
                conv.kernel_fmt
            )));
        }
        let spec = &conv.pool_spec;
        if spec.kernel_shape.len() != 2 {
            return Err(self.error("only 2-D convolutions are planned"));
        }
        let (x, x_dims) = self.input(node, 0)?;
        let (has_n, c_last) = (spec.data_format.has_n(), spec.data_format.c_is_last());
        let images = if has_n {
            x_dims.first().copied().unwrap_or(0)
        } else {
            1
        };
        let skip = usize::from(has_n);
        if x_dims.len() != skip + 3 || out_dims.len() != skip + 3 {
            return Err(self.error(format!(
                "input {x_dims:?}, output {out_dims:?}: expected [N,] C, H, W or [N,] H, W, C"
            )));
        }
        // Channel-first dimensions (C, H, W) of the input and the output.
        let channels_first = |dims: &[usize]| -> [usize; 3] {
            let d = &dims[skip..];
            if c_last {
                [d[2], d[0], d[1]]
            } else {
                [d[0], d[1], d[2]]
            }
        };
        let (rest, out_rest) = (channels_first(&x_dims), channels_first(out_dims));
        let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let dilation = spec
            .dilations
            .as_ref()
            .map_or([1, 1], |d| [d[0], d.get(1).copied().unwrap_or(1)]);
        let stride = spec
            .strides
            .as_ref()
            .map_or([1, 1], |s| [s[0], s.get(1).copied().unwrap_or(1)]);
        // Before tract's padding arithmetic, which divides by the stride.
        if [kernel, stride, dilation, [rest[1], rest[2]]]
            .iter()
            .any(|pair| pair.contains(&0))
        {
            return Err(self.error(format!(
                "kernel {kernel:?}, stride {stride:?}, dilation {dilation:?}, input {rest:?}: \
                 every size must be at least 1"
            )));
        }
        let padding = spec
            .padding
            .compute(&rest[1..], &kernel, &dilation, &stride);
        let geometry = ConvGeometry {
            in_channels: rest[0],
            in_hw: [rest[1], rest[2]],
            out_channels: out_rest[0],
            out_hw: [out_rest[1], out_rest[2]],
            kernel_hw: kernel,
            stride,
            dilation,
            pad_before: [padding[0].pad_before, padding[1].pad_before],
            group: conv.group,
            images,
        };
        if geometry.group == 0
            || !geometry.in_channels.is_multiple_of(geometry.group)
            || !geometry.out_channels.is_multiple_of(geometry.group)
            || padding[0].convoluted != geometry.out_hw[0]
            || padding[1].convoluted != geometry.out_hw[1]
        {
            return Err(self.error(format!("inconsistent geometry {geometry:?}")));
        }
        let (weights, w_dims) = self.const_input(node, 1)?;
        let expected_weights =
            geometry.out_channels * (geometry.in_channels / geometry.group) * kernel[0] * kernel[1];
        if self.consts[weights].len() != expected_weights {
            return Err(self.error(format!("weights {w_dims:?} do not fit {geometry:?}")));
        }
        let bias = if node.inputs.len() > 2 {
            let (bias, _) = self.const_input(node, 2)?;
            let values = &self.consts[bias];
            if values.len() == geometry.out_channels {
                Some(bias)
            } else if values.len() == 1 {
                let broadcast = vec![values[0]; geometry.out_channels];
                self.consts.push(broadcast);
                Some(self.consts.len() - 1)
            } else {
                return Err(self.error("bias has neither one nor output-channel values"));
            }
        } else {
            None
        };
        // The scratch buffer: one slot for every convolution, holding no value.
        let scratch = match self.scratch_slot {
            Some(slot) => slot,
            None => {
                self.slot_lens.push(0);
                self.slot_lens.len() - 1
            }
        };
        self.scratch_slot = Some(scratch);
        // The padded planes grow with the file's strides and dilations, not only with
        // the values' sizes checked so far.
        let scratch_len = geometry
            .scratch_len()
            .filter(|&len| len as u64 <= MAX_BUFFER_BYTES / 4)
            .ok_or_else(|| {
                self.too_large(format!(
                    "the convolution's padded input planes take more than {} \
                     (kernel {kernel:?}, stride {stride:?}, dilation {dilation:?})",
                    describe_bytes(Some(MAX_BUFFER_BYTES as usize)),
                ))
            })?;
        self.slot_lens[scratch] = self.slot_lens[scratch].max(scratch_len);
        if !c_last {
            return Ok(Step::Conv {
                x,
                weights,
                bias,
                conv: geometry.plan(),
                scratch,
                activation: None,
            });
        }
        // Channels last (tract picks it for some convolutions on some CPUs): transpose the
        // input to channels first, convolve, and transpose back as this node's step.
        let [c, h, w] = rest;
        let [oc, oh, ow] = out_rest;
        let x_cf_dims = [images, c, h, w];
        let x_cf_len = images * c * h * w;
        // Read strides of [N, H, W, C] in the order N, C, H, W.
        let hwc = [(h * w * c) as isize, 1, (w * c) as isize, c as isize];
        let x_cf = self.allocate(x_cf_len);
        let to_channels_first = self.copy_step(x, &x_cf_dims, &hwc, 0)?;
        self.steps.push(PlannedStep {
            step: to_channels_first,
            out_slot: x_cf,
            out_len: x_cf_len,
        });
        let out_cf_len = images * oc * oh * ow;
        let out_cf = self.allocate(out_cf_len);
        self.steps.push(PlannedStep {
            step: Step::Conv {
                x: Operand::Slot {
                    slot: x_cf,
                    len: x_cf_len,
                },
                weights,
                bias,
                conv: geometry.plan(),
                scratch,
                activation: None,
            },
            out_slot: out_cf,
            out_len: out_cf_len,
        });
        self.pending_free.extend([x_cf, out_cf]);
        // The output [N, OH, OW, OC] read from [N, OC, OH, OW].
        let chw = [(oc * oh * ow) as isize, ow as isize, 1, (oh * ow) as isize];
        self.copy_step(
            Operand::Slot {
                slot: out_cf,
                len: out_cf_len,
            },
            &[images, oh, ow, oc],
            &chw,
            0,
        )
    }

    fn einsum(
        &mut self,
        node: &TypedNode,
        einsum: &EinSum,
        out_dims: &[usize],
    ) -> Result<Step, PlanError> {
        if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() {
            return Err(self.error("only f32 einsums are planned"));
        }
        if node.inputs.len() != 2 || einsum.axes.input_count() != 2 {
            return Err(self.error("only two-operand einsums are planned"));
        }
        let (a, a_dims) = self.input(node, 0)?;
        let (b, b_dims) = self.input(node, 1)?;
        let strides = [
            contiguous_strides(&a_dims),
            contiguous_strides(&b_dims),
            contiguous_strides(out_dims),
        ];
        let dims = [&a_dims[..], &b_dims[..], out_dims];
        // Axes by role: (size, stride in a, b, c).
        let mut batch = Vec::new();
        let mut rows = Vec::new();
        let mut cols = Vec::new();
        let mut reduction = Vec::new();
        for axis in einsum.axes.iter_all_axes() {
            let positions = [
                axis.inputs[0].as_slice(),
                axis.inputs[1].as_slice(),
                axis.outputs[0].as_slice(),
            ];
            if positions.iter().any(|p| p.len() > 1) {
                return Err(self.error(format!("axis {} repeats in an operand", axis.repr)));
            }
            let mut size = 1;
            let mut stride = [0isize; 3];
            for operand in 0..3 {
                if let Some(&position) = positions[operand].first() {
                    let dim = dims[operand][position];
                    if dim != 1 {
                        if size != 1 && size != dim {
                            return Err(self.error(format!("axis {} broadcasts", axis.repr)));
                        }
                        size = dim;
                        stride[operand] = strides[operand][position];
                    }
                }
            }
            if size == 1 {
                continue;
            }
            let present = positions.map(|p| !p.is_empty());
            // An axis of size > 1 must be present wherever it is read.
            for operand in 0..3 {
                if present[operand] && dims[operand][positions[operand][0]] != size {
                    return Err(self.error(format!("axis {} broadcasts", axis.repr)));
                }
            }
            let entry = (size, stride);
            match present {
                [true, true, true] => batch.push(entry),
                [true, false, true] => rows.push(entry),
                [false, true, true] => cols.push(entry),
                [true, true, false] => reduction.push(entry),
                _ => {
                    return Err(self.error(format!(
                        "axis {} is in one operand only (a sum over it, or an output-only axis)",
                        axis.repr
                    )))
                }
            }
        }
        // Output axes in row-major order so a contiguous run shows up as 0, 1, 2, ...
        let by_output_position = |entries: &mut Vec<(usize, [isize; 3])>| {
            entries.sort_by_key(|(_, stride)| std::cmp::Reverse(stride[2]));
        };
        by_output_position(&mut rows);
        by_output_position(&mut cols);
        by_output_position(&mut batch);
        let contiguous_in = |entries: &[(usize, [isize; 3])], operand: usize| {
            let mut expected = 1isize;
            entries.iter().rev().all(|(size, stride)| {
                let ok = stride[operand] == expected;
                expected *= *size as isize;
                ok
            })
        };
        let contiguous = |entries: &[(usize, [isize; 3])], operand: usize| {
            contiguous_in(entries, operand) && contiguous_in(entries, 2)
        };
        let volume =
            |entries: &[(usize, [isize; 3])]| entries.iter().map(|e| e.0).product::<usize>();
        // No operand runs along the output's contiguous axes (a 1x1 convolution of a
        // channels-last input, say): copy one operand once into a layout that does
        // (a constant when the plan is made, a computed value by a copy step), rather
        // than a product of runs of one.
        let (mut a, mut b) = (a, b);
        let b_has_run = contiguous(&cols, 1) && volume(&cols) > 1;
        let a_has_run = contiguous(&rows, 0) && volume(&rows) > 1;
        if !b_has_run && !a_has_run {
            if volume(&cols) > 1 && contiguous_in(&cols, 2) {
                b = self.relayout(b, 1, [&mut batch, &mut reduction, &mut cols])?;
            } else if volume(&rows) > 1 && contiguous_in(&rows, 2) {
                a = self.relayout(a, 0, [&mut batch, &mut reduction, &mut rows])?;
            }
        }
        // The kernel's `b` carries the contiguous run: use `cols` as is, or swap the
        // operands, or (no contiguous run) fold the columns into the batch with n = 1.
        let (a, b, rows, cols, swap) = if contiguous(&cols, 1) && volume(&cols) > 1 {
            (a, b, rows, cols, false)
        } else if contiguous(&rows, 0) && volume(&rows) > 1 {
            (b, a, cols, rows, true)
        } else {
            let mut folded = batch.clone();
            folded.extend(cols);
            batch = folded;
            (a, b, rows, Vec::new(), false)
        };
        for entries in [&batch, &rows, &reduction] {
            // Offset tables are as long as the product of their axes' sizes: bounded by
            // an operand's values, which may still be many.
            let len = entries.iter().try_fold(1usize, |n, e| n.checked_mul(e.0));
            if len.is_none_or(|n| n as u64 > MAX_BUFFER_BYTES / 24) {
                return Err(self.too_large(format!(
                    "the product's offset tables take more than {}",
                    describe_bytes(Some(MAX_BUFFER_BYTES as usize))
                )));
            }
        }
        let (ia, ib) = if swap { (1, 0) } else { (0, 1) };
        let batch_table: Vec<[usize; 3]> = offset_table(&batch)
            .into_iter()
            .map(|o| [o[ia], o[ib], o[2]])
            .collect();
        let row_table: Vec<[usize; 2]> = offset_table(&rows)
            .into_iter()
            .map(|o| [o[ia], o[2]])
            .collect();
        let reduction_table: Vec<[usize; 2]> = offset_table(&reduction)
            .into_iter()
            .map(|o| [o[ia], o[ib]])
            .collect();
        Ok(Step::Matmul {
            a,
            b,
            plan: MatmulPlan {
                batch: batch_table,
                rows: row_table,
                reduction: reduction_table,
                n: volume(&cols),
            },
            bias: None,
            activation: None,
        })
    }
}

impl Planner<'_> {
    /// `operand` (operand `which` of an einsum) copied into row-major order over the axes
    /// of `groups` in turn (each axis: its size and its strides in the two operands and
    /// the output), whose strides for `which` are updated to the copy's.
    fn relayout(
        &mut self,
        operand: Operand,
        which: usize,
        groups: [&mut Vec<(usize, [isize; 3])>; 3],
    ) -> Result<Operand, PlanError> {
        let mut axes: Vec<&mut (usize, [isize; 3])> = groups
            .into_iter()
            .flat_map(|group| group.iter_mut())
            .collect();
        let dims: Vec<usize> = axes.iter().map(|axis| axis.0).collect();
        let old_strides: Vec<isize> = axes.iter().map(|axis| axis.1[which]).collect();
        let new_strides = contiguous_strides(&dims);
        let walk = StridedWalk::new(&dims, [&new_strides, &old_strides, &old_strides])
            .ok_or_else(|| self.error("rank too high"))?;
        let len: usize = dims.iter().product();
        let copied = match operand {
            Operand::Const(constant) => {
                let mut values = zeroed(len)
                    .ok_or_else(|| self.too_large("no memory for a copy of the constant"))?;
                kernels::copy(&walk, &mut values, &self.consts[constant], 0, 0);
                Operand::Const(self.push_const(values))
            }
            Operand::Input | Operand::Slot { .. } => {
                let slot = self.allocate(len);
                self.steps.push(PlannedStep {
                    step: Step::Copy {
                        fill: None,
                        parts: vec![CopyPart {
                            x: operand,
                            walk,
                            out_base: 0,
                            x_base: 0,
                        }],
                    },
                    out_slot: slot,
                    out_len: len,
                });
                self.pending_free.push(slot);
                Operand::Slot { slot, len }
            }
        };
        for (axis, stride) in axes.iter_mut().zip(new_strides) {
            axis.1[which] = stride;
        }
        Ok(copied)
    }
}

/// Offsets (into a, b, c) of every multi-index over `entries` (size, strides).
fn offset_table(entries: &[(usize, [isize; 3])]) -> Vec<[usize; 3]> {
    let mut table = vec![[0usize; 3]];
    for &(size, stride) in entries {
        let mut next = Vec::with_capacity(table.len() * size);
        for base in &table {
            for i in 0..size as isize {
                next.push([0, 1, 2].map(|o| (base[o] as isize + i * stride[o]) as usize));
            }
        }
        table = next;
    }
    table
}

/// Whether this CPU runs [`PlannedGraph::run`]'s AVX2 and FMA build.
#[cfg(target_arch = "x86_64")]
fn has_avx2_and_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// Runs `model` on both executors with the input `0, 1, 2, ...` scaled to [0, 1) and
    /// returns (planned, tract) outputs.
    fn both(model: TypedModel) -> (Vec<f32>, Vec<f32>) {
        let plan = PlannedGraph::plan(&model).expect("plans");
        let input: Vec<f32> = (0..plan.input_len())
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let mut buffers = plan.new_buffers().expect("buffers");
        plan.run(&mut buffers, &input, &mut Team::alone());
        let Some((OutputView::F32(planned), _)) = plan.output(&buffers, &input, 0) else {
            panic!("f32 output");
        };
        let planned = planned.to_vec();
        let shape = model
            .input_fact(0)
            .expect("input")
            .shape
            .as_concrete()
            .expect("known")
            .to_vec();
        let tract = model.into_runnable().expect("tract plan");
        let tensor = Tensor::from_shape(&shape, &input).expect("tensor");
        let outputs = tract.run(tvec![tensor.into()]).expect("tract runs");
        let view = outputs[0].try_as_plain_ram().expect("plain");
        (planned, view.as_slice::<f32>().expect("f32").to_vec())
    }

    #[test]
    fn layout_ops_match_tract() {
        // Pad, Move, Slice, Concat, Reduce<Max>, MultiBroadcastTo, a batched einsum over
        // two computed operands, Sub with broadcasting, an f32 Cast, Tanh: none of them is
        // in the test networks.
        let mut model = TypedModel::default();
        let x = [model.add_source("x", f32::fact([1, 3, 4, 5])).unwrap()];
        let pad = Pad {
            pads: vec![(0, 0), (1, 0), (0, 2), (1, 1)],
            mode: PadMode::Constant(Arc::new(tensor0(0.5f32))),
        };
        let padded = model.wire_node("pad", pad, &x).unwrap(); // [1, 4, 6, 7]
        let moved = model
            .wire_node("move", AxisOp::Move(1, 3), &padded)
            .unwrap(); // [1, 6, 7, 4]
        let sliced = model
            .wire_node("slice", Slice::new(2, 1, 5), &moved)
            .unwrap(); // [1, 6, 4, 4]
        let both_halves = [sliced[0], sliced[0]];
        let concat = model
            .wire_node("concat", TypedConcat { axis: 1 }, &both_halves)
            .unwrap(); // [1, 12, 4, 4]
        let max = model
            .wire_node("max", Reduce::new(tvec![3], Reducer::Max), &concat)
            .unwrap(); // [1, 12, 4, 1]
        let broadcast = model
            .wire_node(
                "broadcast",
                MultiBroadcastTo {
                    shape: tvec![2usize, 12, 4, 3].into(),
                },
                &max,
            )
            .unwrap(); // [2, 12, 4, 3]
        let rm = model.wire_node("rm", AxisOp::Rm(0), &concat).unwrap(); // [12, 4, 4]
        let matmul = model
            .wire_node(
                "einsum",
                EinSum::new("bmk,bkn->bmn".parse().unwrap(), f32::datum_type()),
                &[rm[0], rm[0]],
            )
            .unwrap(); // [12, 4, 4]
        let added = model
            .wire_node("add_axis", AxisOp::Add(0), &matmul)
            .unwrap(); // [1, 12, 4, 4]
        let sliced_again = model
            .wire_node("slice3", Slice::new(3, 0, 3), &added)
            .unwrap(); // [1, 12, 4, 3]
        let diff = model
            .wire_node("sub", math::sub(), &[broadcast[0], sliced_again[0]])
            .unwrap(); // [2, 12, 4, 3]
        let cast = model
            .wire_node(
                "cast",
                Cast {
                    to: f32::datum_type(),
                },
                &diff,
            )
            .unwrap();
        let out = model.wire_node("tanh", math::tanh(), &cast).unwrap();
        model.select_output_outlets(&out).unwrap();
        let (planned, tract) = both(model);
        assert_eq!(planned.len(), 2 * 12 * 4 * 3);
        let worst = planned
            .iter()
            .zip(&tract)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "max |planned - tract| = {worst:e}");
        // Not a saturated or constant output that would hide a wrong layout.
        let distinct = planned.iter().filter(|v| v.abs() < 0.99).count();
        assert!(distinct > planned.len() / 4, "{planned:?}");
        assert!(planned.windows(2).any(|w| w[0] != w[1]));
    }

    /// A convolution node with small integer-valued weights.
    fn wire_conv(
        model: &mut TypedModel,
        x: OutletId,
        data_format: tract_onnx::tract_core::ops::nn::DataFormat,
        channels: (usize, usize),
        group: usize,
        padding: tract_onnx::tract_core::ops::cnn::PaddingSpec,
    ) -> OutletId {
        use tract_onnx::tract_core::ops::cnn::PoolSpec;
        let (cin, cout) = channels;
        let weights: Vec<f32> = (0..cout * (cin / group) * 9)
            // Not small integers: products that round, so that a fused multiply-add and a
            // multiply then add give different bits (which the split tests must see).
            .map(|i| ((i * 7) % 5) as f32 * 0.371 - 0.7)
            .collect();
        let weights = tract_ndarray::Array4::from_shape_vec((cout, cin / group, 3, 3), weights)
            .expect("shape")
            .into_tensor();
        let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.25).collect();
        let w = model.add_const("w", weights).unwrap();
        let b = model.add_const("b", tensor1(&bias)).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format,
                kernel_shape: tvec![3, 3],
                padding,
                dilations: None,
                strides: Some(tvec![2, 2]),
                input_channels: cin,
                output_channels: cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        };
        model.wire_node("conv", conv, &[x, w, b]).unwrap()[0]
    }

    #[test]
    fn convolutions_channels_last_and_same_padding_match_tract() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec;
        use tract_onnx::tract_core::ops::nn::DataFormat;
        let cases = [
            (
                DataFormat::NHWC,
                [1, 9, 11, 4],
                2,
                PaddingSpec::Explicit(tvec![1, 0], tvec![1, 2]),
            ),
            (DataFormat::HWC, [9, 11, 4, 0], 2, PaddingSpec::SameUpper),
            (DataFormat::NCHW, [1, 4, 9, 11], 2, PaddingSpec::SameLower),
            (DataFormat::CHW, [4, 9, 11, 0], 1, PaddingSpec::Valid),
        ];
        for (format, dims, group, padding) in cases {
            let dims: Vec<usize> = dims.iter().copied().filter(|&d| d > 0).collect();
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(&dims)).unwrap();
            let y = wire_conv(&mut model, x, format, (4, 6), group, padding.clone());
            model.select_output_outlets(&[y]).unwrap();
            let (planned, tract) = both(model);
            assert_eq!(planned.len(), tract.len());
            let worst = planned
                .iter()
                .zip(&tract)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{format:?} {padding:?}: max |planned - tract| = {worst:e}"
            );
        }
    }

    /// The largest difference between the two executors' outputs.
    fn worst_difference(planned: &[f32], tract: &[f32]) -> f32 {
        assert_eq!(planned.len(), tract.len());
        planned
            .iter()
            .zip(tract)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    }

    /// The steps `model` plans into, once its output is checked against tract's.
    fn steps_matching_tract(model: TypedModel) -> usize {
        let steps = PlannedGraph::plan(&model).expect("plans").steps.len();
        let (planned, tract) = both(model);
        assert!(worst_difference(&planned, &tract) < 1e-5);
        steps
    }

    /// The einsum `expression` of constant weights of `w_dims` and `x`, in the order the
    /// expression names them (the weights are the operand with two axes).
    fn wire_einsum(
        model: &mut TypedModel,
        expression: &str,
        w_dims: [usize; 2],
        x: OutletId,
    ) -> OutletId {
        let w: Vec<f32> = (0..w_dims[0] * w_dims[1])
            .map(|i| ((i * 5) % 7) as f32 - 3.0)
            .collect();
        let w = model
            .add_const("w", Tensor::from_shape(&w_dims, &w).unwrap())
            .unwrap();
        let weights_first = expression.split(',').next().is_some_and(|a| a.len() == 2);
        let inputs = if weights_first { [w, x] } else { [x, w] };
        let einsum = EinSum::new(expression.parse().unwrap(), f32::datum_type());
        model.wire_node("einsum", einsum, &inputs).unwrap()[0]
    }

    /// `x op constant`, the constant of `dims` with distinct values.
    fn wire_with_constant(
        model: &mut TypedModel,
        name: &str,
        op: Box<dyn tract_onnx::tract_core::ops::binary::BinMiniOp>,
        x: OutletId,
        dims: &[usize],
    ) -> OutletId {
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| 0.75 - 0.125 * i as f32)
            .collect();
        let constant = model
            .add_const(
                format!("{name}_constant"),
                Tensor::from_shape(dims, &values).unwrap(),
            )
            .unwrap();
        model
            .wire_node(name, TypedBinOp(op, None), &[x, constant])
            .unwrap()[0]
    }

    #[test]
    fn a_batch_norm_and_an_activation_fold_into_the_convolution_or_matmul_before_them() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec;
        use tract_onnx::tract_core::ops::nn::{sigmoid, DataFormat};
        // conv -> * constant -> + constant -> sigmoid, channels first (one step) and
        // channels last as tract lays some out on aarch64 (its transposes stay, the rest
        // folds into the convolution between them).
        for (format, dims, per_channel, steps) in [
            (DataFormat::NCHW, [1, 4, 9, 11], [1, 6, 1, 1], 1),
            (DataFormat::NHWC, [1, 9, 11, 4], [1, 1, 1, 6], 3),
        ] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(dims)).unwrap();
            let y = wire_conv(&mut model, x, format, (4, 6), 2, PaddingSpec::SameUpper);
            let y = wire_with_constant(&mut model, "scale", Box::new(math::Mul), y, &per_channel);
            let y = wire_with_constant(&mut model, "shift", Box::new(math::Add), y, &per_channel);
            let y = model.wire_node("act", sigmoid(), &[y]).unwrap();
            model.select_output_outlets(&y).unwrap();
            let plan = PlannedGraph::plan(&model).expect("plans");
            assert_eq!(plan.steps.len(), steps, "{format:?}: {:?}", plan.steps);
            let (planned, tract) = both(model);
            assert!(worst_difference(&planned, &tract) < 1e-5, "{format:?}");
        }

        // A 1x1 convolution as tract writes it, an einsum with constant weights: the
        // same, the shift as a bias per output row.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([4, 30])).unwrap();
        let y = wire_einsum(&mut model, "mk,kn->mn", [6, 4], x);
        let y = wire_with_constant(&mut model, "scale", Box::new(math::Mul), y, &[6, 1]);
        let y = wire_with_constant(&mut model, "shift", Box::new(math::Add), y, &[6, 1]);
        let y = model.wire_node("act", math::tanh(), &[y]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = PlannedGraph::plan(&model).expect("plans");
        assert_eq!(plan.steps.len(), 1, "{:?}", plan.steps);
        // The weights before scaling are no longer kept.
        assert!(
            plan.consts.iter().any(|c| c.is_empty()),
            "{:?}",
            plan.consts
        );
        let (planned, tract) = both(model);
        assert!(worst_difference(&planned, &tract) < 1e-5);
    }

    #[test]
    fn an_einsum_with_no_contiguous_operand_is_laid_out_once() {
        // Channels last, as tract writes 1x1 convolutions next to channels-last ones: the
        // weights are copied when the plan is made so that each pixel's output channels
        // are a run, and a batch norm on those channels folds in per column. Channels last
        // in, channels first out: the input is transposed by a copy step.
        for (expression, per_channel, steps) in [
            ("hwk,ok->hwo", [1, 1, 3], &["matmul"][..]),
            ("hwk,ok->ohw", [3, 1, 1], &["copy", "matmul"][..]),
        ] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([6, 5, 4])).unwrap();
            let y = wire_einsum(&mut model, expression, [3, 4], x);
            let y = wire_with_constant(&mut model, "scale", Box::new(math::Mul), y, &per_channel);
            let y = wire_with_constant(&mut model, "shift", Box::new(math::Add), y, &per_channel);
            model.select_output_outlets(&[y]).unwrap();
            let plan = PlannedGraph::plan(&model).expect("plans");
            assert_eq!(plan.step_names(), steps, "{expression}");
            let (planned, tract) = both(model);
            assert!(worst_difference(&planned, &tract) < 1e-5, "{expression}");
        }
    }

    #[test]
    fn values_read_twice_or_constants_varying_along_a_row_are_not_folded() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec;
        use tract_onnx::tract_core::ops::nn::{sigmoid, DataFormat};
        // A model with a 4 -> 6 channel convolution of its input.
        let with_conv = || {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([1, 4, 9, 11])).unwrap();
            let format = DataFormat::NCHW;
            let y = wire_conv(&mut model, x, format, (4, 6), 1, PaddingSpec::Valid);
            (model, y)
        };
        // (a) A constant that varies along the output row: a step of its own.
        let (mut model, y) = with_conv();
        let y = wire_with_constant(&mut model, "scale", Box::new(math::Mul), y, &[1, 1, 1, 5]);
        model.select_output_outlets(&[y]).unwrap();
        assert_eq!(steps_matching_tract(model), 2);

        // (b) The convolution's value read by two nodes: neither takes it over.
        let (mut model, y) = with_conv();
        let activated = model.wire_node("act", sigmoid(), &[y]).unwrap()[0];
        let sum = model
            .wire_node("sum", math::add(), &[activated, y])
            .unwrap();
        model.select_output_outlets(&sum).unwrap();
        assert_eq!(steps_matching_tract(model), 3);

        // (c) The convolution's value is also a model output: it stays as computed.
        let (mut model, y) = with_conv();
        let activated = model.wire_node("act", sigmoid(), &[y]).unwrap()[0];
        model.select_output_outlets(&[y, activated]).unwrap();
        let plan = PlannedGraph::plan(&model).expect("plans");
        assert_eq!(plan.steps.len(), 2);

        // (d) A scale of 0 for a channel: folded, an infinite sum would give 0 where the
        // graph gives NaN.
        let (mut model, y) = with_conv();
        let scale = [1.0f32, 0.0, 2.0, 0.5, -1.0, 3.0];
        let scale = model
            .add_const(
                "scale_constant",
                Tensor::from_shape(&[1, 6, 1, 1], &scale).unwrap(),
            )
            .unwrap();
        let y = model
            .wire_node("scale", TypedBinOp(Box::new(math::Mul), None), &[y, scale])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(steps_matching_tract(model), 2);
    }

    /// The docs promise the AVX2 build of the kernels the baseline's bits (same operations,
    /// same order, no FMA contraction): checked on refiner-tiny, every step kind of it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_build_gives_the_baseline_bits() {
        if !has_avx2_and_fma() {
            eprintln!("SKIPPED: no AVX2 and FMA on this CPU");
            return;
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/networks/refiner-tiny.onnx");
        let network = crate::Network::open(&path).expect("refiner-tiny");
        let item =
            super::super::load_item_shape(&network.contract(), &crate::ModelOptions::default());
        let model = super::super::decluttered_from_onnx(&network, item).expect("declutters");
        let plan = PlannedGraph::plan(&model).expect("plans");
        let input: Vec<f32> = (0..plan.input_len())
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let mut dispatched = plan.new_buffers().expect("buffers");
        plan.run(&mut dispatched, &input, &mut Team::alone());
        let mut baseline = plan.new_buffers().expect("buffers");
        plan.run_steps(&mut baseline, &input, &mut Team::alone(), &mut []);
        let bits = |buffers: &[Vec<f32>]| -> Vec<u32> {
            let Some((OutputView::F32(values), _)) = plan.output(buffers, &input, 0) else {
                panic!("f32 output");
            };
            values.iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&dispatched), bits(&baseline));
    }

    /// Runs `plan` with every step that can be split split, on 2 to 4 threads, with and
    /// without the register tiles, and checks the outputs' bits against one thread's.
    /// Returns the kinds of split it ran.
    fn assert_split_bits_match(plan: PlannedGraph, name: &str) -> Vec<SplitKind> {
        let plan = plan.splitting_every_step();
        let input: Vec<f32> = (0..plan.input_len())
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.25)
            .collect();
        let outputs = |buffers: &[Vec<f32>]| -> Vec<Vec<u32>> {
            (0..plan.output_count())
                .filter_map(|index| match plan.output(buffers, &input, index) {
                    Some((OutputView::F32(values), _)) => {
                        Some(values.iter().map(|v| v.to_bits()).collect())
                    }
                    _ => None,
                })
                .collect()
        };
        for tiles in [true, false] {
            super::super::tile::OFF_IN_TESTS.with(|off| off.set(!tiles));
            let mut alone = plan.new_buffers().expect("buffers");
            plan.run(&mut alone, &input, &mut Team::alone());
            for threads in 2..=4 {
                let workers: Vec<_> = (1..threads)
                    .map(|i| super::super::workers::Worker::spawn(format!("test-{i}")))
                    .collect::<Result<_, _>>()
                    .expect("spawns");
                let mut scratches = vec![vec![0.0; plan.scratch_len()]; workers.len()];
                let mut team = Team {
                    workers: &workers,
                    scratches: &mut scratches,
                };
                let mut split = plan.new_buffers().expect("buffers");
                plan.run(&mut split, &input, &mut team);
                assert_eq!(
                    outputs(&split),
                    outputs(&alone),
                    "{name}, {threads} threads, tiles {tiles}"
                );
            }
        }
        super::super::tile::OFF_IN_TESTS.with(|off| off.set(false));
        plan.splits
            .iter()
            .flatten()
            .map(|split| split.kind)
            .collect()
    }

    /// A step split across threads writes the same bits as on one thread: every kind of
    /// split (a matmul's rows or columns, a convolution's output rows, a grouped or
    /// depthwise convolution's groups), on the test networks, products and convolutions.
    #[test]
    fn split_steps_give_the_bits_of_one_thread() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec;
        use tract_onnx::tract_core::ops::nn::DataFormat;
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/networks");
        let mut kinds = Vec::new();
        for name in ["refiner-tiny", "detector-tiny", "coarse-tiny"] {
            let network = crate::Network::open(&data.join(format!("{name}.onnx"))).expect(name);
            let item =
                super::super::load_item_shape(&network.contract(), &crate::ModelOptions::default());
            let model = super::super::decluttered_from_onnx(&network, item).expect("declutters");
            let plan = PlannedGraph::plan(&model).expect("plans");
            kinds.extend(assert_split_bits_match(plan, name));
        }
        // A product with few columns (split by rows), and one with many, not a whole number
        // of tiles (split by columns).
        for (n, expected) in [(40, SplitKind::MatmulRows), (301, SplitKind::MatmulColumns)] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([8, n])).unwrap();
            let y = wire_einsum(&mut model, "mk,kn->mn", [50, 8], x);
            model.select_output_outlets(&[y]).unwrap();
            let plan = PlannedGraph::plan(&model).expect("plans");
            let ran = assert_split_bits_match(plan, &format!("matmul 50x8x{n}"));
            assert_eq!(ran, [expected]);
            kinds.extend(ran);
        }
        // Depthwise (8 groups of one channel), 2 groups of 4 -> 3 channels, and a single
        // channel (which the depthwise kernel sums: split by groups, so not at all).
        for (channels, group) in [((8, 8), 8), ((8, 6), 2), ((1, 1), 1)] {
            let mut model = TypedModel::default();
            let x = model
                .add_source("x", f32::fact([1, channels.0, 19, 37]))
                .unwrap();
            let padding = PaddingSpec::SameUpper;
            let y = wire_conv(&mut model, x, DataFormat::NCHW, channels, group, padding);
            model.select_output_outlets(&[y]).unwrap();
            let plan = PlannedGraph::plan(&model).expect("plans");
            kinds.extend(assert_split_bits_match(plan, &format!("{group} groups")));
        }
        for kind in [
            SplitKind::MatmulRows,
            SplitKind::MatmulColumns,
            SplitKind::Conv(ConvSplit::OutputRows),
            SplitKind::Conv(ConvSplit::Groups),
        ] {
            assert!(kinds.contains(&kind), "no {kind:?} split was run");
        }
    }

    #[test]
    fn split_bounds_are_even_aligned_and_never_empty() {
        let split = |units, macs| Split {
            kind: SplitKind::MatmulRows,
            units,
            align: TILE_ROWS,
            strict: false,
            macs,
            min_part_macs: MIN_PART_MACS,
        };
        let big = 64 * MIN_PART_MACS;
        // Few rows: an even split, not whole tiles.
        assert_eq!(&split(32, big).bounds(4)[..], &[0, 8, 16, 24, 32]);
        // Many rows: whole tiles of 6 but the last part's.
        assert_eq!(&split(1152, big).bounds(4)[..], &[0, 288, 576, 864, 1152]);
        assert_eq!(&split(100, big).bounds(2)[..], &[0, 48, 100]);
        // Fewer units than threads, and steps too small for more parts.
        assert_eq!(&split(3, big).bounds(8)[..], &[0, 1, 2, 3]);
        assert_eq!(
            &split(600, 3 * MIN_PART_MACS).bounds(8)[..],
            &[0, 198, 396, 600]
        );
        assert_eq!(&split(600, big).bounds(1)[..], &[0, 600]);
        // Columns: whole tiles of 16 in every part but the last, however few.
        let columns = Split {
            kind: SplitKind::MatmulColumns,
            align: TILE_COLUMNS,
            strict: true,
            ..split(300, big)
        };
        assert_eq!(&columns.bounds(2)[..], &[0, 144, 300]);
        assert_eq!(&columns.bounds(4)[..], &[0, 64, 144, 224, 300]);
    }

    #[test]
    fn an_op_outside_the_set_is_an_error_naming_the_node() {
        let mut model = TypedModel::default();
        let x = [model.add_source("x", f32::fact([1, 4])).unwrap()];
        let y = model.wire_node("the_erf", math::erf(), &x).unwrap();
        model.select_output_outlets(&y).unwrap();
        let error = PlannedGraph::plan(&model).expect_err("erf is not planned");
        assert_eq!(error.node, "the_erf");
        assert!(error.to_string().contains("Erf"), "{error}");
    }

    #[test]
    fn values_over_the_memory_limit_are_refused_before_anything_is_sized() {
        // A pad to 2^20 x 2^20 values (4 TiB), and one whose size overflows 64 bits:
        // refused naming the node, as too large (not as an op tract's plan could run).
        for (pad, size) in [(1usize << 20, "4.0 TiB"), (1 << 40, "more than 16 EiB")] {
            let mut model = TypedModel::default();
            let x = [model.add_source("x", f32::fact([1, 1, 1, 1])).unwrap()];
            let pad = Pad {
                pads: vec![(0, 0), (0, 0), (pad, 0), (pad, 0)],
                mode: PadMode::Constant(Arc::new(tensor0(0f32))),
            };
            let padded = model.wire_node("the_pad", pad, &x).unwrap();
            model.select_output_outlets(&padded).unwrap();
            let error = PlannedGraph::plan(&model).expect_err("too large");
            assert!(error.too_large, "{error}");
            assert_eq!(error.node, "the_pad");
            assert!(error.to_string().contains(size), "{error}");
        }
    }

    #[test]
    fn buffers_over_the_memory_limit_in_all_are_refused() {
        // Three live values of 2 GiB each (two functions of the input and their sum):
        // each fits, together they do not.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1 << 29])).unwrap();
        let a = model
            .wire_node("a", tract_onnx::tract_core::ops::nn::sigmoid(), &[x])
            .unwrap()[0];
        let b = model.wire_node("b", math::tanh(), &[x]).unwrap()[0];
        let sum = model.wire_node("sum", math::add(), &[a, b]).unwrap();
        model.select_output_outlets(&sum).unwrap();
        let error = PlannedGraph::plan(&model).expect_err("6 GiB of buffers");
        assert!(error.too_large, "{error}");
        assert_eq!(error.node, "(graph)");
        assert!(error.to_string().contains("6.0 GiB in all"), "{error}");
    }

    #[test]
    fn a_convolution_whose_padded_planes_are_too_large_is_refused() {
        // A 2 x 1 kernel dilated by 2^40 rows, strided as much: a 4 x 4 input gives a
        // 1 x 4 output, but the padded planes its taps read would be 2^42 values.
        use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        use tract_onnx::tract_core::ops::nn::DataFormat;
        let far = 1usize << 40;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 1, 4, 4])).unwrap();
        let weights = tract_ndarray::Array4::from_shape_vec((1, 1, 2, 1), vec![1f32, 1.0])
            .expect("shape")
            .into_tensor();
        let w = model.add_const("w", weights).unwrap();
        let b = model.add_const("b", tensor1(&[0f32])).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![2, 1],
                padding: PaddingSpec::Explicit(tvec![far, 0], tvec![0, 0]),
                dilations: Some(tvec![far, 1]),
                strides: Some(tvec![far, 1]),
                input_channels: 1,
                output_channels: 1,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("the_conv", conv, &[x, w, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let error = PlannedGraph::plan(&model).expect_err("too large");
        assert!(error.too_large, "{error}");
        assert_eq!(error.node, "the_conv");
        assert!(error.to_string().contains("padded input planes"), "{error}");
    }

    #[test]
    fn dead_values_give_their_buffers_to_later_ones() {
        // A chain of ten element-wise ops needs two buffers, not ten.
        let mut model = TypedModel::default();
        let mut x = model.add_source("x", f32::fact([64])).unwrap();
        for i in 0..10 {
            x = model
                .wire_node(
                    format!("sigmoid{i}"),
                    tract_onnx::tract_core::ops::nn::sigmoid(),
                    &[x],
                )
                .unwrap()[0];
        }
        model.select_output_outlets(&[x]).unwrap();
        let plan = PlannedGraph::plan(&model).expect("plans");
        assert_eq!(plan.slot_lens, vec![64, 64]);
    }
}

//! Exact nearest-neighbour search in a static 3D point set, seeded with an upper bound.
//!
//! ADD-S asks, for every model point mapped by the relative pose, for its nearest model
//! point. The point's own correspondence is always a candidate, and for any useful
//! estimate a close one, so each query starts with that distance as its bound and the
//! tree only has to look at the few leaves that could beat it. General-purpose k-d tree
//! crates (kiddo 5's `nearest_one`) start from infinity; this is about 5x faster on the
//! ycbv-mini models (see `benches/benches/cpu_metrics.rs`).

/// Points per leaf: small enough that the bound prunes well, large enough that the leaf
/// loop dominates the descent.
const LEAF_SIZE: usize = 32;

/// A node with the tight bounding box of its points: on a mesh surface, partition cells
/// reach far into empty space, and a tight box prunes far better than the split planes.
#[derive(Debug, Clone, Copy)]
struct Node {
    low: [f64; 3],
    high: [f64; 3],
    kind: NodeKind,
}

#[derive(Debug, Clone, Copy)]
enum NodeKind {
    Leaf { start: u32, end: u32 },
    Split { left: u32, right: u32 },
}

impl Node {
    /// Squared distance from `query` to the box (0 inside).
    #[inline]
    fn distance_sq(&self, query: &[f64; 3]) -> f64 {
        let mut d = 0.0;
        for ((low, high), q) in self.low.iter().zip(&self.high).zip(query) {
            let gap = (low - q).max(q - high).max(0.0);
            d += gap * gap;
        }
        d
    }
}

/// A balanced k-d tree over a fixed point set (median splits on the widest axis).
#[derive(Debug, Clone)]
pub struct KdTree {
    /// The points, reordered so that each leaf is a contiguous range.
    points: Vec<[f64; 3]>,
    /// The same points, one array per axis, for the vectorised leaf loop.
    xs: Vec<f64>,
    ys: Vec<f64>,
    zs: Vec<f64>,
    nodes: Vec<Node>,
}

impl KdTree {
    /// Builds the tree. An empty point set gives a tree whose queries return the bound.
    pub fn new(points: &[[f64; 3]]) -> Self {
        let mut points = points.to_vec();
        let mut nodes = Vec::with_capacity(2 * points.len() / LEAF_SIZE + 1);
        if !points.is_empty() {
            build(&mut points, 0, &mut nodes);
        }
        let xs = points.iter().map(|p| p[0]).collect();
        let ys = points.iter().map(|p| p[1]).collect();
        let zs = points.iter().map(|p| p[2]).collect();
        Self {
            points,
            xs,
            ys,
            zs,
            nodes,
        }
    }

    /// The points in tree order: neighbours in this order are close in space, so
    /// querying in this order lets each search start from the previous answer.
    pub fn points(&self) -> &[[f64; 3]] {
        &self.points
    }

    /// Squared distance from `query` to its nearest point, or `bound_sq` if no point is
    /// closer than that. Pass a distance to a real point (or infinity) as `bound_sq`, and
    /// the result is exact.
    #[inline]
    pub fn nearest_distance_sq(&self, query: &[f64; 3], bound_sq: f64) -> f64 {
        self.nearest(query, bound_sq).0
    }

    /// The nearest point: its squared distance and its index in [`Self::points`]
    /// (`usize::MAX` when nothing beat `bound_sq`).
    #[inline]
    pub fn nearest(&self, query: &[f64; 3], bound_sq: f64) -> (f64, usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, the only feature the function enables.
                return unsafe { self.nearest_avx2(query, bound_sq) };
            }
        }
        self.nearest_portable(query, bound_sq)
    }

    /// [`Self::nearest_portable`] with the search compiled for AVX2: four `f64` lanes in
    /// the leaf loop instead of SSE2's two. The same operations in the same order (no
    /// FMA), so the same result bit for bit.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn nearest_avx2(&self, query: &[f64; 3], bound_sq: f64) -> (f64, usize) {
        let mut best = (bound_sq, usize::MAX);
        if let Some(root) = self.nodes.first() {
            if root.distance_sq(query) < best.0 {
                // SAFETY: this function's own precondition (AVX2).
                unsafe { self.search_avx2(0, query, &mut best) };
            }
        }
        best
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn search_avx2(&self, node: u32, query: &[f64; 3], best: &mut (f64, usize)) {
        self.visit(node, query, best, |tree, child, query, best| {
            // SAFETY: called only from `search_avx2`, whose precondition is AVX2.
            unsafe { tree.search_avx2(child, query, best) }
        });
    }

    /// The search on any CPU.
    fn nearest_portable(&self, query: &[f64; 3], bound_sq: f64) -> (f64, usize) {
        let mut best = (bound_sq, usize::MAX);
        if let Some(root) = self.nodes.first() {
            if root.distance_sq(query) < best.0 {
                self.search(0, query, &mut best);
            }
        }
        best
    }

    fn search(&self, node: u32, query: &[f64; 3], best: &mut (f64, usize)) {
        self.visit(node, query, best, |tree, child, query, best| {
            tree.search(child, query, best)
        });
    }

    /// One step of the depth-first search: a leaf is scanned, a split recurses (through
    /// `recurse`) into the nearer box first; a box no closer than the best distance so
    /// far is skipped.
    #[inline(always)]
    fn visit(
        &self,
        node: u32,
        query: &[f64; 3],
        best: &mut (f64, usize),
        recurse: impl Fn(&Self, u32, &[f64; 3], &mut (f64, usize)),
    ) {
        match self.nodes[node as usize].kind {
            NodeKind::Leaf { start, end } => {
                let range = start as usize..end as usize;
                let (xs, ys, zs) = (
                    &self.xs[range.clone()],
                    &self.ys[range.clone()],
                    &self.zs[range.clone()],
                );
                // A branch-free minimum first (it vectorises); the index only when the
                // leaf beats the bound, which is rare once the bound is tight.
                let leaf_min = leaf_min_portable(xs, ys, zs, query);
                if leaf_min < best.0 {
                    let distance = |i: usize| {
                        let dx = self.xs[i] - query[0];
                        let dy = self.ys[i] - query[1];
                        let dz = self.zs[i] - query[2];
                        dx * dx + dy * dy + dz * dz
                    };
                    if let Some(i) = range.clone().find(|&i| distance(i) == leaf_min) {
                        *best = (leaf_min, i);
                    }
                }
            }
            NodeKind::Split { left, right } => {
                let left_sq = self.nodes[left as usize].distance_sq(query);
                let right_sq = self.nodes[right as usize].distance_sq(query);
                let ((near, near_sq), (far, far_sq)) = if left_sq <= right_sq {
                    ((left, left_sq), (right, right_sq))
                } else {
                    ((right, right_sq), (left, left_sq))
                };
                if near_sq < best.0 {
                    recurse(self, near, query, best);
                }
                if far_sq < best.0 {
                    recurse(self, far, query, best);
                }
            }
        }
    }
}

/// The smallest squared distance from `query` to the points `(xs[i], ys[i], zs[i])`.
#[inline(always)]
fn leaf_min_portable(xs: &[f64], ys: &[f64], zs: &[f64], query: &[f64; 3]) -> f64 {
    let mut leaf_min = f64::INFINITY;
    for ((x, y), z) in xs.iter().zip(ys).zip(zs) {
        let dx = x - query[0];
        let dy = y - query[1];
        let dz = z - query[2];
        let d = dx * dx + dy * dy + dz * dz;
        leaf_min = if d < leaf_min { d } else { leaf_min };
    }
    leaf_min
}

/// Builds the subtree over `points` (whose first element has index `offset` in the tree's
/// point array) and returns its node index.
fn build(points: &mut [[f64; 3]], offset: usize, nodes: &mut Vec<Node>) -> u32 {
    let index = nodes.len() as u32;
    let (low, high) = bounds(points);
    let mut node = Node {
        low,
        high,
        kind: NodeKind::Leaf {
            start: offset as u32,
            end: (offset + points.len()) as u32,
        },
    };
    nodes.push(node);
    if points.len() <= LEAF_SIZE {
        // Order the leaf itself in k-d order: queries visit points in tree order, and
        // each search starts from the previous point's neighbour, so neighbours in this
        // order should be neighbours in space.
        kd_order(points);
        return index;
    }
    let middle = split_at_median(points, &low, &high);
    let (left_points, right_points) = points.split_at_mut(middle);
    let left = build(left_points, offset, nodes);
    let right = build(right_points, offset + middle, nodes);
    node.kind = NodeKind::Split { left, right };
    nodes[index as usize] = node;
    index
}

/// The axis-aligned bounding box of `points`.
fn bounds(points: &[[f64; 3]]) -> ([f64; 3], [f64; 3]) {
    let mut low = [f64::INFINITY; 3];
    let mut high = [f64::NEG_INFINITY; 3];
    for p in points {
        for axis in 0..3 {
            low[axis] = low[axis].min(p[axis]);
            high[axis] = high[axis].max(p[axis]);
        }
    }
    (low, high)
}

/// Partitions `points` about the median of the widest axis of the box `low..high`;
/// returns the index of the median.
fn split_at_median(points: &mut [[f64; 3]], low: &[f64; 3], high: &[f64; 3]) -> usize {
    let axis = (0..3)
        .max_by(|&a, &b| (high[a] - low[a]).total_cmp(&(high[b] - low[b])))
        .unwrap_or(0);
    let middle = points.len() / 2;
    points.select_nth_unstable_by(middle, |a, b| a[axis].total_cmp(&b[axis]));
    middle
}

/// Sorts points into k-d order (recursive median splits on the widest axis, down to
/// single points).
fn kd_order(points: &mut [[f64; 3]]) {
    if points.len() <= 2 {
        return;
    }
    let (low, high) = bounds(points);
    let middle = split_at_median(points, &low, &high);
    let (left, right) = points.split_at_mut(middle);
    kd_order(left);
    kd_order(right);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(points: &[[f64; 3]], q: &[f64; 3]) -> f64 {
        points
            .iter()
            .map(|p| (0..3).map(|a| (p[a] - q[a]).powi(2)).sum::<f64>())
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn duplicates_and_planes_are_handled() {
        let points = vec![[0.0, 0.0, 0.0]; 40]
            .into_iter()
            .chain((0..40).map(|i| [1.0, i as f64, 0.0]))
            .collect::<Vec<_>>();
        let tree = KdTree::new(&points);
        for q in [[0.0, 0.0, 0.0], [1.0, 7.0, 0.1], [0.5, 20.0, -3.0]] {
            assert_eq!(
                tree.nearest_distance_sq(&q, f64::INFINITY),
                brute_force(&points, &q)
            );
        }
        assert_eq!(KdTree::new(&[]).nearest_distance_sq(&[0.0; 3], 4.0), 4.0);
    }

    proptest! {
        #[test]
        fn matches_brute_force(
            points in proptest::collection::vec(prop::array::uniform3(-1.0f64..1.0), 1..300),
            queries in proptest::collection::vec(prop::array::uniform3(-1.5f64..1.5), 1..20),
            bound_from in 0usize..300,
        ) {
            let tree = KdTree::new(&points);
            for q in &queries {
                let expected = brute_force(&points, q);
                prop_assert_eq!(tree.nearest_distance_sq(q, f64::INFINITY), expected);
                // Seeded with the distance to some real point, the answer is still exact.
                let seed = &points[bound_from % points.len()];
                let bound = (0..3).map(|a| (seed[a] - q[a]).powi(2)).sum::<f64>();
                prop_assert_eq!(tree.nearest_distance_sq(q, bound), expected);
            }
        }
    }
}

//! Exact nearest-neighbour search in a static 3D point set, seeded with an upper bound.
//!
//! ADD-S asks, for every model point mapped by the relative pose, for its nearest model
//! point. The point's own correspondence is always a candidate, and for any useful
//! estimate a close one, so each query starts with that distance as its bound and the
//! tree only has to look at the few leaves that could beat it. General-purpose k-d tree
//! crates (kiddo 5's `nearest_one`) start from infinity; this is about 5x faster on the
//! ycbv-mini models (see `benches/benches/cpu_metrics.rs`). Each point also keeps a short
//! list of its own nearest neighbours: a query that starts from a close point is usually
//! settled by that list alone, with no descent at all ([`KdTree::nearest_from`]).

/// Points per leaf: small enough that the bound prunes well, large enough that the leaf
/// loop dominates the descent.
const LEAF_SIZE: usize = 32;

/// Length of each point's list of nearest other points (see [`KdTree::nearest_from`]).
const NEIGHBOURS: usize = 24;

/// Relative slack on the stopping tests of [`KdTree::nearest_from`]: far above the
/// rounding error of a few distances (about 1e-15 relative), so a point the list skips
/// is farther than the answer by much more than rounding, and the result is the same bit
/// for bit as a search over every point.
const REACH_SLACK: f64 = 1.0 + 1e-9;

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
    /// For each point (tree order), its [`NEIGHBOURS`] nearest other points (indices in
    /// tree order), nearest first.
    neighbours: Vec<u32>,
    /// Lower bounds on the distances of those neighbours (not squared), same layout.
    neighbour_distances: Vec<f32>,
    /// For each point, a lower bound on the distance to every point not in its list
    /// (infinity when the list holds every other point).
    list_radius: Vec<f32>,
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
        let mut tree = Self {
            points,
            xs,
            ys,
            zs,
            nodes,
            neighbours: Vec::new(),
            neighbour_distances: Vec::new(),
            list_radius: Vec::new(),
        };
        tree.build_neighbour_lists();
        tree
    }

    /// Fills the per-point neighbour lists with a k-nearest search per point.
    fn build_neighbour_lists(&mut self) {
        let n = self.points.len();
        let k = NEIGHBOURS.min(n.saturating_sub(1));
        self.neighbours = Vec::with_capacity(n * NEIGHBOURS);
        self.neighbour_distances = Vec::with_capacity(n * NEIGHBOURS);
        self.list_radius = Vec::with_capacity(n);
        // (squared distance, index), sorted ascending; at most k + 1 long (the point
        // itself is found too, and dropped).
        let mut found: Vec<(f64, u32)> = Vec::with_capacity(k + 2);
        for i in 0..n {
            found.clear();
            if !self.nodes.is_empty() {
                self.k_nearest(0, &self.points[i], k + 1, &mut found);
            }
            // Drop the point itself (its duplicates, at distance 0 too, stay in the list).
            if let Some(at) = found.iter().position(|&(_, j)| j as usize == i) {
                found.remove(at);
            }
            found.truncate(k);
            for &(distance_sq, j) in &found {
                self.neighbours.push(j);
                self.neighbour_distances
                    .push(lower_bound_f32(distance_sq.sqrt()));
            }
            // Pad a short list (fewer than NEIGHBOURS other points) so that every list
            // has the same stride; the padding is never read past `list_radius`.
            for _ in found.len()..NEIGHBOURS {
                self.neighbours.push(i as u32);
                self.neighbour_distances.push(f32::INFINITY);
            }
            // Every point outside the list is at least as far as the last one in it; a
            // list of every other point has nothing outside.
            let radius = if k == n - 1 {
                f32::INFINITY
            } else {
                found
                    .last()
                    .map_or(f32::INFINITY, |&(d, _)| lower_bound_f32(d.sqrt()))
            };
            self.list_radius.push(radius);
        }
    }

    /// Collects into `found` (sorted ascending) the `k` nearest points to `query` in the
    /// subtree at `node`.
    fn k_nearest(&self, node: u32, query: &[f64; 3], k: usize, found: &mut Vec<(f64, u32)>) {
        let worst = |found: &Vec<(f64, u32)>| {
            if found.len() < k {
                f64::INFINITY
            } else {
                found.last().map_or(f64::INFINITY, |&(d, _)| d)
            }
        };
        match self.nodes[node as usize].kind {
            NodeKind::Leaf { start, end } => {
                for i in start..end {
                    let d = squared_distance(&self.xs, &self.ys, &self.zs, i as usize, query);
                    if d < worst(found) {
                        let at = found.partition_point(|&(e, _)| e <= d);
                        found.insert(at, (d, i));
                        found.truncate(k);
                    }
                }
            }
            NodeKind::Split { left, right } => {
                let [(near, near_sq), (far, far_sq)] = self.nearer_first(left, right, query);
                if near_sq < worst(found) {
                    self.k_nearest(near, query, k, found);
                }
                if far_sq < worst(found) {
                    self.k_nearest(far, query, k, found);
                }
            }
        }
    }

    /// The two children of a split with their squared box distances, the nearer first.
    #[inline(always)]
    fn nearer_first(&self, left: u32, right: u32, query: &[f64; 3]) -> [(u32, f64); 2] {
        let left_sq = self.nodes[left as usize].distance_sq(query);
        let right_sq = self.nodes[right as usize].distance_sq(query);
        if left_sq <= right_sq {
            [(left, left_sq), (right, right_sq)]
        } else {
            [(right, right_sq), (left, left_sq)]
        }
    }

    /// The nearest point to `query`, as [`Self::nearest`], given `anchor`: a point (index
    /// in [`Self::points`]) at squared distance `anchor_sq` from `query`. Exact.
    ///
    /// Any point closer to `query` than the best distance `b` so far lies within
    /// `|query - anchor| + b` of the anchor (triangle inequality), so when that reach is
    /// inside the anchor's precomputed neighbour list, the list alone decides, nearest
    /// first, stopping at the first neighbour beyond the reach. For a query close to the
    /// surface, as ADD-S's are for any useful estimate, that is a handful of points and
    /// no tree descent; otherwise the tree finishes the search from the best bound found.
    #[inline]
    pub fn nearest_from(&self, query: &[f64; 3], anchor: usize, anchor_sq: f64) -> (f64, usize) {
        let anchor_distance = anchor_sq.sqrt();
        let radius = f64::from(self.list_radius[anchor]);
        let mut best = (anchor_sq, anchor);
        // A reach of at least the anchor distance: the list can only decide when the
        // anchor is nearer than its radius.
        if anchor_distance < radius {
            let start = anchor * NEIGHBOURS;
            let list = &self.neighbours[start..start + NEIGHBOURS];
            let distances = &self.neighbour_distances[start..start + NEIGHBOURS];
            let mut reach = (anchor_distance + anchor_distance) * REACH_SLACK;
            let mut decided = false;
            for (&j, &distance) in list.iter().zip(distances) {
                if f64::from(distance) >= reach {
                    decided = true;
                    break;
                }
                let d = squared_distance(&self.xs, &self.ys, &self.zs, j as usize, query);
                if d < best.0 {
                    best = (d, j as usize);
                    reach = (anchor_distance + d.sqrt()) * REACH_SLACK;
                }
            }
            if decided || radius >= reach {
                return best;
            }
        }
        match self.nearest(query, best.0) {
            (_, usize::MAX) => best,
            found => found,
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
                    let distance =
                        |i: usize| squared_distance(&self.xs, &self.ys, &self.zs, i, query);
                    if let Some(i) = range.clone().find(|&i| distance(i) == leaf_min) {
                        *best = (leaf_min, i);
                    }
                }
            }
            NodeKind::Split { left, right } => {
                let [(near, near_sq), (far, far_sq)] = self.nearer_first(left, right, query);
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

/// Squared distance from `query` to point `i`: the one expression every search uses, so
/// that all of them agree bit for bit.
#[inline(always)]
fn squared_distance(xs: &[f64], ys: &[f64], zs: &[f64], i: usize, query: &[f64; 3]) -> f64 {
    let dx = xs[i] - query[0];
    let dy = ys[i] - query[1];
    let dz = zs[i] - query[2];
    dx * dx + dy * dy + dz * dz
}

/// The largest `f32` no greater than `value` (and a little less: the stored distances
/// are lower bounds that must hold for the exact distance too, not only the rounded one).
fn lower_bound_f32(value: f64) -> f32 {
    if value > f64::from(f32::MAX) {
        // Also an overflowed (infinite) distance between finite points: f32::MAX still
        // bounds it from below, infinity would not.
        return f32::MAX;
    }
    let shrunk = value * (1.0 - 1e-12);
    let rounded = shrunk as f32;
    if f64::from(rounded) > shrunk {
        rounded.next_down()
    } else {
        rounded
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

    /// A lumpy closed surface of `n` points (a deformed sphere, as a mesh's vertices
    /// are), every seventh point duplicated as at a texture seam.
    fn surface(n: usize) -> Vec<[f64; 3]> {
        let mut points: Vec<[f64; 3]> = (0..n)
            .map(|i| {
                let t = i as f64 * 2.399_963_229_728_653;
                let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
                let r = (1.0 - z * z).sqrt();
                let scale = 0.05 + 0.01 * (3.0 * t).sin();
                [scale * r * t.cos(), 0.7 * scale * r * t.sin(), scale * z]
            })
            .collect();
        let seams: Vec<_> = points.iter().step_by(7).copied().collect();
        points.extend(seams);
        points
    }

    #[test]
    fn neighbour_lists_are_the_nearest_points_nearest_first() {
        let points = surface(500);
        let tree = KdTree::new(&points);
        let ordered = tree.points();
        for (i, p) in ordered.iter().enumerate() {
            let list = &tree.neighbours[i * NEIGHBOURS..(i + 1) * NEIGHBOURS];
            let distances = &tree.neighbour_distances[i * NEIGHBOURS..(i + 1) * NEIGHBOURS];
            assert!(list.iter().all(|&j| j as usize != i));
            assert!(distances.windows(2).all(|w| w[0] <= w[1]));
            let mut others: Vec<f64> = (0..ordered.len())
                .filter(|&j| j != i)
                .map(|j| {
                    (0..3)
                        .map(|a| (ordered[j][a] - p[a]).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            others.sort_by(f64::total_cmp);
            for (stored, exact) in distances.iter().zip(&others) {
                assert!(f64::from(*stored) <= *exact && f64::from(*stored) >= exact * 0.999_999);
            }
            assert!(f64::from(tree.list_radius[i]) <= others[NEIGHBOURS - 1]);
        }
    }

    #[test]
    fn stored_distances_are_lower_bounds_even_past_f32() {
        for value in [
            0.0,
            1e-300,
            1e-40,
            0.1,
            1.0,
            3.0e38,
            3.5e38,
            1e300,
            f64::INFINITY,
        ] {
            let bound = lower_bound_f32(value);
            assert!(f64::from(bound) <= value, "{value}: {bound}");
            assert!(bound.is_finite(), "{value}: {bound}");
        }
        assert_eq!(lower_bound_f32(f64::INFINITY), f32::MAX);
        assert!(f64::from(lower_bound_f32(0.1)) > 0.1 * (1.0 - 1e-6));
    }

    #[test]
    fn a_small_set_lists_every_other_point() {
        let points = surface(10);
        let tree = KdTree::new(&points);
        assert!(tree.list_radius.iter().all(|r| r.is_infinite()));
        let q = [0.2, 0.0, 0.0];
        let anchor_sq = squared_distance(&tree.xs, &tree.ys, &tree.zs, 0, &q);
        assert_eq!(
            tree.nearest_from(&q, 0, anchor_sq).0,
            brute_force(&points, &q)
        );
        let single = KdTree::new(&[[1.0, 2.0, 3.0]]);
        assert_eq!(single.nearest_from(&[1.0, 2.0, 4.0], 0, 1.0), (1.0, 0));
    }

    proptest! {
        /// Queries a little off the surface (the list decides) and far off it (the tree
        /// finishes), from the point they came from or a random one: the answer is the
        /// brute-force minimum bit for bit.
        #[test]
        fn nearest_from_an_anchor_matches_brute_force(
            n in 30usize..400,
            offsets in proptest::collection::vec(prop::array::uniform3(-1.0f64..1.0), 1..40),
            scale in prop::sample::select(vec![1e-6, 1e-3, 3e-3, 1e-2, 5e-2, 0.3]),
            anchor_seed in 0usize..1000,
        ) {
            let points = surface(n);
            let tree = KdTree::new(&points);
            let ordered = tree.points();
            for (k, offset) in offsets.iter().enumerate() {
                let i = (anchor_seed + 31 * k) % ordered.len();
                let q = [
                    ordered[i][0] + scale * offset[0],
                    ordered[i][1] + scale * offset[1],
                    ordered[i][2] + scale * offset[2],
                ];
                let expected = brute_force(&points, &q);
                for anchor in [i, (i * 7 + 3) % ordered.len()] {
                    let anchor_sq = squared_distance(&tree.xs, &tree.ys, &tree.zs, anchor, &q);
                    let (found_sq, index) = tree.nearest_from(&q, anchor, anchor_sq);
                    prop_assert_eq!(found_sq, expected);
                    let at_index = squared_distance(&tree.xs, &tree.ys, &tree.zs, index, &q);
                    prop_assert_eq!(at_index, expected);
                }
            }
        }

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

//! Stage 2 of multi-view CosyPose (spec C.1): which candidates of different views are
//! the same object, and how each pair of views sits relative to the other.
//!
//! For every ordered pair of views, every two tentative matches (same object label, one
//! candidate in each view) give a hypothesis of the relative camera pose; the hypothesis
//! that makes the most matches agree (within 2 cm, one-to-one) wins. Candidates joined by
//! the winners' matches in both directions (strongly connected) form one object.

use std::collections::{BTreeMap, BTreeSet};

use nalgebra::Vector3;
use petgraph::graph::DiGraph;
use posed_kernels::Pose;

use super::{Candidate, MultiviewOptions, ObjectGeometry};

/// The relative pose of two views that RANSAC accepted, with the matches that agree
/// with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewPair {
    /// The first view's id.
    pub view1: u32,
    /// The second view's id.
    pub view2: u32,
    /// `T_C1C2`: the second camera's frame in the first camera's.
    pub camera1_from_camera2: Pose,
    /// Inlier matches `(candidate in view1, candidate in view2)`, as indices into the
    /// candidates that passed the score threshold, one-to-one.
    pub inliers: Vec<(usize, usize)>,
}

/// The outcome of matching: accepted view pairs, and the candidates grouped into objects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Matching {
    pub(crate) pairs: Vec<ViewPair>,
    /// Each object's candidates (indices into the kept candidates), in ascending order;
    /// objects ordered by their first candidate.
    pub(crate) objects: Vec<Vec<usize>>,
}

/// A candidate's symmetric box corners in its camera frame: `T_CO S_k x` for every
/// symmetry `S_k` of its object and every corner `x`, computed once.
struct SymmetricCorners {
    /// `[symmetry][corner]`.
    corners: Vec<[Vector3<f64>; 8]>,
}

impl SymmetricCorners {
    fn new(camera_from_object: &Pose, geometry: &ObjectGeometry) -> SymmetricCorners {
        let corners = geometry
            .symmetries
            .iter()
            .map(|symmetry| {
                let pose = camera_from_object.compose(symmetry);
                geometry.corners_m.map(|x| pose.transform_point(&x))
            })
            .collect();
        SymmetricCorners { corners }
    }

    /// `dist_sym(T1, T2)` where `self` holds `T1`'s symmetric corners and `other` is
    /// `T2 x`: the mean corner distance at the symmetry of least mean squared distance
    /// (the first one on a tie, as torch's argmin).
    fn distance(&self, other: &[Vector3<f64>; 8]) -> f64 {
        let mut best: Option<(f64, usize)> = None;
        for (k, corners) in self.corners.iter().enumerate() {
            let squared: f64 = corners
                .iter()
                .zip(other)
                .map(|(a, b)| (a - b).norm_squared())
                .sum::<f64>()
                / 8.0;
            if best.is_none_or(|(value, _)| squared < value) {
                best = Some((squared, k));
            }
        }
        best.map_or(f64::INFINITY, |(_, k)| {
            self.corners[k]
                .iter()
                .zip(other)
                .map(|(a, b)| (a - b).norm())
                .sum::<f64>()
                / 8.0
        })
    }
}

/// `std::default_random_engine` of libstdc++ (`minstd_rand0`): `x <- 16807 x mod (2^31 - 1)`.
pub(crate) struct MinstdRand0 {
    state: u64,
}

impl MinstdRand0 {
    const MODULUS: u64 = 2_147_483_647;

    pub(crate) fn new(seed: u64) -> MinstdRand0 {
        // A seed that is 0 modulo m would stick at 0: the standard makes it 1.
        let state = match seed % Self::MODULUS {
            0 => 1,
            s => s,
        };
        MinstdRand0 { state }
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.state = self.state * 16_807 % Self::MODULUS;
        self.state as u32
    }

    /// libstdc++'s `uniform_int_distribution(0, max)` on this engine (`max` far below
    /// the engine's range): scale down, rejecting draws past the last whole bucket.
    fn uniform(&mut self, max: u32) -> u32 {
        // The engine draws 1..=m-1: a range of m - 2.
        let engine_range = Self::MODULUS - 2;
        let buckets = u64::from(max) + 1;
        let scaling = engine_range / buckets;
        let past = buckets * scaling;
        loop {
            let draw = u64::from(self.next_u32()) - 1;
            if draw < past {
                return (draw / scaling) as u32;
            }
        }
    }
}

/// `std::shuffle(0..n, default_random_engine(seed))` as libstdc++ before GCC 10 walks it
/// (one draw per element). The C++ standard leaves the walk to the library, so this is
/// CosyPose's order only where it was built that way (spec F.9).
pub(crate) fn cpp_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut values: Vec<usize> = (0..n).collect();
    let mut rng = MinstdRand0::new(seed);
    for i in 1..n {
        let j = rng.uniform(i as u32) as usize;
        values.swap(i, j);
    }
    values
}

/// Matches `candidates` (already filtered by score) across views. `geometry` has every
/// candidate's object. With `known_world_from_camera` (one per view id), the relative pose
/// of each view pair is known and RANSAC is not run (one hypothesis per pair).
pub(crate) fn match_candidates(
    candidates: &[Candidate],
    geometry: &BTreeMap<u32, ObjectGeometry>,
    known_world_from_camera: Option<&BTreeMap<u32, Pose>>,
    options: &MultiviewOptions,
) -> Matching {
    let corners: Vec<SymmetricCorners> = candidates
        .iter()
        .map(|c| SymmetricCorners::new(&c.camera_from_object, &geometry[&c.obj_id]))
        .collect();
    // Tentative matches per ordered view pair, in CosyPose's order (n, then m).
    let mut tentative: BTreeMap<(u32, u32), Vec<(usize, usize)>> = BTreeMap::new();
    for (n, a) in candidates.iter().enumerate() {
        for (m, b) in candidates.iter().enumerate() {
            if a.view_id != b.view_id && a.obj_id == b.obj_id {
                tentative
                    .entry((a.view_id, b.view_id))
                    .or_default()
                    .push((n, m));
            }
        }
    }
    let iterations = if known_world_from_camera.is_some() {
        1
    } else {
        options.ransac_iterations
    };
    let mut pairs = Vec::new();
    // Hypotheses are numbered across all view pairs, as in CosyPose.
    let mut hypothesis_id = 0usize;
    for (&(view1, view2), matches) in &tentative {
        let mut best: Option<Hypothesis> = None;
        for (m1, m2) in seeds(matches.len(), iterations) {
            let id = hypothesis_id;
            hypothesis_id += 1;
            let camera1_from_camera2 = match known_world_from_camera {
                Some(known) => known[&view1].inverse().compose(&known[&view2]),
                None => hypothesis(candidates, &corners, geometry, matches[m1], matches[m2]),
            };
            let scored = score(
                candidates,
                &corners,
                geometry,
                matches,
                &camera1_from_camera2,
                options.inlier_distance_m,
            );
            let better = scored.inliers.len() >= options.min_inliers
                && best.as_ref().is_none_or(|b| {
                    scored.inliers.len() > b.inliers.len()
                        || (scored.inliers.len() == b.inliers.len()
                            && scored.distance_sum_m < b.distance_sum_m)
                });
            if better {
                best = Some(Hypothesis {
                    id,
                    camera1_from_camera2,
                    ..scored
                });
            }
        }
        // CosyPose accepts a winner only when its id is above 0 (spec F.5): the very first
        // hypothesis can never win. Kept when RANSAC runs; with known cameras there is one
        // hypothesis per pair, and the quirk would throw the first pair away.
        let quirk = known_world_from_camera.is_none();
        if let Some(best) = best.filter(|b| !quirk || b.id > 0) {
            pairs.push(ViewPair {
                view1,
                view2,
                camera1_from_camera2: best.camera1_from_camera2,
                inliers: best.inliers,
            });
        }
    }
    let objects = strongly_connected_objects(candidates.len(), &pairs);
    Matching { pairs, objects }
}

struct Hypothesis {
    id: usize,
    camera1_from_camera2: Pose,
    inliers: Vec<(usize, usize)>,
    distance_sum_m: f64,
}

/// RANSAC seeds of a view pair with `n` tentative matches: pairs of distinct matches,
/// walking two permutations (seeds 0 and 1) in a nested loop, at most `iterations`. (The
/// two are the same permutation: the engine takes seed 0 as 1.)
fn seeds(n: usize, iterations: usize) -> Vec<(usize, usize)> {
    let outer = cpp_permutation(n, 0);
    let inner = cpp_permutation(n, 1);
    let mut seeds = Vec::new();
    'outer: for &m1 in &outer {
        for &m2 in &inner {
            if seeds.len() >= iterations {
                break 'outer;
            }
            if m1 != m2 {
                seeds.push((m1, m2));
            }
        }
    }
    seeds
}

/// `T_C1C2` from two matches `(a, b)` and `(g, d)`: the symmetry `S` of `a` that best
/// carries `d` onto `g` through `T_C1Oa S T_C2Ob^-1`.
fn hypothesis(
    candidates: &[Candidate],
    corners: &[SymmetricCorners],
    geometry: &BTreeMap<u32, ObjectGeometry>,
    (a, b): (usize, usize),
    (g, d): (usize, usize),
) -> Pose {
    let object_b_from_camera2 = candidates[b].camera_from_object.inverse();
    let a_geometry = &geometry[&candidates[a].obj_id];
    let d_geometry = &geometry[&candidates[d].obj_id];
    let mut best: Option<(f64, Pose)> = None;
    for symmetry in &a_geometry.symmetries {
        let camera1_from_camera2 = candidates[a]
            .camera_from_object
            .compose(symmetry)
            .compose(&object_b_from_camera2);
        let d_in_camera1 = camera1_from_camera2.compose(&candidates[d].camera_from_object);
        let d_corners = d_geometry
            .corners_m
            .map(|x| d_in_camera1.transform_point(&x));
        let distance = corners[g].distance(&d_corners);
        if best.is_none_or(|(value, _)| distance < value) {
            best = Some((distance, camera1_from_camera2));
        }
    }
    best.map_or_else(Pose::identity, |(_, pose)| pose)
}

/// The inliers of a hypothesis: matches whose candidates agree within the threshold,
/// nearest first, each candidate used once.
fn score(
    candidates: &[Candidate],
    corners: &[SymmetricCorners],
    geometry: &BTreeMap<u32, ObjectGeometry>,
    matches: &[(usize, usize)],
    camera1_from_camera2: &Pose,
    threshold_m: f64,
) -> Hypothesis {
    let mut agreeing: Vec<(f64, (usize, usize))> = Vec::new();
    for &(a, b) in matches {
        let b_in_camera1 = camera1_from_camera2.compose(&candidates[b].camera_from_object);
        let b_corners = geometry[&candidates[b].obj_id]
            .corners_m
            .map(|x| b_in_camera1.transform_point(&x));
        let distance = corners[a].distance(&b_corners);
        if distance <= threshold_m {
            agreeing.push((distance, (a, b)));
        }
    }
    // A stable sort keeps the tentative order among equal distances, as CosyPose's.
    agreeing.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut used1 = BTreeSet::new();
    let mut used2 = BTreeSet::new();
    let mut inliers = Vec::new();
    let mut distance_sum_m = 0.0;
    for (distance, (a, b)) in agreeing {
        if !used1.contains(&a) && !used2.contains(&b) {
            used1.insert(a);
            used2.insert(b);
            inliers.push((a, b));
            distance_sum_m += distance;
        }
    }
    Hypothesis {
        id: 0,
        camera1_from_camera2: *camera1_from_camera2,
        inliers,
        distance_sum_m,
    }
}

/// Objects: strongly connected components of the graph whose edges are the accepted
/// pairs' inlier matches, with at least two candidates.
fn strongly_connected_objects(n_candidates: usize, pairs: &[ViewPair]) -> Vec<Vec<usize>> {
    let mut graph = DiGraph::<(), ()>::with_capacity(n_candidates, 0);
    let nodes: Vec<_> = (0..n_candidates).map(|_| graph.add_node(())).collect();
    for pair in pairs {
        for &(a, b) in &pair.inliers {
            graph.add_edge(nodes[a], nodes[b], ());
        }
    }
    let mut objects: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .filter(|component| component.len() >= 2)
        .map(|component| {
            let mut members: Vec<usize> = component.iter().map(|n| n.index()).collect();
            members.sort_unstable();
            members
        })
        .collect();
    objects.sort();
    objects
}

/// View groups: strongly connected components of the views joined by accepted pairs
/// (only views in some pair), each sorted, ordered by their first view.
pub(crate) fn view_groups(pairs: &[ViewPair]) -> Vec<Vec<u32>> {
    let views: BTreeSet<u32> = pairs.iter().flat_map(|p| [p.view1, p.view2]).collect();
    let views: Vec<u32> = views.into_iter().collect();
    let index = |view: u32| views.binary_search(&view).unwrap_or_default();
    let mut graph = DiGraph::<(), ()>::with_capacity(views.len(), pairs.len());
    let nodes: Vec<_> = views.iter().map(|_| graph.add_node(())).collect();
    for pair in pairs {
        graph.add_edge(nodes[index(pair.view1)], nodes[index(pair.view2)], ());
    }
    let mut groups: Vec<Vec<u32>> = petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .map(|component| {
            let mut members: Vec<u32> = component.iter().map(|n| views[n.index()]).collect();
            members.sort_unstable();
            members
        })
        .collect();
    groups.sort();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minstd_rand0_matches_the_cpp_standard() {
        // [rand.predef]: the 10000th draw of a default-constructed minstd_rand0 (seed 1)
        // is 1043618065.
        let mut rng = MinstdRand0::new(1);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 1_043_618_065);
        // Seed 0 is taken as 1.
        let (mut zero, mut one) = (MinstdRand0::new(0), MinstdRand0::new(1));
        assert_eq!(zero.next_u32(), one.next_u32());
    }

    #[test]
    fn permutations_hold_every_index_once() {
        for n in [0, 1, 2, 7, 100] {
            for seed in [0, 1] {
                let mut p = cpp_permutation(n, seed);
                p.sort_unstable();
                assert_eq!(p, (0..n).collect::<Vec<_>>());
            }
        }
        // libstdc++ seeds an engine given 0 with 1: CosyPose's two permutations (seeds 0
        // and 1) are the same one.
        assert_eq!(cpp_permutation(20, 0), cpp_permutation(20, 1));
        assert_ne!(cpp_permutation(20, 1), cpp_permutation(20, 2));
    }

    #[test]
    fn seeds_pair_distinct_matches_up_to_the_limit() {
        assert!(seeds(1, 2000).is_empty());
        let all = seeds(5, 2000);
        assert_eq!(all.len(), 20);
        assert!(all.iter().all(|(a, b)| a != b));
        let capped = seeds(5, 7);
        assert_eq!(capped.len(), 7);
        // The nested walk: the first outer match is paired with the others first.
        assert!(capped[..4].iter().all(|(a, _)| *a == capped[0].0));
    }
}

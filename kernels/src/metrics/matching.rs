//! Greedy one-to-one matching of scored estimates to ground-truth instances, as both
//! CosyPose (`match_poses`) and the BOP toolkit (`pose_matching.match_poses`) do it:
//! estimates in order of decreasing score each take the still-unmatched ground truth with
//! the smallest admissible error.

/// Which errors admit a match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// `error <= threshold` (CosyPose keeps pairs with `error <= threshold * diameter`).
    AtMost(f64),
    /// `error < threshold` (the BOP toolkit's strict test).
    Below(f64),
}

impl Admit {
    fn admits(self, error: f64) -> bool {
        match self {
            Admit::AtMost(threshold) => error <= threshold,
            Admit::Below(threshold) => error < threshold,
        }
    }
}

/// CosyPose's matching rules (`run_cosypose_eval.py::get_pose_meters`): which pose
/// errors may pair an estimate with a ground-truth instance, as a fraction of the
/// object diameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchingRule {
    /// Any error: the YCB-Video AUC meters (`matching=CLASS`).
    Class,
    /// Error at most 0.5 d: T-LESS AUC (`matching=OVERLAP`).
    Overlap,
    /// Error at most 0.1 d: ADD-S<0.1d and mAP (`matching=BOP`).
    Bop,
}

impl MatchingRule {
    /// The admission test for an object of diameter `diameter_m`.
    pub fn admit(self, diameter_m: f64) -> Admit {
        match self {
            MatchingRule::Class => Admit::AtMost(f64::INFINITY),
            MatchingRule::Overlap => Admit::AtMost(0.5 * diameter_m),
            MatchingRule::Bop => Admit::AtMost(0.1 * diameter_m),
        }
    }
}

/// CosyPose's optional sphere check: a pair is a candidate only if the translations are
/// closer than the diameter (`spheres_overlap_check`, on for T-LESS, off for YCB-V).
pub fn spheres_overlap(translation_error_m: f64, diameter_m: f64) -> bool {
    translation_error_m < diameter_m
}

/// Matches estimates to ground truth in one group (same image and object).
///
/// - `scores[e]`: estimate scores; ties keep input order (a stable sort, like pandas'
///   and Python's).
/// - `errors[e * n_gt + g]`: error of estimate `e` against ground truth `g`; NaN never
///   matches.
/// - `gt_valid[g]`: ground truth that may be matched.
///
/// Returns, per estimate, the index of its matched ground truth.
pub fn match_greedy(
    scores: &[f64],
    errors: &[f64],
    gt_valid: &[bool],
    admit: Admit,
) -> Vec<Option<usize>> {
    let n_est = scores.len();
    let n_gt = gt_valid.len();
    debug_assert_eq!(errors.len(), n_est * n_gt);
    let mut order: Vec<usize> = (0..n_est).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut gt_taken = vec![false; n_gt];
    let mut matches = vec![None; n_est];
    for e in order {
        let mut best: Option<(usize, f64)> = None;
        for g in 0..n_gt {
            let error = errors[e * n_gt + g];
            if gt_taken[g] || !gt_valid[g] || !admit.admits(error) {
                continue;
            }
            if best.is_none_or(|(_, best_error)| error < best_error) {
                best = Some((g, error));
            }
        }
        if let Some((g, _)) = best {
            gt_taken[g] = true;
            matches[e] = Some(g);
        }
    }
    matches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_score_chooses_first() {
        // Two estimates, two GT. The lower-scored estimate is closer to GT 0, but the
        // higher-scored one takes GT 0 first because it is its own best.
        let scores = [0.2, 0.9];
        let errors = [0.01, 0.5, /* est 1: */ 0.02, 0.03];
        let matches = match_greedy(&scores, &errors, &[true, true], Admit::AtMost(1.0));
        assert_eq!(matches, vec![Some(1), Some(0)]);
    }

    #[test]
    fn cosypose_rules() {
        assert_eq!(MatchingRule::Class.admit(0.2), Admit::AtMost(f64::INFINITY));
        assert_eq!(MatchingRule::Overlap.admit(0.2), Admit::AtMost(0.1));
        assert_eq!(MatchingRule::Bop.admit(0.2), Admit::AtMost(0.1 * 0.2));
        assert!(spheres_overlap(0.19, 0.2) && !spheres_overlap(0.2, 0.2));
    }

    #[test]
    fn thresholds_and_validity_exclude() {
        let errors = [0.1, 0.05];
        assert_eq!(
            match_greedy(&[1.0], &errors, &[true, false], Admit::Below(0.1)),
            vec![None]
        );
        assert_eq!(
            match_greedy(&[1.0], &errors, &[true, false], Admit::AtMost(0.1)),
            vec![Some(0)]
        );
        assert_eq!(
            match_greedy(&[1.0], &[f64::NAN], &[true], Admit::AtMost(f64::INFINITY)),
            vec![None]
        );
    }
}

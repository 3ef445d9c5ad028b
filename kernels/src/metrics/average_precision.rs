//! Average precision as scikit-learn's `average_precision_score` defines it.

/// `AP = sum_n (R_n - R_{n-1}) P_n` over the distinct score thresholds in decreasing
/// order (tied scores form one threshold). `is_positive[i]` is the label of `scores[i]`.
/// Returns `None` when there is no positive (scikit-learn warns and returns NaN or 0).
pub fn average_precision(scores: &[f64], is_positive: &[bool]) -> Option<f64> {
    debug_assert_eq!(scores.len(), is_positive.len());
    let n_positive = is_positive.iter().filter(|&&p| p).count();
    if n_positive == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut true_positives, mut seen) = (0usize, 0usize);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    let mut i = 0;
    while i < order.len() {
        // Consume every estimate tied at this score.
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            true_positives += usize::from(is_positive[order[i]]);
            seen += 1;
            i += 1;
        }
        let recall = true_positives as f64 / n_positive as f64;
        let precision = true_positives as f64 / seen as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    Some(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn_examples() {
        // sklearn docs: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((ap - 0.833_333_333_333_333_4).abs() < 1e-15, "{ap}");
        // Ties form one threshold: precision 1/2 at recall 1.
        let ap = average_precision(&[0.5, 0.5], &[true, false]).unwrap();
        assert!((ap - 0.5).abs() < 1e-15);
        assert_eq!(average_precision(&[0.5], &[false]), None);
    }
}

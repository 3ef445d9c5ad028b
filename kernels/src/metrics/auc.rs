//! Area under the accuracy-vs-threshold curve of pose errors.

/// Largest error threshold of the YCB-Video AUC, metres.
pub const AUC_MAX_THRESHOLD_M: f64 = 0.1;

/// The YCB-Video toolbox `VOCap` AUC, as CosyPose's `compute_auc_posecnn` computes it.
///
/// `errors_m` holds one error per ground-truth instance (`f64::INFINITY` for a missed
/// one), in any order. Errors above 0.1 m count as misses. The curve is the exact
/// right-endpoint step function through the sorted errors (no threshold grid), with ties
/// taking the left-most accuracy, normalised by 0.1 m. Returns `None` when no error is
/// at or below 0.1 m (the reference returns NaN there).
pub fn auc_voc(errors_m: &[f64]) -> Option<f64> {
    let n = errors_m.len();
    // NaN errors sort last and never count as finite, like numpy's sort + isfinite.
    let mut sorted: Vec<f64> = errors_m.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mut area = 0.0;
    let mut previous_threshold = 0.0;
    let mut running_accuracy: f64 = 0.0;
    let mut last_accuracy = None;
    for (index, &error) in sorted.iter().enumerate() {
        // NaN sorts last and, like infinity, is never a hit.
        if error.is_nan() || error > AUC_MAX_THRESHOLD_M {
            break;
        }
        let accuracy = (index + 1) as f64 / n as f64;
        running_accuracy = running_accuracy.max(accuracy);
        if error != previous_threshold {
            area += (error - previous_threshold) * running_accuracy;
            previous_threshold = error;
        }
        last_accuracy = Some(running_accuracy);
    }
    let last_accuracy = last_accuracy?;
    if AUC_MAX_THRESHOLD_M != previous_threshold {
        area += (AUC_MAX_THRESHOLD_M - previous_threshold) * last_accuracy;
    }
    Some(area / AUC_MAX_THRESHOLD_M)
}

/// AUC on a fixed threshold grid: the mean, over `t_k = start_m + k * step_m` for
/// `k = 0..count`, of the fraction of errors at or below `t_k`. This is the variant other
/// codebases use (1000 steps up to 0.1 m); it differs slightly from [`auc_voc`].
pub fn auc_grid(errors_m: &[f64], start_m: f64, step_m: f64, count: usize) -> f64 {
    if errors_m.is_empty() || count == 0 {
        return 0.0;
    }
    let mut sorted: Vec<f64> = errors_m.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mut below = 0usize;
    let mut fractions = 0.0;
    for k in 0..count {
        let threshold = start_m + k as f64 * step_m;
        while below < sorted.len() && sorted[below] <= threshold {
            below += 1;
        }
        fractions += below as f64 / sorted.len() as f64;
    }
    fractions / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_tied_errors_use_the_leftmost_accuracy() {
        let auc = auc_voc(&[0.01; 10]).unwrap();
        assert!((auc - 0.91).abs() < 1e-12, "{auc}");
    }

    #[test]
    fn nothing_below_the_cap_is_undefined() {
        assert_eq!(auc_voc(&[0.2, f64::INFINITY]), None);
        assert_eq!(auc_voc(&[]), None);
        assert_eq!(auc_voc(&[f64::NAN]), None);
    }

    #[test]
    fn misses_lower_the_curve() {
        let auc = auc_voc(&[0.0, f64::INFINITY]).unwrap();
        assert!((auc - 0.5).abs() < 1e-15);
    }

    #[test]
    fn grid_counts_thresholds_inclusively() {
        assert!((auc_grid(&[0.1], 0.0001, 0.0001, 1000) - 0.001).abs() < 1e-12);
    }
}

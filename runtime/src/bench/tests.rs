use super::*;

#[test]
fn percentiles_are_nearest_rank() {
    let values: Vec<u64> = (1..=10).collect();
    assert_eq!(percentile(&values, 50.0), Some(5));
    assert_eq!(percentile(&values, 90.0), Some(9));
    assert_eq!(percentile(&values, 99.0), Some(10));
    assert_eq!(percentile(&values, 100.0), Some(10));
    assert_eq!(percentile(&values, 0.0), Some(1));
    assert_eq!(percentile(&[7], 99.0), Some(7));
    assert_eq!(percentile(&[], 50.0), None);
    // 100 values: p99 is the 99th, not the largest.
    let hundred: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&hundred, 99.0), Some(99));
}

#[test]
fn stage_summaries_cover_every_stage_in_stream_order() {
    let frames: Vec<StageLatencies> = (1..=4u64)
        .map(|i| StageLatencies {
            capture: i * 1_000_000,
            refiner: 10_000_000,
            total: (i + 20) * 1_000_000,
            ..StageLatencies::default()
        })
        .collect();
    let summaries = stage_summaries(&frames);
    let stages: Vec<&str> = summaries.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            "capture", "queue", "detect", "init", "crop", "render", "coarse", "refiner", "update",
            "publish", "total"
        ]
    );
    let capture = &summaries[0];
    assert_eq!(
        (
            capture.mean_ms,
            capture.p50_ms,
            capture.p90_ms,
            capture.max_ms
        ),
        (2.5, 2.0, 4.0, 4.0)
    );
    assert_eq!(summaries[7].p99_ms, 10.0);
    assert_eq!(summaries[10].p50_ms, 22.0);
    assert!(stage_summaries(&[]).is_empty());
}

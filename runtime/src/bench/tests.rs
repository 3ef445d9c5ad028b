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

#[test]
fn values_that_round_to_zero_lose_their_sign() {
    assert_eq!(fixed(-1e-17, 4), "0.0000");
    assert_eq!(fixed(-0.0, 2), "0.00");
    assert_eq!(fixed(-0.25, 2), "-0.25");
    assert_eq!(fixed(1.23456, 3), "1.235");
}

#[test]
fn csv_names_keep_letters_digits_and_single_underscores() {
    assert_eq!(
        csv_name("cpu policy0 (cpus 0 1 2 3)"),
        "cpu_policy0_cpus_0_1_2_3"
    );
    assert_eq!(csv_name("devfreq 17000000.gpu"), "devfreq_17000000_gpu");
    assert_eq!(csv_name("VDD_IN"), "VDD_IN");
    assert_eq!(csv_name("ina238 hwmon2/power1"), "ina238_hwmon2_power1");
}

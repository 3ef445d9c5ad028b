use super::super::sysfs::parse_integer;
use super::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/bench/testdata")
        .join(name)
}

fn names(meter: &PowerMeter) -> Vec<&str> {
    meter.rails.iter().map(|rail| rail.name.as_str()).collect()
}

/// Power of every rail now, W (counters are not powers: None).
fn powers_w(meter: &PowerMeter) -> Vec<Option<f64>> {
    meter
        .rails
        .iter()
        .map(|rail| match read_rail(rail).expect("readable") {
            Value::PowerW(w) => Some(w),
            Value::CounterUj(_) => None,
        })
        .collect()
}

#[test]
fn orin_nano_has_three_ina3221_rails_and_vdd_in_is_the_whole() {
    let meter = PowerMeter::discover(&testdata("orin-nano")).expect("discover");
    assert_eq!(names(&meter), ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]);
    assert_eq!(meter.rails[0].origin, "ina3221 1-0040 channel 1");
    assert_eq!(meter.whole, Whole::Rail(0));
    assert_eq!(meter.whole_description(), "VDD_IN");
    // mV x mA: 5080 x 1240, 5072 x 336, 5072 x 600.
    let powers = powers_w(&meter);
    let expected = [6.2992, 1.704192, 3.0432];
    for (found, expected) in powers.iter().zip(expected) {
        assert!(
            (found.expect("power") - expected).abs() < 1e-12,
            "{powers:?}"
        );
    }
    assert!(meter.skipped.is_empty(), "{:?}", meter.skipped);
}

#[test]
fn agx_orin_sums_its_connected_rails_across_two_chips() {
    let meter = PowerMeter::discover(&testdata("agx-orin")).expect("discover");
    assert_eq!(
        names(&meter),
        [
            "VDD_GPU_SOC",
            "VDD_CPU_CV",
            "VIN_SYS_5V0",
            "VDDQ_VDD2_1V8AO"
        ]
    );
    assert_eq!(meter.rails[3].origin, "ina3221 1-0041 channel 2");
    assert_eq!(meter.whole, Whole::Sum(vec![0, 1, 2, 3]));
    assert_eq!(meter.whole_description(), "the sum of 4 rail(s)");
    let total: f64 = powers_w(&meter).iter().map(|p| p.expect("power")).sum();
    // 5 V x (1.0 + 0.4 + 0.7 + 0.2) A.
    assert!((total - 11.5).abs() < 1e-12, "{total}");
}

#[test]
fn l4t32_ina3221x_rails_are_read_in_milliwatts() {
    let meter = PowerMeter::discover(&testdata("xavier-nx")).expect("discover");
    assert_eq!(names(&meter), ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]);
    assert_eq!(meter.rails[0].origin, "ina3221x 7-0040 channel 0");
    assert_eq!(meter.whole, Whole::Rail(0));
    assert_eq!(powers_w(&meter)[0], Some(4.312));
}

#[test]
fn rapl_packages_and_dram_make_the_whole_and_core_does_not() {
    let meter = PowerMeter::discover(&testdata("rapl")).expect("discover");
    assert_eq!(names(&meter), ["package-0", "core", "dram", "package-1"]);
    // DRAM is a domain of its own, beside the packages, not inside them.
    assert_eq!(meter.whole, Whole::Sum(vec![0, 2, 3]));
    assert!(powers_w(&meter).iter().all(Option::is_none));
}

#[test]
fn a_machine_without_meters_has_no_rails() {
    let empty = tempfile::tempdir().expect("tempdir");
    let meter = PowerMeter::discover(empty.path()).expect("discover");
    assert!(meter.rails.is_empty());
    assert_eq!(meter.whole, Whole::Sum(Vec::new()));
}

/// A hwmon chip in a temporary sysfs tree whose files the test rewrites.
fn ina226_tree(power_uw: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let chip = root.path().join("sys/class/hwmon/hwmon3");
    std::fs::create_dir_all(&chip).expect("mkdir");
    std::fs::write(chip.join("name"), "ina226\n").expect("write");
    std::fs::write(chip.join("power1_input"), power_uw).expect("write");
    let file = chip.join("power1_input");
    (root, file)
}

#[test]
fn unreadable_and_malformed_meters_are_skipped_with_the_file_named() {
    let (root, file) = ina226_tree("12.5 W\n");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    assert!(meter.rails.is_empty());
    assert_eq!(meter.skipped.len(), 1, "{:?}", meter.skipped);
    let why = &meter.skipped[0];
    assert!(
        why.contains(&file.display().to_string()) && why.contains("expected a decimal integer"),
        "{why}"
    );

    // A RAPL counter only root may read (Linux >= 5.10). Root reads it anyway.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let zone = root.path().join("sys/class/powercap/intel-rapl:0");
        std::fs::create_dir_all(&zone).expect("mkdir");
        std::fs::write(zone.join("name"), "package-0\n").expect("write");
        std::fs::write(zone.join("energy_uj"), "1000\n").expect("write");
        std::fs::set_permissions(
            zone.join("energy_uj"),
            std::fs::Permissions::from_mode(0o000),
        )
        .expect("chmod");
        let meter = PowerMeter::discover(root.path()).expect("discover");
        assert!(
            meter
                .skipped
                .iter()
                .any(|why| why.contains("readable by root only")),
            "{:?}",
            meter.skipped
        );
    }
}

#[test]
fn a_disabled_ina3221_channel_is_skipped_and_said_so() {
    let root = tempfile::tempdir().expect("tempdir");
    let chip = root.path().join("sys/class/hwmon/hwmon1");
    std::fs::create_dir_all(&chip).expect("mkdir");
    let five_watts = testdata("five-watts/sys/class/hwmon/hwmon1");
    for file in ["name", "in1_label", "in1_input", "curr1_input"] {
        std::fs::copy(five_watts.join(file), chip.join(file)).expect("copy");
    }
    std::fs::write(chip.join("in1_enable"), "0\n").expect("write");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    assert!(meter.rails.is_empty());
    assert_eq!(meter.skipped.len(), 1);
    assert!(meter.skipped[0].contains("VDD_IN") && meter.skipped[0].contains("disabled"));
}

#[test]
fn power_readings_integrate_by_trapezoids_and_interpolate_between_samples() {
    let (root, file) = ina226_tree("1000000\n");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    assert_eq!(meter.rails.len(), 1);
    let mut state = SamplerState::new(&meter.rails);
    // 1 W at 0 s, 3 W at 1 s and 2 s: 2 J over the first second, 3 J over the next.
    let second = 1_000_000_000u64;
    state.sample(&meter.rails, 10 * second).expect("sample");
    std::fs::write(&file, "3000000\n").expect("write");
    state.sample(&meter.rails, 11 * second).expect("sample");
    state.sample(&meter.rails, 12 * second).expect("sample");
    let trace = state.finish(meter);
    assert_eq!(trace.samples(), 3);
    assert!((trace.energy_j(0, 10 * second, 12 * second) - 5.0).abs() < 1e-12);
    // Halfway into each second: cumulative 1.0 J and 3.5 J.
    let half = second / 2;
    let between = trace.energy_j(0, 10 * second + half, 11 * second + half);
    assert!((between - 2.5).abs() < 1e-12, "{between}");
    assert!((trace.whole_energy_j(10 * second, 11 * second) - 2.0).abs() < 1e-12);
    // Outside the samples the energy is held: nothing is invented.
    assert_eq!(trace.energy_j(0, 0, 10 * second), 0.0);
    assert!((trace.energy_j(0, 12 * second, 20 * second)).abs() < 1e-12);
    assert!(trace.covers(10 * second, 12 * second));
    assert!(!trace.covers(9 * second, 12 * second));
}

#[test]
fn a_failed_reading_is_counted_and_the_next_integrates_across_the_gap() {
    let (root, file) = ina226_tree("2000000\n");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    let mut state = SamplerState::new(&meter.rails);
    let second = 1_000_000_000u64;
    state.sample(&meter.rails, 0).expect("sample");
    std::fs::write(&file, "garbage\n").expect("write");
    let error = state.sample(&meter.rails, second).expect_err("garbage");
    assert!(error.to_string().contains("power1_input"), "{error}");
    std::fs::write(&file, "2000000\n").expect("write");
    state.sample(&meter.rails, 2 * second).expect("sample");
    let trace = state.finish(meter);
    assert_eq!(trace.read_errors, [1]);
    assert!((trace.energy_j(0, 0, 2 * second) - 4.0).abs() < 1e-12);
    // The gap's energy is spread over it, not lumped after it: 2 W in each second.
    assert!((trace.energy_j(0, 0, second) - 2.0).abs() < 1e-12);
    assert!((trace.energy_j(0, second, 2 * second) - 2.0).abs() < 1e-12);
}

#[test]
fn energy_counters_advance_across_their_wrap() {
    assert_eq!(counter_advance_uj(100, 1_100_100, 2_000_000), 1_100_000);
    assert_eq!(counter_advance_uj(1_900_000, 100_000, 2_000_000), 200_000);
    // A decrease with no wrap range known is a reset: it counts nothing.
    assert_eq!(counter_advance_uj(1_900_000, 100_000, 0), 0);

    let root = tempfile::tempdir().expect("tempdir");
    let zone = root.path().join("sys/class/powercap/intel-rapl:0");
    std::fs::create_dir_all(&zone).expect("mkdir");
    std::fs::write(zone.join("name"), "psys\n").expect("write");
    std::fs::write(zone.join("max_energy_range_uj"), "2000000\n").expect("write");
    std::fs::write(zone.join("energy_uj"), "1500000\n").expect("write");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    assert_eq!(meter.whole, Whole::Rail(0), "psys is the platform's whole");
    let mut state = SamplerState::new(&meter.rails);
    state.sample(&meter.rails, 0).expect("sample");
    std::fs::write(zone.join("energy_uj"), "1900000\n").expect("write");
    state.sample(&meter.rails, 1_000).expect("sample");
    std::fs::write(zone.join("energy_uj"), "300000\n").expect("write");
    state.sample(&meter.rails, 2_000).expect("sample");
    let trace = state.finish(meter);
    // 0.4 J, then 0.1 J to the wrap and 0.3 J after it.
    assert!((trace.energy_j(0, 0, 1_000) - 0.4).abs() < 1e-12);
    assert!((trace.energy_j(0, 1_000, 2_000) - 0.4).abs() < 1e-12);
}

#[test]
fn the_sampler_thread_measures_a_constant_power_exactly() {
    let (root, _file) = ina226_tree("5000000\n");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    let sampler = meter.start(Duration::from_millis(2)).expect("start");
    std::thread::sleep(Duration::from_millis(30));
    let trace = sampler.finish().expect("finish");
    assert!(trace.samples() >= 3, "{}", trace.samples());
    let (first, last) = (trace.t_ns[0], trace.t_ns[trace.samples() - 1]);
    let seconds = (last - first) as f64 * 1e-9;
    let watts = trace.whole_energy_j(first, last) / seconds;
    assert!((watts - 5.0).abs() < 1e-9, "{watts}");
}

#[test]
fn parse_integer_takes_sysfs_numbers_only() {
    assert_eq!(parse_integer(b"5080\n"), Some(5080));
    assert_eq!(parse_integer(b"-12\n"), Some(-12));
    assert_eq!(parse_integer(b" 7 "), Some(7));
    assert_eq!(parse_integer(b""), None);
    assert_eq!(parse_integer(b"1.5\n"), None);
    assert_eq!(parse_integer(b"\xff\n"), None);
}

#[test]
fn an_ina2xx_beside_ina3221_rails_is_the_whole_they_are_fed_from() {
    // Jetson Thor-like: an INA238 on the input (no label), INA3221 rails behind it.
    let root = tempfile::tempdir().expect("tempdir");
    let ina3221 = root.path().join("sys/class/hwmon/hwmon1");
    let ina238 = root.path().join("sys/class/hwmon/hwmon2");
    std::fs::create_dir_all(&ina3221).expect("mkdir");
    std::fs::create_dir_all(&ina238).expect("mkdir");
    let five_watts = testdata("five-watts/sys/class/hwmon/hwmon1");
    for file in ["name", "in1_label", "in1_input", "curr1_input"] {
        std::fs::copy(five_watts.join(file), ina3221.join(file)).expect("copy");
    }
    std::fs::write(ina3221.join("in1_label"), "VDD_GPU\n").expect("write");
    std::fs::write(ina238.join("name"), "ina238\n").expect("write");
    std::fs::write(ina238.join("power1_input"), "30000000\n").expect("write");
    let meter = PowerMeter::discover(root.path()).expect("discover");
    assert_eq!(names(&meter), ["VDD_GPU", "ina238 hwmon2/power1"]);
    assert_eq!(meter.whole, Whole::Sum(vec![1]));
    assert_eq!(powers_w(&meter), [Some(5.0), Some(30.0)]);
}

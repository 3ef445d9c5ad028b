//! Every case of data/metrics-cases.json (values cross-checked with the BOP toolkit and
//! CosyPose's `compute_auc_posecnn`): per-pair ADD, ADD-S, ADD(-S), MSSD, MSPD, RE, TE,
//! the AUC summaries, and the AUC edge cases.

use std::collections::BTreeMap;
use std::path::PathBuf;

use posed::bop::models::ModelSet;
use posed_kernels::metrics::auc::{auc_grid, auc_voc};
use posed_kernels::metrics::{rotation_error_deg, translation_error_m, PoseErrorModel};
use posed_kernels::symmetry::{bop_symmetry_transforms, BOP_MAX_SYM_DISC_STEP};
use posed_kernels::{Intrinsics, Pose};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn cases() -> Value {
    let text =
        std::fs::read_to_string(data_dir().join("metrics-cases.json")).expect("metrics-cases.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats<const N: usize>(value: &Value) -> [f64; N] {
    let list = value.as_array().expect("array");
    assert_eq!(list.len(), N);
    std::array::from_fn(|i| list[i].as_f64().expect("number"))
}

fn pose(record: &Value, which: &str) -> Pose {
    let r: [f64; 9] = floats(&record[format!("R_{which}")]);
    let t: [f64; 3] = floats(&record[format!("t_{which}")]);
    Pose::from_row_major(&r, t.map(|v| v * 1e-3))
}

struct Prepared {
    model: PoseErrorModel,
    symmetric: bool,
}

fn prepare() -> BTreeMap<u32, Prepared> {
    let models = ModelSet::load(&data_dir().join("ycbv-mini/models")).expect("models load");
    let cases = cases();
    let mut out = BTreeMap::new();
    for (id, object) in cases["objects"].as_object().expect("objects") {
        let obj_id: u32 = id.parse().expect("numeric id");
        let model = models.get(obj_id).expect("model present");
        assert_eq!(
            model.mesh.positions.len() as u64,
            object["n_points"].as_u64().expect("n_points")
        );
        let symmetries = bop_symmetry_transforms(&model.info.symmetries, BOP_MAX_SYM_DISC_STEP)
            .expect("symmetries");
        assert_eq!(
            symmetries.len() as u64,
            object["n_symmetry_transforms"].as_u64().expect("count")
        );
        let diameter_mm = object["diameter_mm"].as_f64().expect("diameter");
        assert!((model.info.diameter_m * 1e3 - diameter_mm).abs() < 1e-9);
        out.insert(
            obj_id,
            Prepared {
                model: PoseErrorModel::new(
                    model.mesh.positions.clone(),
                    model.info.diameter_m,
                    symmetries,
                )
                .expect("model"),
                symmetric: model.info.symmetries.is_symmetric(),
            },
        );
    }
    out
}

/// Relative tolerance for distances (the README of the data suggests about 1e-6).
const RELATIVE: f64 = 1e-6;

fn assert_close(name: &str, id: &Value, got_mm: f64, expected_mm: f64) {
    let tolerance = RELATIVE * expected_mm.abs() + 1e-9;
    assert!(
        (got_mm - expected_mm).abs() <= tolerance,
        "{name} of case {id}: got {got_mm}, expected {expected_mm}"
    );
}

/// Selects one error of a pair.
type PickError = fn(&PairErrors) -> f64;

struct PairErrors {
    add_m: f64,
    adds_m: f64,
    add_or_adds_m: f64,
}

fn check_record(
    prepared: &BTreeMap<u32, Prepared>,
    k: &Intrinsics,
    record: &Value,
    id: &Value,
) -> (u32, PairErrors) {
    let obj_id = record["obj_id"].as_u64().expect("obj_id") as u32;
    let object = &prepared[&obj_id];
    let gt = pose(record, "gt");
    let est = pose(record, "est");
    let add_m = object.model.add(&gt, &est);
    let adds_m = object.model.adds(&gt, &est);
    let add_or_adds_m = if object.symmetric { adds_m } else { add_m };
    let expect = |key: &str| {
        record[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in case {id}"))
    };
    assert_close("ADD", id, add_m * 1e3, expect("add_mm"));
    assert_close("ADD-S", id, adds_m * 1e3, expect("adds_mm"));
    assert_close("ADD(-S)", id, add_or_adds_m * 1e3, expect("add_or_adds_mm"));
    assert_close(
        "MSSD",
        id,
        object.model.mssd(&gt, &est) * 1e3,
        expect("mssd_mm"),
    );
    assert_close(
        "MSPD",
        id,
        object.model.mspd(k, &gt, &est),
        expect("mspd_px"),
    );
    assert_close(
        "TE",
        id,
        translation_error_m(&gt, &est) * 1e3,
        expect("te_mm"),
    );
    let re = rotation_error_deg(&gt, &est);
    assert!(
        (re - expect("re_deg")).abs() < 1e-5,
        "RE of case {id}: got {re}, expected {}",
        expect("re_deg")
    );
    (
        obj_id,
        PairErrors {
            add_m,
            adds_m,
            add_or_adds_m,
        },
    )
}

#[test]
fn every_pair_and_every_auc_matches_the_bop_toolkit() {
    let cases = cases();
    let prepared = prepare();
    let k = Intrinsics::from_row_major(&floats(&cases["camera_K"]));
    let pairs = cases["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 400);
    let mut per_object: BTreeMap<u32, Vec<PairErrors>> = BTreeMap::new();
    for record in pairs {
        let (obj_id, errors) = check_record(&prepared, &k, record, &record["pair_id"]);
        per_object.entry(obj_id).or_default().push(errors);
    }

    let grid = &cases["auc"]["grid_thresholds"];
    let (start, step) = (
        grid["start_m"].as_f64().expect("start"),
        grid["step_m"].as_f64().expect("step"),
    );
    let count = grid["count"].as_u64().expect("count") as usize;
    let check_auc = |label: &str, errors_m: &[f64], expected: &Value| {
        let voc = auc_voc(errors_m);
        match expected["voc"].as_f64() {
            Some(want) => assert!(
                voc.is_some_and(|v| (v - want).abs() < 1e-9),
                "{label} voc: got {voc:?}, expected {want}"
            ),
            None => assert_eq!(voc, None, "{label} voc"),
        }
        let want = expected["grid"].as_f64().expect("grid");
        let got = auc_grid(errors_m, start, step, count);
        assert!(
            (got - want).abs() < 1e-9,
            "{label} grid: got {got}, expected {want}"
        );
    };
    let kinds: [(&str, PickError); 3] = [
        ("add", |e| e.add_m),
        ("adds", |e| e.adds_m),
        ("add_or_adds", |e| e.add_or_adds_m),
    ];
    let results = &cases["auc_results"];
    for (obj_id, errors) in &per_object {
        for (kind, pick) in kinds {
            let values: Vec<f64> = errors.iter().map(pick).collect();
            check_auc(
                &format!("object {obj_id} {kind}"),
                &values,
                &results["per_object"][obj_id.to_string()][kind],
            );
        }
    }
    for (kind, pick) in kinds {
        let pooled: Vec<f64> = per_object.values().flatten().map(pick).collect();
        check_auc(
            &format!("all pairs {kind}"),
            &pooled,
            &results["overall"]["all_pairs"][kind],
        );
        let means: Vec<f64> = per_object
            .values()
            .map(|errors| auc_voc(&errors.iter().map(pick).collect::<Vec<_>>()).expect("defined"))
            .collect();
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        let want = results["overall"]["mean_over_objects"][kind]["voc"]
            .as_f64()
            .expect("voc");
        assert!(
            (mean - want).abs() < 1e-9,
            "mean over objects {kind}: got {mean}, expected {want}"
        );
    }
}

#[test]
fn edge_cases_match() {
    let cases = cases();
    let prepared = prepare();
    let k = Intrinsics::from_row_major(&floats(&cases["camera_K"]));
    let edges = cases["edge_cases"].as_array().expect("edge cases");
    assert!(!edges.is_empty());
    for record in edges {
        check_record(&prepared, &k, record, &record["edge_id"]);
    }
}

#[test]
fn auc_edge_cases_match() {
    let cases = cases();
    let grid = &cases["auc"]["grid_thresholds"];
    let (start, step) = (
        grid["start_m"].as_f64().expect("start"),
        grid["step_m"].as_f64().expect("step"),
    );
    let count = grid["count"].as_u64().expect("count") as usize;
    let edges = cases["auc_edge_cases"].as_array().expect("auc edge cases");
    assert!(!edges.is_empty());
    for case in edges {
        let errors: Vec<f64> = case["errors_m"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        let label = case["description"].as_str().expect("description");
        let voc = auc_voc(&errors);
        match case["voc"].as_f64() {
            Some(want) => assert!(
                voc.is_some_and(|v| (v - want).abs() < 1e-12),
                "{label}: got {voc:?}, expected {want}"
            ),
            None => assert_eq!(voc, None, "{label}"),
        }
        let want = case["grid"].as_f64().expect("grid");
        let got = auc_grid(&errors, start, step, count);
        assert!(
            (got - want).abs() < 1e-12,
            "{label} grid: got {got}, expected {want}"
        );
    }
}

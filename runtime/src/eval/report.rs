//! The evaluation report: numbers, a readable table and a JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{EvalOptions, TargetSource};

/// Per-object results. `None` where a metric is undefined (no ground truth, no target,
/// no error under the AUC cap, no true positive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectReport {
    /// Estimate rows for this object.
    pub n_predictions: usize,
    /// Valid ground-truth instances for CosyPose's meters.
    pub n_gt: usize,
    /// Ground-truth instances that are BOP19 targets.
    pub n_bop_targets: usize,
    /// AUC of ADD (VOCap, 0..0.1 m).
    pub auc_add: Option<f64>,
    /// AUC of ADD-S.
    pub auc_adds: Option<f64>,
    /// AUC of ADD(-S): ADD-S for symmetric objects, ADD otherwise.
    pub auc_add_or_adds: Option<f64>,
    /// Average precision at ADD-S < 0.1 d, scaled by recall.
    pub ap_adds_01d: Option<f64>,
    /// BOP19 average recall of VSD (`None` when VSD was not computed).
    pub ar_vsd: Option<f64>,
    /// BOP19 average recall of MSSD.
    pub ar_mssd: Option<f64>,
    /// BOP19 average recall of MSPD.
    pub ar_mspd: Option<f64>,
    /// BOP19 AR: the mean of AR_VSD, AR_MSSD and AR_MSPD (`None` without VSD).
    pub ar: Option<f64>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Rows of the results file.
    pub n_predictions: usize,
    /// Valid ground-truth instances for CosyPose's meters.
    pub n_gt: usize,
    /// BOP19 targets (instances to be found).
    pub n_bop_targets: usize,
    /// Mean over objects of the per-object AUC of ADD (CosyPose's `AUC/objects/mean`);
    /// `None` if any object's AUC is undefined, as numpy's mean of a NaN is.
    pub auc_add: Option<f64>,
    /// Mean over objects of the AUC of ADD-S.
    pub auc_adds: Option<f64>,
    /// Mean over objects of the AUC of ADD(-S).
    pub auc_add_or_adds: Option<f64>,
    /// mAP@ADD-S<0.1d: mean over objects with at least one true positive.
    pub map_adds_01d: Option<f64>,
    /// BOP19 AR_VSD: recall pooled over all targets, averaged over the 10 taus x 10
    /// thresholds (`None` when VSD was not computed).
    pub ar_vsd: Option<f64>,
    /// BOP19 AR_MSSD: recall pooled over all targets, averaged over thresholds.
    pub ar_mssd: Option<f64>,
    /// BOP19 AR_MSPD.
    pub ar_mspd: Option<f64>,
    /// The BOP19 AR: mean of AR_VSD, AR_MSSD and AR_MSPD (`None` without VSD).
    pub ar: Option<f64>,
    /// Per-object results.
    pub per_object: BTreeMap<u32, ObjectReport>,
    /// How ground truth and estimates were selected, in words.
    pub protocol: Vec<String>,
    /// Things a reader should know about these numbers.
    pub notes: Vec<String>,
}

impl Report {
    pub(super) fn new(n_predictions: usize) -> Self {
        Self {
            n_predictions,
            ..Self::default()
        }
    }

    pub(super) fn object(&mut self, obj_id: u32) -> &mut ObjectReport {
        self.per_object.entry(obj_id).or_default()
    }

    /// Computes the means and the protocol description.
    pub(super) fn finish(&mut self, options: &EvalOptions) {
        let with_gt: Vec<&ObjectReport> = self.per_object.values().filter(|o| o.n_gt > 0).collect();
        self.n_gt = with_gt.iter().map(|o| o.n_gt).sum();
        let mean_all = |pick: &dyn Fn(&ObjectReport) -> Option<f64>| -> Option<f64> {
            if with_gt.is_empty() {
                return None;
            }
            let values: Option<Vec<f64>> = with_gt.iter().map(|o| pick(o)).collect();
            values.map(|v| v.iter().sum::<f64>() / v.len() as f64)
        };
        self.auc_add = mean_all(&|o| o.auc_add);
        self.auc_adds = mean_all(&|o| o.auc_adds);
        self.auc_add_or_adds = mean_all(&|o| o.auc_add_or_adds);
        let undefined: Vec<String> = self
            .per_object
            .iter()
            .filter(|(_, o)| o.n_gt > 0)
            .filter(|(_, o)| {
                o.auc_add.is_none() || o.auc_adds.is_none() || o.auc_add_or_adds.is_none()
            })
            .map(|(obj_id, _)| obj_id.to_string())
            .collect();
        if !undefined.is_empty() {
            self.notes.push(format!(
                "objects {} have no error under 0.1 m for some AUC; their AUC is undefined and so is the mean over objects (as in CosyPose)",
                undefined.join(", ")
            ));
        }
        let aps: Vec<f64> = self
            .per_object
            .values()
            .filter_map(|o| o.ap_adds_01d)
            .collect();
        self.map_adds_01d = (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64);
        let without_tp = self
            .per_object
            .iter()
            .filter(|(_, o)| o.n_gt > 0 && o.ap_adds_01d.is_none())
            .count();
        if without_tp > 0 {
            self.notes.push(format!(
                "{without_tp} object(s) with ground truth have no true positive at ADD-S < 0.1 d and are left out of the mAP (CosyPose's rule)"
            ));
        }

        self.protocol.push(match &options.cosypose_targets {
            None => "AUC and mAP: every ground-truth instance is valid; AUC scores the top-1 estimate per image and object (YCB-Video protocol)".into(),
            Some(targets) => format!(
                "AUC and mAP: {} targets; the inst_count most visible instances are valid; AUC scores the top inst_count estimates",
                targets.len()
            ),
        });
        self.protocol.push(match &options.bop_targets.1 {
            TargetSource::File(path) => format!("BOP19 AR: targets from {}", path.display()),
            TargetSource::AllInstances => {
                "BOP19 AR: no targets file, every annotated instance is a target".into()
            }
        });
        self.protocol.push(if options.vsd {
            "AR_VSD: delta 15 mm, taus 0.05..0.5 d, each object rendered alone (posed's CPU renderer) in its ground-truth and estimated pose against the test depth image".into()
        } else {
            "AR_VSD and AR: not computed (VSD off)".to_string()
        });
        if !options.symmetric_as_asymmetric.is_empty() {
            let ids: Vec<String> = options
                .symmetric_as_asymmetric
                .iter()
                .map(u32::to_string)
                .collect();
            self.protocol.push(format!(
                "ADD(-S) treats objects {} as asymmetric",
                ids.join(", ")
            ));
        }
    }

    /// The report as one JSON object (undefined values are `null`).
    pub fn to_json(&self) -> Value {
        let per_object: serde_json::Map<String, Value> = self
            .per_object
            .iter()
            .map(|(obj_id, o)| {
                (
                    obj_id.to_string(),
                    json!({
                        "n_predictions": o.n_predictions,
                        "n_gt": o.n_gt,
                        "n_bop_targets": o.n_bop_targets,
                        "auc_add": o.auc_add,
                        "auc_adds": o.auc_adds,
                        "auc_add_or_adds": o.auc_add_or_adds,
                        "ap_adds_0.1d": o.ap_adds_01d,
                        "ar_vsd": o.ar_vsd,
                        "ar_mssd": o.ar_mssd,
                        "ar_mspd": o.ar_mspd,
                        "ar": o.ar,
                    }),
                )
            })
            .collect();
        json!({
            "auc_add": self.auc_add,
            "auc_adds": self.auc_adds,
            "auc_add_or_adds": self.auc_add_or_adds,
            "map_adds_0.1d": self.map_adds_01d,
            "ar_vsd": self.ar_vsd,
            "ar_mssd": self.ar_mssd,
            "ar_mspd": self.ar_mspd,
            "ar": self.ar,
            "n_predictions": self.n_predictions,
            "n_gt": self.n_gt,
            "n_bop_targets": self.n_bop_targets,
            "per_object": per_object,
            "protocol": self.protocol,
            "notes": self.notes,
        })
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>6} {:>8} {:>9} {:>11} {:>13} {:>8} {:>8} {:>8} {:>7}",
            "obj_id",
            "n_pred",
            "n_gt",
            "AUC ADD",
            "AUC ADD-S",
            "AUC ADD(-S)",
            "AP ADD-S<.1d",
            "AR_VSD",
            "AR_MSSD",
            "AR_MSPD",
            "AR"
        );
        for (obj_id, o) in &self.per_object {
            let _ = writeln!(
                out,
                "{:>7} {:>7} {:>6} {:>8} {:>9} {:>11} {:>13} {:>8} {:>8} {:>8} {:>7}",
                obj_id,
                o.n_predictions,
                o.n_gt,
                cell(o.auc_add),
                cell(o.auc_adds),
                cell(o.auc_add_or_adds),
                cell(o.ap_adds_01d),
                cell(o.ar_vsd),
                cell(o.ar_mssd),
                cell(o.ar_mspd),
                cell(o.ar)
            );
        }
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>6} {:>8} {:>9} {:>11} {:>13} {:>8} {:>8} {:>8} {:>7}",
            "mean",
            self.n_predictions,
            self.n_gt,
            cell(self.auc_add),
            cell(self.auc_adds),
            cell(self.auc_add_or_adds),
            cell(self.map_adds_01d),
            cell(self.ar_vsd),
            cell(self.ar_mssd),
            cell(self.ar_mspd),
            cell(self.ar)
        );
        let _ = writeln!(
            out,
            "\nAUC: mean over objects (VOCap, 0-0.1 m). mAP@ADD-S<0.1d: mean over objects. AR_*: BOP19, pooled over {} targets; AR = mean of AR_VSD, AR_MSSD, AR_MSPD.",
            self.n_bop_targets
        );
        for line in self.protocol.iter().chain(&self.notes) {
            let _ = writeln!(out, "- {line}");
        }
        out
    }
}

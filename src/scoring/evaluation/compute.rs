//! What an evaluation computes, over rows in memory (no SQL, nothing async): each version's
//! metrics at its stored thresholds and at thresholds tuned on these records, and the records
//! on which the versions' decisions differ.
//!
//! A figure that cannot be computed on these records is absent (`null`), never `0.0`: a label
//! with no positive has no recall and no F1, the macro figures average the labels that have
//! them, and labels nobody annotated are listed apart.
use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::scoring::positive_labels;
use crate::training::metrics::{evaluate, tune_thresholds, LabelMetrics, Metrics};

/// One evaluated record: what the dataset says about it.
pub(super) struct EvalRecord {
    pub(super) position: i32,
    pub(super) document_id: i64,
    pub(super) source: String,
    pub(super) external_id: String,
    pub(super) text: String,
    pub(super) checksum: String,
    /// label -> 1 (positive), 0 (negative) or null (not annotated); a label missing is not
    /// annotated either.
    pub(super) labels: BTreeMap<String, Option<u8>>,
}

/// One version's side of the comparison.
pub(super) struct Side {
    pub(super) version: i32,
    pub(super) labels: Vec<String>,
    pub(super) thresholds: Vec<f32>,
    /// Per record (in `records` order), the version's scores.
    pub(super) scores: Vec<Vec<f32>>,
}

/// The scores of each record's own text (keyed by document and text checksum) in record
/// order, or how many records have none.
pub(super) fn scores_of(
    records: &[EvalRecord],
    stored: &HashMap<(i64, String), Vec<f32>>,
) -> Result<Vec<Vec<f32>>, usize> {
    let key = |r: &EvalRecord| (r.document_id, r.checksum.clone());
    let scores: Option<Vec<Vec<f32>>> = records
        .iter()
        .map(|r| stored.get(&key(r)).cloned())
        .collect();
    scores.ok_or_else(|| {
        records
            .iter()
            .filter(|r| !stored.contains_key(&key(r)))
            .count()
    })
}

/// The first side none of whose labels any record annotates: there is nothing to evaluate it
/// on.
pub(super) fn unannotated<'s>(records: &[EvalRecord], sides: &'s [Side]) -> Option<&'s Side> {
    sides.iter().find(|side| {
        !records.iter().any(|r| {
            side.labels
                .iter()
                .any(|l| r.labels.get(l).copied().flatten().is_some())
        })
    })
}

/// A version's figures as stored in the evaluation's results, and its macro-F1 at its stored
/// thresholds (what a promotion gate compares; `None` when it cannot be computed).
pub(super) struct VersionResult {
    pub(super) json: serde_json::Value,
    pub(super) macro_f1: Option<f64>,
}

/// One version's metrics on the records, at its stored thresholds and at thresholds tuned on
/// these very records (a label without positives keeps 0.5).
pub(super) fn version_result(records: &[EvalRecord], side: &Side) -> VersionResult {
    let targets: Vec<Vec<Option<bool>>> = records
        .iter()
        .map(|r| {
            side.labels
                .iter()
                .map(|l| r.labels.get(l).copied().flatten().map(|v| v == 1))
                .collect()
        })
        .collect();
    let at_stored = evaluate(&side.labels, &side.scores, &targets, &side.thresholds);
    let tuned = tune_thresholds(&side.scores, &targets, 0.5);
    let at_tuned = evaluate(&side.labels, &side.scores, &targets, &tuned);
    let stored_json = metrics_json(&at_stored, &side.thresholds, &side.labels);
    let macro_f1 = stored_json["macro_f1"].as_f64();
    VersionResult {
        json: json!({
            "version": side.version,
            "labels": side.labels,
            "records": records.len(),
            "at_stored_thresholds": stored_json,
            "at_tuned_thresholds": metrics_json(&at_tuned, &tuned, &side.labels),
        }),
        macro_f1,
    }
}

/// Metrics as shown: labels nobody annotated on these records are listed apart rather than
/// given figures that could not be computed.
fn metrics_json(metrics: &Metrics, thresholds: &[f32], labels: &[String]) -> serde_json::Value {
    let mut value = json!(metrics);
    let annotated: Vec<&LabelMetrics> = metrics
        .per_label
        .iter()
        .filter(|m| m.support + m.negatives > 0)
        .collect();
    // A label with no positive among these records has no recall and no F1 (not 0.0), and
    // the macro figures average the labels that have them.
    value["per_label"] = json!(annotated
        .iter()
        .map(|m| {
            let mut v = json!(m);
            if m.support == 0 {
                v["recall"] = serde_json::Value::Null;
                v["f1"] = serde_json::Value::Null;
            }
            v
        })
        .collect::<Vec<_>>());
    let defined: Vec<&&LabelMetrics> = annotated.iter().filter(|m| m.support > 0).collect();
    let mean = |f: &dyn Fn(&LabelMetrics) -> f64| {
        (!defined.is_empty())
            .then(|| defined.iter().map(|m| f(m)).sum::<f64>() / defined.len() as f64)
    };
    value["macro_recall"] = json!(mean(&|m| m.recall));
    value["macro_f1"] = json!(mean(&|m| m.f1));
    value["not_annotated"] = json!(metrics
        .per_label
        .iter()
        .filter(|m| m.support + m.negatives == 0)
        .map(|m| m.label.clone())
        .collect::<Vec<_>>());
    value["thresholds"] = json!(labels
        .iter()
        .cloned()
        .zip(thresholds.iter().copied())
        .collect::<BTreeMap<String, f32>>());
    value
}

/// The records on which the versions' decisions (at their stored thresholds) differ, each
/// with every version's positive labels and scores, keyed by version.
pub(super) fn disagreements<'r>(
    records: &'r [EvalRecord],
    sides: &[Side],
) -> Vec<(&'r EvalRecord, serde_json::Value)> {
    let mut disagreements = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let decisions: Vec<Vec<String>> = sides
            .iter()
            .map(|s| {
                let mut positive = positive_labels(&s.labels, &s.scores[i], &s.thresholds);
                positive.sort();
                positive
            })
            .collect();
        if decisions.windows(2).all(|w| w[0] == w[1]) {
            continue;
        }
        let predictions: serde_json::Map<String, serde_json::Value> = sides
            .iter()
            .zip(&decisions)
            .map(|(s, d)| {
                (
                    s.version.to_string(),
                    json!({
                        "positive_labels": d,
                        "scores": s.labels.iter().cloned().zip(s.scores[i].iter().copied()).collect::<BTreeMap<String, f32>>(),
                    }),
                )
            })
            .collect();
        disagreements.push((record, serde_json::Value::Object(predictions)));
    }
    disagreements
}

#[cfg(test)]
mod tests {
    //! Every expected figure below is worked out by hand from the confusion counts noted next
    //! to it (a prediction is positive iff score >= threshold; precision = TP / (TP + FP),
    //! recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN)).
    use super::*;

    fn record(position: i32, labels: &[(&str, Option<u8>)]) -> EvalRecord {
        EvalRecord {
            position,
            document_id: 100 + i64::from(position),
            source: "mail".into(),
            external_id: format!("e{position}"),
            text: format!("text {position}"),
            checksum: format!("c{position}"),
            labels: labels.iter().map(|(l, v)| (l.to_string(), *v)).collect(),
        }
    }

    fn side(version: i32, labels: &[&str], thresholds: &[f32], scores: &[&[f32]]) -> Side {
        Side {
            version,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            thresholds: thresholds.to_vec(),
            scores: scores.iter().map(|s| s.to_vec()).collect(),
        }
    }

    #[track_caller]
    fn close(value: &serde_json::Value, expected: f64) {
        let got = value
            .as_f64()
            .unwrap_or_else(|| panic!("{value} is not a number"));
        assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
    }

    /// A threshold as stored in the JSON (an f32 widened to f64).
    #[track_caller]
    fn threshold(value: &serde_json::Value, expected: f32) {
        assert_eq!(value.as_f64().map(|v| v as f32), Some(expected), "{value}");
    }

    #[test]
    fn two_labels_at_stored_and_tuned_thresholds() {
        let records = vec![
            record(0, &[("a", Some(1)), ("b", Some(0))]),
            record(1, &[("a", Some(0)), ("b", Some(1))]),
            record(2, &[("a", Some(1)), ("b", Some(1))]),
            record(3, &[("a", Some(0)), ("b", Some(0))]),
        ];
        let side = side(
            7,
            &["a", "b"],
            &[0.5, 0.5],
            &[&[0.9, 0.2], &[0.6, 0.7], &[0.4, 0.8], &[0.1, 0.6]],
        );
        let result = version_result(&records, &side);
        let v = &result.json;
        assert_eq!(v["version"], 7);
        assert_eq!(v["labels"], json!(["a", "b"]));
        assert_eq!(v["records"], 4);

        let stored = &v["at_stored_thresholds"];
        // a at 0.5: r0 0.9 TP, r1 0.6 FP, r2 0.4 FN, r3 0.1 TN.
        let a = &stored["per_label"][0];
        assert_eq!(a["label"], "a");
        assert_eq!(
            (a["support"].as_u64(), a["negatives"].as_u64()),
            (Some(2), Some(2))
        );
        close(&a["precision"], 0.5); // 1 / (1 + 1)
        close(&a["recall"], 0.5); // 1 / (1 + 1)
        close(&a["f1"], 0.5); // 2 / (2 + 1 + 1)
                              // b at 0.5: r0 0.2 TN, r1 0.7 TP, r2 0.8 TP, r3 0.6 FP.
        let b = &stored["per_label"][1];
        assert_eq!(b["label"], "b");
        assert_eq!(
            (b["support"].as_u64(), b["negatives"].as_u64()),
            (Some(2), Some(2))
        );
        close(&b["precision"], 2.0 / 3.0); // 2 / (2 + 1)
        close(&b["recall"], 1.0); // 2 / (2 + 0)
        close(&b["f1"], 0.8); // 4 / (4 + 1 + 0)
        assert_eq!(stored["per_label"].as_array().map(Vec::len), Some(2));
        close(&stored["macro_f1"], 0.65); // (0.5 + 0.8) / 2
        close(&stored["macro_recall"], 0.75); // (0.5 + 1) / 2
        close(&stored["macro_precision"], 7.0 / 12.0); // (1/2 + 2/3) / 2
                                                       // Pooled: TP 3, FP 2, FN 1.
        close(&stored["micro_precision"], 0.6); // 3 / 5
        close(&stored["micro_recall"], 0.75); // 3 / 4
        close(&stored["micro_f1"], 2.0 / 3.0); // 6 / (6 + 2 + 1)
        assert_eq!(stored["rows"], 4);
        assert_eq!(stored["not_annotated"], json!([]));
        threshold(&stored["thresholds"]["a"], 0.5);
        threshold(&stored["thresholds"]["b"], 0.5);
        close(&json!(result.macro_f1), 0.65);

        // Tuned: a's best F1 is at 0.4 (TP 2, FP 1: 4/5, above 0.9's 2/3), b's at 0.7 (TP 2,
        // FP 0: 1.0).
        let tuned = &v["at_tuned_thresholds"];
        threshold(&tuned["thresholds"]["a"], 0.4);
        threshold(&tuned["thresholds"]["b"], 0.7);
        close(&tuned["per_label"][0]["f1"], 0.8);
        close(&tuned["per_label"][1]["f1"], 1.0);
        close(&tuned["macro_f1"], 0.9); // (0.8 + 1) / 2
    }

    #[test]
    fn a_figure_that_cannot_be_computed_is_absent_not_zero() {
        // x: annotated with positives; y: annotated, no positive (r2 leaves it out); z: never
        // annotated.
        let records = vec![
            record(0, &[("x", Some(1)), ("y", Some(0))]),
            record(1, &[("x", Some(0)), ("y", Some(0))]),
            record(2, &[("x", Some(1)), ("y", None)]),
        ];
        let side = side(
            2,
            &["x", "y", "z"],
            &[0.5, 0.5, 0.5],
            &[&[0.8, 0.7, 0.9], &[0.3, 0.2, 0.1], &[0.2, 0.9, 0.5]],
        );
        let result = version_result(&records, &side);
        let stored = &result.json["at_stored_thresholds"];
        let per_label = stored["per_label"].as_array().unwrap();
        assert_eq!(per_label.len(), 2, "z is listed apart: {stored}");
        // x: r0 0.8 TP, r1 0.3 TN, r2 0.2 FN.
        let x = &per_label[0];
        assert_eq!(x["label"], "x");
        assert_eq!(
            (x["support"].as_u64(), x["negatives"].as_u64()),
            (Some(2), Some(1))
        );
        close(&x["precision"], 1.0); // 1 / (1 + 0)
        close(&x["recall"], 0.5); // 1 / (1 + 1)
        close(&x["f1"], 2.0 / 3.0); // 2 / (2 + 0 + 1)
                                    // y: r0 0.7 FP, r1 0.2 TN; no positive, so no recall and no F1 (null, not 0.0); its
                                    // precision is a true 0 (one positive predicted, wrongly).
        let y = &per_label[1];
        assert_eq!(y["label"], "y");
        assert_eq!(
            (y["support"].as_u64(), y["negatives"].as_u64()),
            (Some(0), Some(2))
        );
        close(&y["precision"], 0.0);
        assert!(y["recall"].is_null(), "{y}");
        assert!(y["f1"].is_null(), "{y}");
        // The macro figures average x alone: 2/3, where counting y's F1 as 0 would give 1/3.
        close(&stored["macro_f1"], 2.0 / 3.0);
        close(&stored["macro_recall"], 0.5);
        close(&json!(result.macro_f1), 2.0 / 3.0);
        assert_eq!(stored["not_annotated"], json!(["z"]));
        // Pooled over x and y: TP 1, FP 1, FN 1.
        close(&stored["micro_f1"], 0.5); // 2 / (2 + 1 + 1)
        assert_eq!(stored["rows"], 3);
        threshold(&stored["thresholds"]["z"], 0.5);

        // Tuned: x at 0.2 (TP 2, FP 1: F1 4/5); y and z have no positive and keep 0.5.
        let tuned = &result.json["at_tuned_thresholds"];
        threshold(&tuned["thresholds"]["x"], 0.2);
        threshold(&tuned["thresholds"]["y"], 0.5);
        threshold(&tuned["thresholds"]["z"], 0.5);
        close(&tuned["macro_f1"], 0.8);
        assert!(tuned["per_label"][1]["f1"].is_null());
    }

    #[test]
    fn with_no_positive_at_all_the_macro_figures_are_absent() {
        let records = vec![
            record(0, &[("a", Some(0)), ("b", Some(0))]),
            record(1, &[("a", Some(0))]),
        ];
        let side = side(1, &["a", "b"], &[0.5, 0.5], &[&[0.7, 0.1], &[0.2, 0.3]]);
        let result = version_result(&records, &side);
        let stored = &result.json["at_stored_thresholds"];
        assert!(stored["macro_f1"].is_null(), "{stored}");
        assert!(stored["macro_recall"].is_null(), "{stored}");
        assert_eq!(result.macro_f1, None);
        // a: r0 0.7 FP, r1 0.2 TN; b: r0 0.1 TN.
        assert_eq!(stored["per_label"][0]["negatives"], 2);
        assert_eq!(stored["per_label"][1]["negatives"], 1);
        close(&stored["per_label"][0]["precision"], 0.0);
        assert!(stored["per_label"][0]["f1"].is_null());
        assert_eq!(stored["not_annotated"], json!([]));
    }

    #[test]
    fn scores_are_those_of_each_records_own_text() {
        let records = vec![record(0, &[]), record(1, &[])];
        let mut stored = HashMap::new();
        stored.insert((100, "c0".to_string()), vec![0.1, 0.9]);
        // Document 101's score is of another text.
        stored.insert((101, "stale".to_string()), vec![0.5, 0.5]);
        assert_eq!(scores_of(&records, &stored), Err(1));
        stored.insert((101, "c1".to_string()), vec![0.3, 0.7]);
        assert_eq!(
            scores_of(&records, &stored),
            Ok(vec![vec![0.1, 0.9], vec![0.3, 0.7]])
        );
    }

    #[test]
    fn a_version_none_of_whose_labels_is_annotated_is_found() {
        let records = vec![
            record(0, &[("a", Some(1)), ("q", None)]),
            record(1, &[("a", Some(0))]),
        ];
        let sides = vec![
            side(1, &["a"], &[0.5], &[&[0.1], &[0.2]]),
            side(2, &["q", "r"], &[0.5, 0.5], &[&[0.1, 0.1], &[0.2, 0.2]]),
        ];
        assert_eq!(unannotated(&records, &sides).map(|s| s.version), Some(2));
        assert!(unannotated(&records, &sides[..1]).is_none());
    }

    #[test]
    fn records_whose_decisions_differ_are_the_disagreements() {
        let records: Vec<EvalRecord> = (0..4).map(|i| record(i, &[("a", Some(1))])).collect();
        // Version 2 orders its labels b, a and asks more of b.
        let v1 = side(
            1,
            &["a", "b"],
            &[0.5, 0.5],
            &[&[0.9, 0.6], &[0.1, 0.2], &[0.6, 0.1], &[0.8, 0.7]],
        );
        let v2 = side(
            2,
            &["b", "a"],
            &[0.9, 0.5],
            &[&[0.6, 0.9], &[0.1, 0.2], &[0.95, 0.7], &[0.92, 0.55]],
        );
        // r0: v1 {a, b}, v2 {a}; r1: none and none; r2: v1 {a}, v2 {b, a}; r3: both {a, b}
        // (in another order, which does not count).
        let found = disagreements(&records, &[v1, v2]);
        let positions: Vec<i32> = found.iter().map(|(r, _)| r.position).collect();
        assert_eq!(positions, vec![0, 2]);
        let (_, r0) = &found[0];
        assert_eq!(r0["1"]["positive_labels"], json!(["a", "b"]));
        assert_eq!(r0["2"]["positive_labels"], json!(["a"]));
        let (_, r2) = &found[1];
        assert_eq!(r2["1"]["positive_labels"], json!(["a"]));
        assert_eq!(r2["2"]["positive_labels"], json!(["a", "b"]));
        threshold(&r2["2"]["scores"]["b"], 0.95);
        threshold(&r2["2"]["scores"]["a"], 0.7);
    }
}

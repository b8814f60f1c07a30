//! Multi-label classification metrics (precision, recall, F1, ROC-AUC) and per-label threshold tuning.
//!
//! Pure Rust on plain slices: no tensors, no I/O. A prediction is positive iff
//! `score >= threshold`, here and at inference alike. Targets are `Option<bool>`: `None` marks
//! a cell that was not annotated and is ignored by every count. Scores that are NaN are never
//! predicted positive and rank below every other score.

use std::cmp::Ordering;

/// Metrics of one label at its threshold, over the rows where that label is annotated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelMetrics {
    pub label: String,
    /// Threshold used: predicted positive iff `score >= threshold`.
    pub threshold: f32,
    /// Unmasked positives.
    pub support: usize,
    /// Unmasked negatives.
    pub negatives: usize,
    /// 0.0 when undefined (no predicted positive).
    pub precision: f64,
    /// 0.0 when undefined (no positive).
    pub recall: f64,
    /// 0.0 when undefined (no positive, none predicted).
    pub f1: f64,
    /// `None` when only one class is present among the unmasked rows.
    pub roc_auc: Option<f64>,
}

/// Metrics of a whole multi-label evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub per_label: Vec<LabelMetrics>,
    /// Mean over the labels that have at least one unmasked row (0.0 if none has).
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// From TP/FP/FN pooled over all unmasked cells.
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    /// Mean over the labels whose `roc_auc` is `Some`; `None` if there is none.
    pub macro_roc_auc: Option<f64>,
    /// Rows with at least one unmasked label.
    pub rows: usize,
    /// Per label, the precision–recall curve these scores trace and the threshold in use
    /// (set where thresholds are chosen: a run's validation split).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pr_curves: Vec<PrCurve>,
    /// Multi-class: the confusion matrix of the most probable class against the annotated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion_matrix: Option<ConfusionMatrix>,
}

/// One point of a precision–recall curve: predicting positive iff `score >= threshold`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrPoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
}

/// A label's precision–recall curve (at most [`PR_POINTS`] points, highest threshold first)
/// and the threshold chosen.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrCurve {
    pub label: String,
    pub threshold: f32,
    pub points: Vec<PrPoint>,
}

/// `counts[i][j]`: rows annotated `classes[i]` whose most probable class is `classes[j]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionMatrix {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

/// Most points a stored precision–recall curve keeps (evenly spaced over the distinct scores,
/// the first and last always kept).
pub const PR_POINTS: usize = 101;

/// The precision–recall curve of each label: one point per distinct unmasked score (NaN
/// scores are never predicted positive), thinned to [`PR_POINTS`]; a label without an
/// unmasked positive has an empty curve.
pub fn pr_curves(
    labels: &[String],
    scores: &[Vec<f32>],
    targets: &[Vec<Option<bool>>],
    thresholds: &[f32],
) -> Vec<PrCurve> {
    check_shape(scores, targets, labels.len());
    labels
        .iter()
        .zip(thresholds)
        .enumerate()
        .map(|(j, (label, &threshold))| PrCurve {
            label: label.clone(),
            threshold,
            points: pr_points(column(scores, targets, j)),
        })
        .collect()
}

fn pr_points(mut cells: Vec<(f32, bool)>) -> Vec<PrPoint> {
    let positives = cells.iter().filter(|c| c.1).count();
    if positives == 0 {
        return Vec::new();
    }
    cells.sort_unstable_by(|a, b| cmp_score(b.0, a.0));
    let mut points = Vec::new();
    let (mut tp, mut fp, mut i) = (0usize, 0usize, 0);
    while i < cells.len() && !cells[i].0.is_nan() {
        let score = cells[i].0;
        while i < cells.len() && cmp_score(cells[i].0, score) == Ordering::Equal {
            if cells[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push(PrPoint {
            threshold: score,
            precision: tp as f64 / (tp + fp) as f64,
            recall: tp as f64 / positives as f64,
        });
    }
    if points.len() <= PR_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..PR_POINTS)
        .map(|k| points[k * last / (PR_POINTS - 1)].clone())
        .collect()
}

/// The confusion matrix of multi-class rows: the annotated class (the one target that is true;
/// rows without exactly one are left out) against the most probable class.
pub fn confusion_matrix(
    classes: &[String],
    scores: &[Vec<f32>],
    targets: &[Vec<Option<bool>>],
) -> ConfusionMatrix {
    check_shape(scores, targets, classes.len());
    let n = classes.len();
    let mut counts = vec![vec![0u64; n]; n];
    for (row, target) in scores.iter().zip(targets) {
        let mut truth = target.iter().enumerate().filter(|(_, t)| **t == Some(true));
        let (Some((actual, _)), None) = (truth.next(), truth.next()) else {
            continue;
        };
        let predicted = row
            .iter()
            .enumerate()
            .max_by(|a, b| cmp_score(*a.1, *b.1))
            .map(|(i, _)| i);
        if let Some(predicted) = predicted {
            counts[actual][predicted] += 1;
        }
    }
    ConfusionMatrix {
        classes: classes.to_vec(),
        counts,
    }
}

/// Confusion counts of one label (or pooled over labels).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
    tn: usize,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// `num / den`, 0.0 when `den` is 0.
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// Orders scores ascending with NaN below everything (all NaNs equal) and `-0.0 == 0.0`, so that
/// equal elements are exactly the scores that no threshold can separate.
fn cmp_score(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The unmasked `(score, target)` pairs of column `j`.
fn column(scores: &[Vec<f32>], targets: &[Vec<Option<bool>>], j: usize) -> Vec<(f32, bool)> {
    scores
        .iter()
        .zip(targets)
        .filter_map(|(s, t)| t[j].map(|target| (s[j], target)))
        .collect()
}

fn check_shape(scores: &[Vec<f32>], targets: &[Vec<Option<bool>>], width: usize) {
    assert_eq!(
        scores.len(),
        targets.len(),
        "scores and targets must have the same number of rows"
    );
    for (i, (s, t)) in scores.iter().zip(targets).enumerate() {
        assert!(
            s.len() == width && t.len() == width,
            "row {i}: expected {width} scores and targets, got {} and {}",
            s.len(),
            t.len()
        );
    }
}

/// Evaluates `scores` (n rows × L labels, probabilities) against `targets` (same shape, `None` =
/// masked: not annotated, ignored everywhere) with one threshold per label.
///
/// # Panics
/// If the shapes disagree: `labels`, `thresholds` and every row of `scores` and `targets` must
/// have the same length, and `scores` and `targets` the same number of rows.
pub fn evaluate(
    labels: &[String],
    scores: &[Vec<f32>],
    targets: &[Vec<Option<bool>>],
    thresholds: &[f32],
) -> Metrics {
    let width = labels.len();
    assert_eq!(
        thresholds.len(),
        width,
        "one threshold per label is required"
    );
    check_shape(scores, targets, width);

    let mut per_label = Vec::with_capacity(width);
    let mut pooled = Counts::default();
    let (mut precisions, mut recalls, mut f1s, mut aucs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (j, (label, &threshold)) in labels.iter().zip(thresholds).enumerate() {
        let cells = column(scores, targets, j);
        let mut counts = Counts::default();
        for &(score, target) in &cells {
            match (score >= threshold, target) {
                (true, true) => counts.tp += 1,
                (true, false) => counts.fp += 1,
                (false, true) => counts.fn_ += 1,
                (false, false) => counts.tn += 1,
            }
        }
        pooled.add(counts);
        let (cell_scores, cell_targets): (Vec<f32>, Vec<bool>) = cells.iter().copied().unzip();
        let auc = roc_auc(&cell_scores, &cell_targets);
        let metrics = LabelMetrics {
            label: label.clone(),
            threshold,
            support: counts.tp + counts.fn_,
            negatives: counts.fp + counts.tn,
            precision: counts.precision(),
            recall: counts.recall(),
            f1: counts.f1(),
            roc_auc: auc,
        };
        if !cells.is_empty() {
            precisions.push(metrics.precision);
            recalls.push(metrics.recall);
            f1s.push(metrics.f1);
        }
        aucs.extend(auc);
        per_label.push(metrics);
    }

    let rows = targets
        .iter()
        .filter(|row| row.iter().any(Option::is_some))
        .count();
    Metrics {
        per_label,
        macro_precision: mean(&precisions).unwrap_or(0.0),
        macro_recall: mean(&recalls).unwrap_or(0.0),
        macro_f1: mean(&f1s).unwrap_or(0.0),
        micro_precision: pooled.precision(),
        micro_recall: pooled.recall(),
        micro_f1: pooled.f1(),
        macro_roc_auc: mean(&aucs),
        rows,
        pr_curves: Vec::new(),
        confusion_matrix: None,
    }
}

/// The F1-maximising threshold of each label on these rows (the validation split).
///
/// Candidates are the distinct unmasked, non-NaN scores, so `score >= t` reproduces the optimum
/// exactly; ties in F1 go to the higher threshold. A label with no unmasked positive (or whose
/// best F1 is 0, e.g. all positives scored NaN) keeps `default`. O(n log n) per label: one sort,
/// one sweep from the highest score down. Returns one threshold per column of `scores`; an empty
/// vector when there are no rows (the label count is then unknown).
///
/// # Panics
/// If `scores` and `targets` differ in shape or their rows differ in length.
pub fn tune_thresholds(
    scores: &[Vec<f32>],
    targets: &[Vec<Option<bool>>],
    default: f32,
) -> Vec<f32> {
    let Some(first) = scores.first() else {
        assert!(
            targets.is_empty(),
            "scores and targets must have the same number of rows"
        );
        return Vec::new();
    };
    let width = first.len();
    check_shape(scores, targets, width);
    (0..width)
        .map(|j| best_threshold(column(scores, targets, j), default))
        .collect()
}

fn best_threshold(mut cells: Vec<(f32, bool)>, default: f32) -> f32 {
    let positives = cells.iter().filter(|&&(_, target)| target).count();
    if positives == 0 {
        return default;
    }
    // Descending; NaN last. At the end of each group of equal scores, (tp, fp) are the counts
    // predicted positive by `score >= group score`.
    cells.sort_unstable_by(|a, b| cmp_score(b.0, a.0));
    // F1 = 2tp / (tp + fp + positives); compared exactly as fractions to keep ties exact.
    let mut best: Option<(f32, usize, usize)> = None; // (threshold, 2tp, denominator)
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < cells.len() {
        let score = cells[i].0;
        if score.is_nan() {
            break;
        }
        while i < cells.len() && cmp_score(cells[i].0, score) == Ordering::Equal {
            if cells[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let (num, den) = (2 * tp, tp + fp + positives);
        // Strictly better only: an equal F1 at a lower threshold loses to the earlier, higher one.
        let better = match best {
            None => true,
            Some((_, best_num, best_den)) => {
                (num as u128) * (best_den as u128) > (best_num as u128) * (den as u128)
            }
        };
        if better {
            best = Some((score, num, den));
        }
    }
    match best {
        Some((threshold, num, _)) if num > 0 => threshold,
        _ => default,
    }
}

/// ROC-AUC by the rank statistic (Mann–Whitney U), tied scores getting their average rank.
/// `None` if either class is absent. NaN scores rank below all others (they are never
/// predicted positive).
///
/// # Panics
/// If `scores` and `targets` differ in length.
pub fn roc_auc(scores: &[f32], targets: &[bool]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        targets.len(),
        "scores and targets must have the same length"
    );
    let positives = targets.iter().filter(|&&t| t).count();
    let negatives = targets.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| cmp_score(scores[a], scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    while start < order.len() {
        let score = scores[order[start]];
        let mut end = start;
        let mut group_positives = 0usize;
        while end < order.len() && cmp_score(scores[order[end]], score) == Ordering::Equal {
            group_positives += usize::from(targets[order[end]]);
            end += 1;
        }
        // Ranks start+1 ..= end, whose average is (start + 1 + end) / 2.
        rank_sum += group_positives as f64 * (start + 1 + end) as f64 / 2.0;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    let u = rank_sum - p * (p + 1.0) / 2.0;
    Some(u / (p * n))
}

#[cfg(test)]
mod tests;

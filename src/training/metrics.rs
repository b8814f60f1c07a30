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
mod tests {
    use super::*;

    const EPS: f64 = 1e-9;

    type Scores = Vec<Vec<f32>>;
    type Targets = Vec<Vec<Option<bool>>>;

    fn close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < EPS,
            "{what}: got {actual}, expected {expected}"
        );
    }

    fn labels() -> Vec<String> {
        ["spam", "urgent", "billing"].map(String::from).to_vec()
    }

    /// 12 rows × 3 labels with tied scores (also across classes), scores exactly at the
    /// thresholds (0.5, 0.4, 0.6), and masked cells.
    fn example() -> (Scores, Targets, Vec<f32>) {
        let scores = [
            [0.90, 0.10, 0.70],
            [0.80, 0.40, 0.20],
            [0.50, 0.35, 0.60],
            [0.50, 0.80, 0.60],
            [0.30, 0.40, 0.10],
            [0.70, 0.20, 0.90],
            [0.20, 0.90, 0.60],
            [0.60, 0.55, 0.30],
            [0.10, 0.40, 0.80],
            [0.40, 0.05, 0.45],
            [0.65, 0.70, 0.60],
            [0.05, 0.30, 0.15],
        ];
        const N: i8 = -1; // masked
        let targets: [[i8; 3]; 12] = [
            [1, 0, 1],
            [1, N, 0],
            [0, 1, 1],
            [1, 1, 0],
            [N, 0, 0],
            [1, 0, 1],
            [0, 1, N],
            [0, 1, 0],
            [N, 0, 1],
            [0, 0, 0],
            [0, N, 1],
            [0, 0, N],
        ];
        let scores = scores.iter().map(|r| r.to_vec()).collect();
        let targets = targets
            .iter()
            .map(|r| r.iter().map(|&t| (t >= 0).then_some(t == 1)).collect())
            .collect();
        (scores, targets, vec![0.5, 0.4, 0.6])
    }

    // Reference values from scikit-learn 1.9.1 (numpy float32 scores, y_pred = score >= threshold):
    // per label, on its unmasked rows only: precision_recall_fscore_support(average='binary',
    // zero_division=0) and roc_auc_score; macro = np.mean of those; micro = precision_score /
    // recall_score / f1_score(average='micro') on an indicator matrix whose first column holds all
    // unmasked cells pooled and whose second column is all negative (so it adds no TP/FP/FN).
    const SK_PRECISION: [f64; 3] = [0.5714285714285714, 0.6, 0.8333333333333334];
    const SK_RECALL: [f64; 3] = [1.0, 0.75, 1.0];
    const SK_F1: [f64; 3] = [0.7272727272727273, 0.6666666666666666, 0.9090909090909091];
    const SK_AUC: [f64; 3] = [0.8958333333333334, 0.9166666666666667, 0.9600000000000001];
    const SK_SUPPORT: [usize; 3] = [4, 4, 5];
    const SK_NEGATIVES: [usize; 3] = [6, 6, 5];
    const SK_MACRO_PRECISION: f64 = 0.6682539682539682;
    const SK_MACRO_RECALL: f64 = 0.9166666666666666;
    const SK_MACRO_F1: f64 = 0.7676767676767677;
    const SK_MACRO_AUC: f64 = 0.9241666666666667;
    const SK_MICRO_PRECISION: f64 = 0.6666666666666666;
    const SK_MICRO_RECALL: f64 = 0.9230769230769231;
    const SK_MICRO_F1: f64 = 0.7741935483870968;

    #[test]
    fn evaluate_matches_sklearn_with_masks_and_ties() {
        let (scores, targets, thresholds) = example();
        let m = evaluate(&labels(), &scores, &targets, &thresholds);
        assert_eq!(m.rows, 12);
        assert_eq!(m.per_label.len(), 3);
        for (j, l) in m.per_label.iter().enumerate() {
            assert_eq!(l.label, labels()[j]);
            assert_eq!(l.threshold, thresholds[j]);
            assert_eq!(l.support, SK_SUPPORT[j], "support of {j}");
            assert_eq!(l.negatives, SK_NEGATIVES[j], "negatives of {j}");
            close(l.precision, SK_PRECISION[j], "precision");
            close(l.recall, SK_RECALL[j], "recall");
            close(l.f1, SK_F1[j], "f1");
            close(l.roc_auc.unwrap(), SK_AUC[j], "roc_auc");
        }
        close(m.macro_precision, SK_MACRO_PRECISION, "macro precision");
        close(m.macro_recall, SK_MACRO_RECALL, "macro recall");
        close(m.macro_f1, SK_MACRO_F1, "macro f1");
        close(m.macro_roc_auc.unwrap(), SK_MACRO_AUC, "macro roc_auc");
        close(m.micro_precision, SK_MICRO_PRECISION, "micro precision");
        close(m.micro_recall, SK_MICRO_RECALL, "micro recall");
        close(m.micro_f1, SK_MICRO_F1, "micro f1");
    }

    /// The same scores with every cell annotated (masked cells filled in), so scikit-learn's
    /// multilabel averages apply directly.
    #[test]
    fn evaluate_matches_sklearn_multilabel_averages_without_masks() {
        let (scores, mut targets, thresholds) = example();
        for row in targets.iter_mut() {
            for cell in row.iter_mut() {
                cell.get_or_insert(false);
            }
        }
        targets[1][1] = Some(true);
        targets[6][2] = Some(true);
        let m = evaluate(&labels(), &scores, &targets, &thresholds);
        // scikit-learn 1.9.1: precision_score / recall_score / f1_score(Y, P, average='micro'|'macro'),
        // roc_auc_score(Y, S, average=None|'macro') with Y the 12×3 indicator matrix.
        close(m.micro_precision, 0.6666666666666666, "micro precision");
        close(m.micro_recall, 0.9333333333333333, "micro recall");
        close(m.micro_f1, 0.7777777777777778, "micro f1");
        close(m.macro_precision, 0.6666666666666666, "macro precision");
        close(m.macro_recall, 0.9333333333333332, "macro recall");
        close(m.macro_f1, 0.7723387723387724, "macro f1");
        close(
            m.macro_roc_auc.unwrap(),
            0.9029265873015873,
            "macro roc_auc",
        );
        let aucs = [0.921875, 0.8285714285714285, 0.9583333333333334];
        for (l, auc) in m.per_label.iter().zip(aucs) {
            close(l.roc_auc.unwrap(), auc, "roc_auc");
        }
    }

    #[test]
    fn masked_cells_are_ignored() {
        let (scores, targets, thresholds) = example();
        let base = evaluate(&labels(), &scores, &targets, &thresholds);
        // Changing the score of a masked cell, or adding a fully masked row, changes nothing.
        let mut scores2 = scores.clone();
        let mut targets2 = targets.clone();
        scores2[1][1] = 0.99; // masked
        scores2[4][0] = 0.0; // masked
        scores2.push(vec![1.0, 1.0, 1.0]);
        targets2.push(vec![None, None, None]);
        assert_eq!(evaluate(&labels(), &scores2, &targets2, &thresholds), base);
        // A label with no annotated row: zeros, no AUC, and left out of the macro means.
        let masked_label: Targets = targets
            .iter()
            .map(|r| vec![r[0], r[1], r[2], None])
            .collect();
        let wide_scores: Scores = scores.iter().map(|r| vec![r[0], r[1], r[2], 0.9]).collect();
        let mut four = labels();
        four.push("unused".into());
        let m = evaluate(&four, &wide_scores, &masked_label, &[0.5, 0.4, 0.6, 0.5]);
        let unused = &m.per_label[3];
        assert_eq!((unused.support, unused.negatives), (0, 0));
        assert_eq!(
            (unused.precision, unused.recall, unused.f1),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(unused.roc_auc, None);
        assert_eq!(m.macro_f1, base.macro_f1);
        assert_eq!(m.macro_precision, base.macro_precision);
        assert_eq!(m.macro_roc_auc, base.macro_roc_auc);
        assert_eq!(m.micro_f1, base.micro_f1);
    }

    #[test]
    fn score_equal_to_threshold_is_positive() {
        let labels = vec!["a".to_string()];
        let scores = vec![vec![0.7f32], vec![0.3]];
        let targets = vec![vec![Some(true)], vec![Some(false)]];
        let m = evaluate(&labels, &scores, &targets, &[0.7]);
        assert_eq!(
            (m.per_label[0].precision, m.per_label[0].recall),
            (1.0, 1.0)
        );
        // Just above the score: the positive is missed.
        let m = evaluate(&labels, &scores, &targets, &[0.7f32.next_up()]);
        assert_eq!(m.per_label[0].recall, 0.0);
        assert_eq!(m.per_label[0].precision, 0.0);
    }

    #[test]
    fn one_class_or_no_rows() {
        let labels = vec!["a".to_string()];
        let m = evaluate(
            &labels,
            &[vec![0.9], vec![0.1]],
            &[vec![Some(true)], vec![Some(true)]],
            &[0.5],
        );
        assert_eq!(m.per_label[0].roc_auc, None);
        assert_eq!(m.macro_roc_auc, None);
        close(m.per_label[0].recall, 0.5, "recall");
        let m = evaluate(&labels, &[], &[], &[0.5]);
        assert_eq!(m.rows, 0);
        assert_eq!((m.macro_f1, m.micro_f1), (0.0, 0.0));
        assert_eq!(m.macro_roc_auc, None);
        // Round-trips through JSON (it is stored with the run).
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }

    #[test]
    fn roc_auc_with_ties() {
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        // scikit-learn: roc_auc_score([0, 1, 1, 0, 1], [0.2, 0.2, 0.7, 0.7, 0.9]) == 0.6666666666666666
        close(
            roc_auc(
                &[0.2, 0.2, 0.7, 0.7, 0.9],
                &[false, true, true, false, true],
            )
            .unwrap(),
            0.6666666666666666,
            "tied auc",
        );
        assert_eq!(roc_auc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.1], &[false, true]), Some(0.0));
        assert_eq!(roc_auc(&[0.9, 0.1], &[true, true]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        // -0.0 and 0.0 are one score.
        assert_eq!(roc_auc(&[-0.0, 0.0], &[true, false]), Some(0.5));
    }

    /// Deterministic pseudo-random rows: scores on a 0.05 grid (many ties), ~15% masked.
    fn random_rows(n: usize, width: usize, seed: u64) -> (Scores, Targets) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut scores = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..n {
            let mut s = Vec::new();
            let mut t = Vec::new();
            for _ in 0..width {
                let score = (next() % 21) as f32 * 0.05;
                // Positives lean towards high scores so the optimum is not trivial.
                let positive = (next() % 100) as f32 / 100.0 < score * 0.8;
                let masked = next() % 100 < 15;
                s.push(score);
                t.push((!masked).then_some(positive));
            }
            scores.push(s);
            targets.push(t);
        }
        (scores, targets)
    }

    /// Brute force: every distinct unmasked score as a candidate, F1 by `evaluate`, ties to the
    /// higher threshold.
    fn brute_force(
        scores: &[Vec<f32>],
        targets: &[Vec<Option<bool>>],
        j: usize,
    ) -> Option<(f32, f64)> {
        let label = vec!["x".to_string()];
        let col_scores: Scores = scores.iter().map(|r| vec![r[j]]).collect();
        let col_targets: Targets = targets.iter().map(|r| vec![r[j]]).collect();
        let mut candidates: Vec<f32> = scores
            .iter()
            .zip(targets)
            .filter(|(_, t)| t[j].is_some())
            .map(|(s, _)| s[j])
            .collect();
        candidates.sort_by(|a, b| b.partial_cmp(a).unwrap());
        candidates.dedup();
        let mut best: Option<(f32, f64)> = None;
        for t in candidates {
            let f1 = evaluate(&label, &col_scores, &col_targets, &[t]).per_label[0].f1;
            if best.is_none_or(|(_, b)| f1 > b + 1e-12) {
                best = Some((t, f1));
            }
        }
        best
    }

    #[test]
    fn tune_thresholds_matches_brute_force() {
        for seed in 1..=20u64 {
            let (scores, targets) = random_rows(60, 4, seed);
            let tuned = tune_thresholds(&scores, &targets, 0.5);
            assert_eq!(tuned.len(), 4);
            for (j, &t) in tuned.iter().enumerate() {
                let (bt, bf1) = brute_force(&scores, &targets, j).unwrap();
                assert_eq!(t, bt, "seed {seed} label {j}");
                // Evaluating at the tuned threshold reproduces the optimum exactly.
                let m = evaluate(
                    &["x".to_string()],
                    &scores.iter().map(|r| vec![r[j]]).collect::<Vec<_>>(),
                    &targets.iter().map(|r| vec![r[j]]).collect::<Vec<_>>(),
                    &[t],
                );
                close(m.per_label[0].f1, bf1, "tuned f1");
            }
        }
    }

    #[test]
    fn tune_thresholds_on_the_example() {
        let (scores, targets, _) = example();
        let tuned = tune_thresholds(&scores, &targets, 0.5);
        for (j, &t) in tuned.iter().enumerate() {
            assert_eq!(t, brute_force(&scores, &targets, j).unwrap().0, "label {j}");
        }
        // spam: positives at 0.9, 0.8, 0.7, 0.5 (tied with a negative); 0.7 gives F1 6/7 and
        // nothing beats it, 0.5 gives 8/11.
        assert_eq!(tuned[0], 0.7);
    }

    #[test]
    fn tune_thresholds_ties_go_to_the_higher_threshold() {
        // t=0.9: tp=1, fp=0, F1=2/3; t=0.3: tp=2, fp=2, F1=2/3 as well (4/6). Higher wins.
        let scores = vec![vec![0.9f32], vec![0.6], vec![0.5], vec![0.3]];
        let targets = vec![
            vec![Some(true)],
            vec![Some(false)],
            vec![Some(false)],
            vec![Some(true)],
        ];
        assert_eq!(tune_thresholds(&scores, &targets, 0.5), vec![0.9]);
    }

    #[test]
    fn tune_thresholds_defaults() {
        // No unmasked positive (one label all negative, one label all masked): default.
        let scores = vec![vec![0.9f32, 0.8], vec![0.2, 0.1]];
        let targets = vec![vec![Some(false), None], vec![Some(false), None]];
        assert_eq!(tune_thresholds(&scores, &targets, 0.5), vec![0.5, 0.5]);
        // A masked positive with a high score is not a candidate.
        let scores = vec![vec![0.95f32], vec![0.4], vec![0.1]];
        let targets = vec![vec![None], vec![Some(true)], vec![Some(false)]];
        assert_eq!(tune_thresholds(&scores, &targets, 0.5), vec![0.4]);
        // Positives all scored NaN: no threshold helps.
        let scores = vec![vec![f32::NAN], vec![0.3]];
        let targets = vec![vec![Some(true)], vec![Some(false)]];
        assert_eq!(tune_thresholds(&scores, &targets, 0.5), vec![0.5]);
        assert!(tune_thresholds(&[], &[], 0.5).is_empty());
    }

    #[test]
    fn tune_thresholds_scales() {
        // 200k rows: quadratic would take minutes; one sort and a sweep takes milliseconds.
        let (scores, targets) = random_rows(200_000, 1, 7);
        let start = std::time::Instant::now();
        let tuned = tune_thresholds(&scores, &targets, 0.5);
        assert_eq!(tuned.len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}

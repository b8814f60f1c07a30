//! Tests of the metrics and threshold tuning, against hand-computed reference numbers.
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
fn brute_force(scores: &[Vec<f32>], targets: &[Vec<Option<bool>>], j: usize) -> Option<(f32, f64)> {
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

#[test]
fn pr_curve_points_are_the_counts_at_each_distinct_score() {
    // Scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.3 (neg), 0.1 (pos), NaN (pos).
    let labels = vec!["a".to_string()];
    let scores: Vec<Vec<f32>> = [0.9, 0.8, 0.8, 0.3, 0.1, f32::NAN]
        .iter()
        .map(|s| vec![*s])
        .collect();
    let targets: Vec<Vec<Option<bool>>> = [true, false, true, false, true, true]
        .iter()
        .map(|t| vec![Some(*t)])
        .collect();
    let curve = &pr_curves(&labels, &scores, &targets, &[0.8])[0];
    assert_eq!(curve.threshold, 0.8);
    let got: Vec<(f32, f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.threshold, p.precision, p.recall))
        .collect();
    assert_eq!(
        got,
        vec![
            (0.9, 1.0, 0.25),
            (0.8, 2.0 / 3.0, 0.5),
            (0.3, 0.5, 0.5),
            (0.1, 0.6, 0.75)
        ]
    );
    let none: Vec<Vec<Option<bool>>> = targets.iter().map(|_| vec![Some(false)]).collect();
    assert!(pr_curves(&labels, &scores, &none, &[0.5])[0]
        .points
        .is_empty());
}

#[test]
fn long_pr_curves_are_thinned_keeping_both_ends() {
    let labels = vec!["a".to_string()];
    let scores: Vec<Vec<f32>> = (0..1000).map(|i| vec![i as f32 / 1000.0]).collect();
    let targets: Vec<Vec<Option<bool>>> = (0..1000).map(|i| vec![Some(i % 2 == 0)]).collect();
    let points = &pr_curves(&labels, &scores, &targets, &[0.5])[0].points;
    assert_eq!(points.len(), PR_POINTS);
    assert_eq!(points[0].threshold, 0.999);
    assert_eq!(points[PR_POINTS - 1].threshold, 0.0);
    assert_eq!(points[PR_POINTS - 1].recall, 1.0);
}

#[test]
fn confusion_matrix_counts_annotated_against_most_probable() {
    let classes: Vec<String> = ["x", "y", "z"].iter().map(|c| c.to_string()).collect();
    let scores = vec![
        vec![0.7, 0.2, 0.1],
        vec![0.1, 0.8, 0.1],
        vec![0.5, 0.4, 0.1],
        vec![0.2, 0.2, 0.6],
        vec![0.3, 0.3, 0.4],
    ];
    let t = |i: usize| (0..3).map(|j| Some(j == i)).collect::<Vec<_>>();
    let targets = vec![t(0), t(1), t(1), t(2), vec![None, None, None]];
    let m = confusion_matrix(&classes, &scores, &targets);
    assert_eq!(m.counts, vec![vec![1, 0, 0], vec![1, 1, 0], vec![0, 0, 1]]);
}

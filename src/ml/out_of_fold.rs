//! Out-of-fold class probabilities for confident learning (the review queue's `suspect_label`):
//! a multinomial logistic regression on stored embeddings, trained K times on all folds but
//! one and predicting the held-out fold, so that no document is scored by a model that saw
//! its own (possibly wrong) label.
//!
//! Cost stays linear in the rows: each fold's model is fitted on the rows the caller marks
//! `in_fit` (a bounded sample on a large corpus) and every row of the held-out fold is then
//! predicted a batch at a time, so neither the fits nor the memory grow with the corpus
//! beyond the vectors themselves (which `VectorRows` may hold in a file).
//!
//! Deterministic: the weights start at zero, every step uses the whole fitting set (no
//! shuffle, no dropout) and nothing draws from libtorch's generator, so the same inputs give
//! the same probabilities on the same machine and thread count.
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::ml::vector_rows::VectorRows;

/// Full-batch Adam steps per fold.
pub const STEPS: usize = 300;
/// Adam's learning rate.
pub const LEARNING_RATE: f64 = 0.05;
/// Rows predicted per matrix product.
const PREDICT_BATCH: usize = 4_096;

/// What to fit: `rows[i]` is the vector (in `vectors`) of item i, which has a class in
/// `0..classes`, a fold in `0..folds`, and may be fitted on when `in_fit[i]`.
pub struct FoldInput<'a> {
    pub vectors: &'a VectorRows,
    pub rows: &'a [usize],
    pub classes: usize,
    pub targets: &'a [i64],
    pub fold_of: &'a [usize],
    pub in_fit: &'a [bool],
    pub folds: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("{0}")]
    Invalid(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("reading vectors: {0}")]
    Io(#[from] std::io::Error),
}

/// Sets the calling thread's intra-op thread count for the fits that follow on it.
pub fn set_threads(threads: i32) {
    tch::set_num_threads(threads.max(1));
}

/// Each item's class probabilities (`n × classes`, row-major) from the model trained on the
/// `in_fit` items of the other folds. The loss is the mean cross-entropy plus
/// `||W||² / (2m)` (m: the rows fitted on): the L2 penalty of scikit-learn's default
/// `LogisticRegression` (C = 1), the model cleanlab's examples use.
pub fn out_of_fold_probabilities(input: &FoldInput<'_>) -> Result<Vec<f32>, FoldError> {
    let n = input.targets.len();
    let dims = input.vectors.dims();
    if input.rows.len() != n || input.fold_of.len() != n || input.in_fit.len() != n {
        return Err(FoldError::Invalid(format!(
            "{} targets, {} rows, {} fold assignments and {} fit flags do not match",
            n,
            input.rows.len(),
            input.fold_of.len(),
            input.in_fit.len()
        )));
    }
    if let Some(r) = input.rows.iter().find(|r| **r >= input.vectors.len()) {
        return Err(FoldError::Invalid(format!(
            "row {r} of {} vectors",
            input.vectors.len()
        )));
    }
    if input.classes < 2
        || input
            .targets
            .iter()
            .any(|t| *t < 0 || *t as usize >= input.classes)
    {
        return Err(FoldError::Invalid(
            "targets must be classes 0..classes (>= 2)".into(),
        ));
    }
    let device = Device::Cpu;
    let matrix = |items: &[usize]| -> Result<Tensor, FoldError> {
        let rows: Vec<usize> = items.iter().map(|i| input.rows[*i]).collect();
        let flat = input.vectors.gather(&rows)?;
        Ok(Tensor::from_slice(&flat)
            .view([items.len() as i64, dims as i64])
            .to_device(device))
    };
    let mut out = vec![0f32; n * input.classes];
    for fold in 0..input.folds {
        let held: Vec<usize> = (0..n).filter(|i| input.fold_of[*i] == fold).collect();
        if held.is_empty() {
            continue;
        }
        let train: Vec<usize> = (0..n)
            .filter(|i| input.fold_of[*i] != fold && input.in_fit[*i])
            .collect();
        if train.is_empty() {
            return Err(FoldError::Invalid(format!(
                "fold {fold} leaves nothing to train on"
            )));
        }
        let xt = matrix(&train)?;
        let targets: Vec<i64> = train.iter().map(|i| input.targets[*i]).collect();
        let yt = Tensor::from_slice(&targets).to_device(device);

        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w = root.zeros("weight", &[dims as i64, input.classes as i64]);
        let b = root.zeros("bias", &[input.classes as i64]);
        let mut opt = nn::Adam::default().build(&vs, LEARNING_RATE)?;
        let l2 = 1.0 / (2.0 * train.len() as f64);
        for _ in 0..STEPS {
            let logits = xt.matmul(&w) + &b;
            let loss = logits.cross_entropy_for_logits(&yt) + w.square().sum(Kind::Float) * l2;
            opt.backward_step(&loss);
        }
        drop(xt);
        for batch in held.chunks(PREDICT_BATCH) {
            let xh = matrix(batch)?;
            let probs = tch::no_grad(|| (xh.matmul(&w) + &b).softmax(-1, Kind::Float));
            let probs: Vec<f32> = Vec::<f32>::try_from(probs.contiguous().view([-1]))?;
            for (k, i) in batch.iter().enumerate() {
                out[i * input.classes..(i + 1) * input.classes]
                    .copy_from_slice(&probs[k * input.classes..(k + 1) * input.classes]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable clusters with one row labelled against its cluster: out of fold, that
    /// row's given class gets a low probability; the others' a high one.
    #[test]
    fn a_row_labelled_against_its_cluster_gets_a_low_out_of_fold_probability() {
        let n = 40;
        let dims = 3;
        let mut features = Vec::new();
        let mut targets = Vec::new();
        for i in 0..n {
            let class = (i % 2) as i64;
            let sign = if class == 1 { 1.0 } else { -1.0 };
            let jitter = (i as f32 * 0.37).sin() * 0.1;
            features.extend([sign * 0.5 + jitter, 0.2 - jitter, sign * 0.3]);
            targets.push(class);
        }
        targets[7] = 0; // row 7 sits in class 1's cluster
        let fold_of: Vec<usize> = (0..n).map(|i| (i / 2) % 5).collect();
        let vectors = VectorRows::from_flat(dims, features);
        let rows: Vec<usize> = (0..n).collect();
        let in_fit = vec![true; n];
        let input = FoldInput {
            vectors: &vectors,
            rows: &rows,
            classes: 2,
            targets: &targets,
            fold_of: &fold_of,
            in_fit: &in_fit,
            folds: 5,
        };
        let p = out_of_fold_probabilities(&input).unwrap();
        let given = |i: usize| p[i * 2 + targets[i] as usize];
        assert!(given(7) < 0.2, "flipped row: {}", given(7));
        for i in (0..n).filter(|i| *i != 7) {
            assert!(given(i) > 0.5, "row {i}: {}", given(i));
        }
        for row in p.chunks(2) {
            assert!((row[0] + row[1] - 1.0).abs() < 1e-5);
        }
        // Deterministic.
        assert_eq!(p, out_of_fold_probabilities(&input).unwrap());
    }
}

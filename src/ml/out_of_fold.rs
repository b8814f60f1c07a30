//! Out-of-fold class probabilities for confident learning (the review queue's `suspect_label`):
//! a multinomial logistic regression on stored embeddings, trained K times on all folds but
//! one and predicting the held-out fold, so that no document is scored by a model that saw
//! its own (possibly wrong) label.
//!
//! Deterministic: the weights start at zero, every step uses the whole training set (no
//! shuffle, no dropout) and nothing draws from libtorch's generator, so the same inputs give
//! the same probabilities on the same machine and thread count.
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Full-batch Adam steps per fold.
pub const STEPS: usize = 300;
/// Adam's learning rate.
pub const LEARNING_RATE: f64 = 0.05;

/// What to fit: `n` rows of `dims` floats (row-major), each with a class in `0..classes` and a
/// fold in `0..folds`.
pub struct FoldInput<'a> {
    pub dims: usize,
    pub features: &'a [f32],
    pub classes: usize,
    pub targets: &'a [i64],
    pub fold_of: &'a [usize],
    pub folds: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("{0}")]
    Invalid(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Sets the calling thread's intra-op thread count for the fits that follow on it.
pub fn set_threads(threads: i32) {
    tch::set_num_threads(threads.max(1));
}

/// Each row's class probabilities (`n × classes`, row-major) from the model trained on the
/// other folds. The loss is the mean cross-entropy plus `||W||² / (2n)`: the L2 penalty of
/// scikit-learn's default `LogisticRegression` (C = 1), the model cleanlab's examples use.
pub fn out_of_fold_probabilities(input: &FoldInput<'_>) -> Result<Vec<f32>, FoldError> {
    let n = input.targets.len();
    if input.features.len() != n * input.dims || input.fold_of.len() != n {
        return Err(FoldError::Invalid(format!(
            "{} targets, {} fold assignments and {} floats for {} dimensions do not match",
            n,
            input.fold_of.len(),
            input.features.len(),
            input.dims
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
    let x = Tensor::from_slice(input.features)
        .view([n as i64, input.dims as i64])
        .to_device(device);
    let y = Tensor::from_slice(input.targets).to_device(device);
    let mut out = vec![0f32; n * input.classes];
    for fold in 0..input.folds {
        let held: Vec<i64> = (0..n)
            .filter(|i| input.fold_of[*i] == fold)
            .map(|i| i as i64)
            .collect();
        if held.is_empty() {
            continue;
        }
        let train: Vec<i64> = (0..n)
            .filter(|i| input.fold_of[*i] != fold)
            .map(|i| i as i64)
            .collect();
        if train.is_empty() {
            return Err(FoldError::Invalid(format!(
                "fold {fold} leaves nothing to train on"
            )));
        }
        let train_idx = Tensor::from_slice(&train).to_device(device);
        let held_idx = Tensor::from_slice(&held).to_device(device);
        let (xt, yt) = (x.index_select(0, &train_idx), y.index_select(0, &train_idx));
        let xh = x.index_select(0, &held_idx);

        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w = root.zeros("weight", &[input.dims as i64, input.classes as i64]);
        let b = root.zeros("bias", &[input.classes as i64]);
        let mut opt = nn::Adam::default().build(&vs, LEARNING_RATE)?;
        let l2 = 1.0 / (2.0 * train.len() as f64);
        for _ in 0..STEPS {
            let logits = xt.matmul(&w) + &b;
            let loss = logits.cross_entropy_for_logits(&yt) + w.square().sum(Kind::Float) * l2;
            opt.backward_step(&loss);
        }
        let probs = tch::no_grad(|| (xh.matmul(&w) + &b).softmax(-1, Kind::Float));
        let probs: Vec<f32> = Vec::<f32>::try_from(probs.contiguous().view([-1]))?;
        for (row, i) in held.iter().enumerate() {
            let i = *i as usize;
            out[i * input.classes..(i + 1) * input.classes]
                .copy_from_slice(&probs[row * input.classes..(row + 1) * input.classes]);
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
        let input = FoldInput {
            dims,
            features: &features,
            classes: 2,
            targets: &targets,
            fold_of: &fold_of,
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

//! AdamW with decoupled weight decay (none on biases and norms), updated in place without
//! allocating, with a state that serializes into checkpoints so that a resumed run continues
//! exactly.
use std::collections::HashMap;

use tch::Tensor;

/// AdamW (decoupled weight decay) whose state can be saved and restored exactly, so a resumed
/// run continues as if it had never stopped. Biases and LayerNorm weights get no decay.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    lr_group: Vec<usize>,
    /// Flat buffer for g² and then the update's denominator, grown to the largest parameter on
    /// first use.
    scratch: Tensor,
    pub step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// `group_of(name)` picks the learning-rate group (index into the lrs given to `step`).
    pub fn new(
        params: Vec<(String, Tensor)>,
        weight_decay: f64,
        group_of: impl Fn(&str) -> usize,
    ) -> AdamW {
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let lr_group = params.iter().map(|(n, _)| group_of(n)).collect();
        AdamW {
            params,
            m,
            v,
            lr_group,
            scratch: Tensor::new(),
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Zeroes the gradients that autograd accumulates into. Zeroing (not dropping them, as
    /// PyTorch's `set_to_none` does) keeps one gradient buffer per parameter for the whole
    /// run, so the micro-batches of an accumulated step add into it in place.
    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// The parameters' gradients (undefined tensors for parameters that got none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).collect()
    }

    /// Scales gradients so that their global L2 norm is at most `max`; returns the norm.
    pub fn clip_grad_norm(&self, max: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(|g| g.defined())
                .collect();
            if grads.is_empty() {
                return 0.0;
            }
            // One norm per gradient (no full-size temporaries), then the norm of the norms.
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let norm = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if max > 0.0 && norm > max {
                let scale = max / (norm + 1e-6);
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
            norm
        })
    }

    /// One AdamW step, in place: PyTorch's single-tensor AdamW update in eight elementwise
    /// passes per parameter and no allocation (g² and the denominator go to a scratch buffer the
    /// size of the largest parameter, kept across steps). The gradients stay as they were.
    pub fn step(&mut self, lrs: &[f64]) {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for (i, (name, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lrs[self.lr_group[i].min(lrs.len() - 1)];
                if self.weight_decay > 0.0 && !no_decay(name) {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // m = b1 m + (1 - b1) g
                let _ = self.m[i].lerp_(&g, 1.0 - self.beta1);
                // v = b2 v + (1 - b2) g², g² in the scratch buffer
                let buffer = scratch_like(&mut self.scratch, p);
                let _ = g.mul_out(&buffer, &g);
                let _ = self.v[i].lerp_(&buffer, 1.0 - self.beta2);
                if lr == 0.0 {
                    continue;
                }
                // p -= lr / bias1 · m / (sqrt(v) / sqrt(bias2) + eps), as p += m / d with
                // d = sqrt(v) · (-bias1 / (lr · sqrt(bias2))) - eps · bias1 / lr.
                let _ = self.v[i].sqrt_out(&buffer);
                let mut denom = buffer;
                let _ = denom.g_mul_scalar_(-bias1 / (lr * bias2_sqrt));
                let _ = denom.g_add_scalar_(-self.eps * bias1 / lr);
                let _ = p.addcdiv_(&self.m[i], &denom);
            }
        });
    }

    /// Moments and step, named after the parameters.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2 + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adamw.m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("adamw.v.{name}"), self.v[i].shallow_clone()));
        }
        out.push(("adamw.step".into(), Tensor::from_slice(&[self.step])));
        out
    }

    pub fn restore(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let by_name: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                let (Some(m), Some(v)) = (
                    by_name.get(format!("adamw.m.{name}").as_str()),
                    by_name.get(format!("adamw.v.{name}").as_str()),
                ) else {
                    anyhow::bail!("checkpoint lacks optimizer state for `{name}`");
                };
                self.m[i].copy_(m);
                self.v[i].copy_(v);
            }
            Ok(())
        })?;
        let step = by_name
            .get("adamw.step")
            .ok_or_else(|| anyhow::anyhow!("checkpoint lacks the optimizer step"))?;
        self.step = step.int64_value(&[0]);
        Ok(())
    }
}

/// A view of `scratch` with `p`'s shape, dtype and device; the buffer is replaced when it is too
/// small or of another dtype or device.
fn scratch_like(scratch: &mut Tensor, p: &Tensor) -> Tensor {
    let numel = p.numel() as i64;
    let same_kind =
        scratch.defined() && scratch.kind() == p.kind() && scratch.device() == p.device();
    if !same_kind || (scratch.numel() as i64) < numel {
        let size = if same_kind {
            numel.max(scratch.numel() as i64)
        } else {
            numel
        };
        *scratch = Tensor::empty([size], (p.kind(), p.device()));
    }
    scratch.narrow(0, 0, numel).view(p.size().as_slice())
}

fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("norm")
}

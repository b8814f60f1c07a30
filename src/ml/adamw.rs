//! AdamW with decoupled weight decay (none on biases and norms), updated in place, with a
//! state that serializes into checkpoints so that a resumed run continues exactly. It owns the
//! step's gradients: `backward` captures them as fresh tensors (PyTorch's
//! `zero_grad(set_to_none=True)`), so no step zeroes or adds into a standing gradient buffer.
use std::collections::HashMap;

use tch::Tensor;

/// AdamW (decoupled weight decay) whose state can be saved and restored exactly, so a resumed
/// run continues as if it had never stopped. Biases and LayerNorm weights get no decay.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    /// The step's gradients, one per parameter; undefined until a `backward` reaches it.
    grads: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    lr_group: Vec<usize>,
    /// Flat buffer for the update's denominator, grown to the largest parameter on first use.
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
        let grads = params.iter().map(|_| Tensor::new()).collect();
        AdamW {
            params,
            grads,
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

    /// Forgets the step's gradients (the next `backward` starts from none).
    pub fn zero_grad(&mut self) {
        for g in self.grads.iter_mut() {
            *g = Tensor::new();
        }
    }

    /// Backpropagates `loss` to the parameters and adds its gradients to the step's. The first
    /// backward of a step keeps autograd's own result tensors; later ones (micro-batches) add
    /// into them. Nothing accumulates into the parameters' `.grad`, so there is no buffer to
    /// zero and no extra read-modify-write pass over every gradient per step.
    pub fn backward(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let fresh = Tensor::run_backward(&[loss], &inputs, false, false);
        tch::no_grad(|| {
            // A captured gradient may be a broadcast view (the gradient of a sum) or the same
            // tensor as another parameter's (the two sides of an addition): those are copied, as
            // PyTorch's AccumulateGrad does, so that every held gradient owns its memory.
            let mut owned = std::collections::HashSet::new();
            for (held, new) in self.grads.iter_mut().zip(fresh) {
                if !new.defined() {
                    continue;
                }
                if held.defined() {
                    let _ = held.g_add_(&new);
                } else {
                    let new = if !new.is_contiguous() {
                        new.contiguous()
                    } else if owned.contains(&(new.data_ptr() as usize)) {
                        new.copy()
                    } else {
                        new
                    };
                    owned.insert(new.data_ptr() as usize);
                    *held = new;
                }
            }
        });
    }

    /// The step's gradients (undefined tensors for parameters that got none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.grads.iter().map(Tensor::shallow_clone).collect()
    }

    /// The step's gradients by parameter name, for parameters that got one.
    pub fn named_grads(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.grads)
            .filter(|(_, g)| g.defined())
            .map(|((name, _), g)| (name.clone(), g.shallow_clone()))
            .collect()
    }

    /// Scales gradients so that their global L2 norm is at most `max`; returns the norm.
    pub fn clip_grad_norm(&self, max: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<&Tensor> = self.grads.iter().filter(|g| g.defined()).collect();
            if grads.is_empty() {
                return 0.0;
            }
            // One norm per gradient (no full-size temporaries), then the norm of the norms.
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let norm = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if max > 0.0 && norm > max {
                let scale = max / (norm + 1e-6);
                for g in grads {
                    let _ = g.shallow_clone().g_mul_scalar_(scale);
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
                let g = &self.grads[i];
                if !g.defined() {
                    continue;
                }
                let lr = lrs[self.lr_group[i].min(lrs.len() - 1)];
                if self.weight_decay > 0.0 && !no_decay(name) {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // m = b1 m + (1 - b1) g
                let _ = self.m[i].lerp_(g, 1.0 - self.beta1);
                // v = b2 v + (1 - b2) g², g² in the scratch buffer
                let buffer = scratch_like(&mut self.scratch, p);
                let _ = g.mul_out(&buffer, g);
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
    let fits = scratch.defined()
        && scratch.numel() as i64 >= numel
        && scratch.kind() == p.kind()
        && scratch.device() == p.device();
    if !fits {
        let size =
            if scratch.defined() && scratch.kind() == p.kind() && scratch.device() == p.device() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Autograd hands both sides of an addition the same gradient tensor, and a parameter that
    /// is only summed gets a broadcast view; each held gradient must still be its own, so that
    /// clipping scales each once and micro-batches add up.
    #[test]
    fn captured_gradients_are_owned_and_add_up() {
        let a = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let c = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = vec![
            ("a".to_string(), a.shallow_clone()),
            ("b".to_string(), b.shallow_clone()),
            ("c".to_string(), c.shallow_clone()),
        ];
        let mut opt = AdamW::new(params, 0.0, |_| 0);
        // Two micro-batches: grads add (a, b: 1 + 2 each; c: 1 + 2 each).
        for weight in [1.0, 2.0] {
            let loss = ((&a + &b).sum(Kind::Float) + c.sum(Kind::Float)) * weight;
            opt.backward(&loss);
        }
        let values = |t: &Tensor| Vec::<f32>::try_from(t.view([-1])).unwrap();
        for g in opt.grads() {
            assert!(values(&g).iter().all(|&x| x == 3.0), "{:?}", values(&g));
        }
        // Norm sqrt(10 * 9); clipped to 1, every element becomes 3 / sqrt(90), once.
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 90f64.sqrt()).abs() < 1e-5, "{norm}");
        let want = 3.0 / 90f32.sqrt();
        for g in opt.grads() {
            assert!(
                values(&g).iter().all(|&x| (x - want).abs() < 1e-6),
                "{:?}",
                values(&g)
            );
        }
        // One backward: the first capture of a + b is shared by autograd and must be copied.
        opt.zero_grad();
        assert!(opt.grads().iter().all(|g| !g.defined()));
        opt.backward(&(&a + &b).sum(Kind::Float));
        opt.clip_grad_norm(0.5);
        let grads = opt.grads();
        assert!(!grads[2].defined(), "c took no part");
        for g in &grads[..2] {
            let want = 0.5 / 6f32.sqrt();
            assert!(
                values(g).iter().all(|&x| (x - want).abs() < 1e-6),
                "{:?}",
                values(g)
            );
        }
        assert_ne!(grads[0].data_ptr(), grads[1].data_ptr());
    }
}

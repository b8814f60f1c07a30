//! Mixed precision: `precision = fp32 | bf16 | fp16` runs forward passes under libtorch's autocast
//! (matmuls, linear layers and scaled dot-product attention in the half type, the ops on
//! libtorch's fp32 list for that device in fp32, the loss in fp32, weights and optimizer state
//! in fp32), and `fp16` scales the loss so that
//! small gradients survive the half type, as PyTorch's `torch.autocast` + `GradScaler` do.
//!
//! tch 0.24 only switches CUDA autocast on and off, always in fp16; the device-typed calls of
//! libtorch (`at::autocast::set_autocast_enabled(DeviceType, bool)`,
//! `set_autocast_dtype(DeviceType, ScalarType)`, exported by `libtorch_cpu` since PyTorch 2.4)
//! are declared here by their C++ names, so bf16 works, and CPU autocast too (which is how the
//! tests check the path on a machine without a GPU).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The number type a training run computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in fp32 (the default).
    #[default]
    Fp32,
    /// bfloat16 autocast: fp32's range, no loss scaling needed.
    Bf16,
    /// float16 autocast with dynamic loss scaling.
    Fp16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The half type autocast computes in; None for fp32.
    fn half(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }
}

// c10::DeviceType and c10::ScalarType are `enum class : int8_t`.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;

#[link(name = "torch_cpu")]
extern "C" {
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device: i8) -> i8;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn at_increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn at_decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_clear_cache();
}

fn scalar_type(kind: Kind) -> i8 {
    // c10::ScalarType's values (c10/core/ScalarType.h); the two autocast can use.
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        other => unreachable!("autocast to {other:?}"),
    }
}

/// Runs `f` under autocast to `precision`'s half type on `device`; fp32 runs it as is. Restores
/// the previous autocast state (of this thread) afterwards, so calls nest.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    let Some(half) = precision.half() else {
        return f();
    };
    let device_type = match device {
        Device::Cuda(_) => DEVICE_CUDA,
        _ => DEVICE_CPU,
    };
    // Safety: plain calls into libtorch's thread-local autocast state; the arguments are valid
    // enum values and the previous state is put back before returning.
    let (was_enabled, was_dtype) = unsafe {
        let previous = (
            at_is_autocast_enabled(device_type),
            at_get_autocast_dtype(device_type),
        );
        at_set_autocast_dtype(device_type, scalar_type(half));
        at_set_autocast_enabled(device_type, true);
        at_increment_nesting();
        previous
    };
    struct Restore(i8, bool, i8);
    impl Drop for Restore {
        fn drop(&mut self) {
            unsafe {
                if at_decrement_nesting() == 0 {
                    at_clear_cache();
                }
                at_set_autocast_enabled(self.0, self.1);
                at_set_autocast_dtype(self.0, self.2);
            }
        }
    }
    let _restore = Restore(device_type, was_enabled, was_dtype);
    f()
}

/// Dynamic loss scaling for fp16 (PyTorch's `GradScaler` defaults: start at 2^16, halve and
/// skip the step when a gradient is inf or NaN, double after 2,000 clean steps in a row).
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(65536.0, 2000)
    }
}

impl LossScaler {
    pub fn new(scale: f64, growth_interval: u32) -> LossScaler {
        LossScaler {
            scale,
            clean_steps: 0,
            growth_interval,
        }
    }

    /// Divides every gradient by the scale; true when all of them are finite (the step may run).
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        tch::no_grad(|| {
            let inverse = 1.0 / self.scale;
            let mut bad = Vec::with_capacity(grads.len());
            for g in grads.iter().filter(|g| g.defined()) {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(inverse);
                bad.push(g.isfinite().logical_not().any());
            }
            bad.is_empty() || Tensor::stack(&bad, 0).any().int64_value(&[]) == 0
        })
    }

    /// After a step: backs off on overflow, grows after `growth_interval` clean steps.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.clean_steps = 0;
        }
    }

    /// The scale and counter as checkpoint tensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("amp.scale".into(), Tensor::from_slice(&[self.scale])),
            (
                "amp.clean_steps".into(),
                Tensor::from_slice(&[self.clean_steps as i64]),
            ),
        ]
    }

    pub fn restore(&mut self, state: &[(String, Tensor)]) {
        for (name, t) in state {
            match name.as_str() {
                "amp.scale" => self.scale = t.double_value(&[0]),
                "amp.clean_steps" => self.clean_steps = t.int64_value(&[0]) as u32,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_computes_matmuls_in_the_half_type_and_restores_fp32() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        for (precision, kind) in [
            (Precision::Fp32, Kind::Float),
            (Precision::Bf16, Kind::BFloat16),
            (Precision::Fp16, Kind::Half),
        ] {
            let inside = autocast(precision, Device::Cpu, || a.matmul(&a));
            assert_eq!(inside.kind(), kind, "{precision:?}");
            // Nested calls put back the outer state.
            let nested = autocast(precision, Device::Cpu, || {
                autocast(Precision::Bf16, Device::Cpu, || ());
                a.matmul(&a).kind()
            });
            assert_eq!(nested, kind, "{precision:?} after a nested bf16 region");
            assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast left on");
        }
    }

    #[test]
    fn loss_scaler_skips_overflowing_steps_and_grows_after_clean_ones() {
        let mut scaler = LossScaler::new(1024.0, 3);
        let g = Tensor::from_slice(&[2048.0f32, -512.0]);
        assert!(scaler.unscale(&[g.shallow_clone()]));
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![2.0, -0.5]);
        let inf = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        let nan = Tensor::from_slice(&[f32::NAN]);
        assert!(!scaler.unscale(&[g.shallow_clone(), inf]));
        assert!(!scaler.unscale(&[nan]));
        scaler.update(false);
        assert_eq!(scaler.scale, 512.0);
        for _ in 0..2 {
            scaler.update(true);
        }
        assert_eq!(scaler.scale, 512.0);
        scaler.update(true);
        assert_eq!((scaler.scale, scaler.clean_steps), (1024.0, 0));
        let mut restored = LossScaler::default();
        scaler.update(true);
        restored.restore(&scaler.state());
        assert_eq!(restored.scale, 1024.0);
        assert_eq!(restored.clean_steps, 1);
    }
}

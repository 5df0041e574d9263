//! A tiny model of each architecture memorizes one fixed batch: the forward and backward passes
//! are consistent enough for plain Adam to drive the loss to near zero.

use super::model_support;

use model_support::make_batch;
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::Backend;
use redpack_trainer::batch::StepOptions;
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;

/// Plain Adam (bias-corrected), enough for this test; the trainer's optimizer is Adafactor.
struct Adam {
    m: ParamStore,
    v: ParamStore,
    t: i32,
}

impl Adam {
    fn step(&mut self, params: &mut ParamStore, grads: &ParamStore, lr: f32, scale: f32) {
        self.t += 1;
        let (b1, b2) = (0.9f32, 0.98f32);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        for (ti, p) in params.tensors.iter_mut().enumerate() {
            let (m, v, g) = (
                &mut self.m.tensors[ti].data,
                &mut self.v.tensors[ti].data,
                &grads.tensors[ti].data,
            );
            for i in 0..p.data.len() {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p.data[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
            }
        }
    }
}

fn overfit(arch: Arch) -> (f64, f64) {
    let mut config = ModelConfig::preset(arch, "tiny", 32).unwrap();
    config.d_model = 32;
    config.d_ffn = 64;
    config.head_dim = 16;
    let mut rng = SplitMix64::new(7);
    let batch = make_batch(&mut rng, config.vocab_size, 16, &[(16, 8), (12, 6)], 0);
    let options = StepOptions {
        z_loss: 1e-4,
        loss_on_prefix: arch == Arch::Dec,
        ..StepOptions::default()
    };
    let mut params = ParamStore::init(&config, 3);
    let mut grads = params.zeros_like();
    let mut adam = Adam {
        m: params.zeros_like(),
        v: params.zeros_like(),
        t: 0,
    };
    let mut backend = CpuBackend::new(Some(2)).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..150 {
        grads.fill_zero();
        let stats = backend
            .forward_backward(&config, &params, &batch, &options, &mut grads)
            .unwrap();
        let mean = stats.loss_sum / stats.tokens as f64;
        first.get_or_insert(mean);
        last = mean;
        adam.step(&mut params, &grads, 1e-2, 1.0 / stats.tokens as f32);
    }
    (first.unwrap_or(f64::NAN), last)
}

#[test]
fn tiny_decllm_overfits_one_batch() {
    let (first, last) = overfit(Arch::Dec);
    println!("DecLLM: loss {first:.3} -> {last:.4}");
    assert!(
        (first - 32f64.ln()).abs() < 0.3,
        "initial loss {first} should be near ln(32)"
    );
    assert!(last < 0.05, "final loss {last}");
}

#[test]
fn tiny_redllm_overfits_one_batch() {
    let (first, last) = overfit(Arch::Red);
    println!("RedLLM: loss {first:.3} -> {last:.4}");
    assert!(
        (first - 32f64.ln()).abs() < 0.3,
        "initial loss {first} should be near ln(32)"
    );
    assert!(last < 0.05, "final loss {last}");
}

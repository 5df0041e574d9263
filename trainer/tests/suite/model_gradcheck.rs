//! Whole-model finite-difference checks: every parameter tensor of a small DecLLM and RedLLM,
//! under each objective and mask option, probed on its largest and on random gradient entries.

use super::model_support;

use model_support::{check_gradient, make_batch, micro_config, probe_indices};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::Backend;
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;

fn check_model(config: &ModelConfig, batch: &Batch, options: &StepOptions, seed: u64) {
    let mut backend = CpuBackend::new(Some(2)).unwrap();
    let params = ParamStore::init(config, seed);
    let mut grads = params.zeros_like();
    let stats = backend
        .forward_backward(config, &params, batch, options, &mut grads)
        .unwrap();
    assert!(stats.tokens > 0);
    // forward_loss computes the same losses as forward_backward.
    let eval = backend
        .forward_loss(config, &params, batch, options)
        .unwrap();
    assert_eq!(eval, stats);
    let mut rng = SplitMix64::new(seed + 100);
    for (ti, name) in params.names.iter().enumerate() {
        let grad = &grads.tensors[ti].data;
        assert!(
            grad.iter().all(|g| g.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(
            grad.iter().any(|&g| g != 0.0),
            "{name}: gradient is all zero"
        );
        let indices = probe_indices(grad, 3, &mut rng);
        let mut probe = params.clone();
        // Step 2e-3: the per-head norms over 4 values curve enough that 1e-2 leaves a 10%
        // truncation error; f32 rounding of the summed loss stays well below the tolerance.
        // (Checked: swapping RoPE's backward rotation for the forward one fails every case.)
        check_gradient(
            name,
            &params.tensors[ti].data,
            grad,
            Some(&indices),
            2e-3,
            2e-2,
            2e-3,
            |x| {
                probe.tensors[ti].data.copy_from_slice(x);
                let s = backend
                    .forward_loss(config, &probe, batch, options)
                    .unwrap();
                s.loss_sum + s.z_loss_sum
            },
        );
    }
}

#[test]
fn decllm_causal_lm_gradients_match_finite_differences() {
    let config = micro_config(Arch::Dec);
    let mut rng = SplitMix64::new(1);
    let batch = make_batch(&mut rng, config.vocab_size, 9, &[(9, 4), (6, 3), (4, 2)], 0);
    let options = StepOptions {
        z_loss: 1e-2,
        loss_on_prefix: true,
        ..StepOptions::default()
    };
    check_model(&config, &batch, &options, 11);
}

#[test]
fn decllm_bidirectional_prefix_with_resets_gradients_match_finite_differences() {
    let config = micro_config(Arch::Dec);
    let mut rng = SplitMix64::new(2);
    let mut batch = make_batch(&mut rng, config.vocab_size, 10, &[(10, 4), (7, 5)], 1);
    batch.doc_starts = vec![vec![6], vec![2]];
    let options = StepOptions {
        z_loss: 1e-2,
        bidirectional_prefix: true,
        reset_at_doc_boundaries: true,
        ..StepOptions::default()
    };
    check_model(&config, &batch, &options, 12);
}

#[test]
fn redllm_prefix_lm_gradients_match_finite_differences() {
    let config = micro_config(Arch::Red);
    let mut rng = SplitMix64::new(3);
    let batch = make_batch(&mut rng, config.vocab_size, 9, &[(9, 4), (6, 3), (5, 1)], 0);
    let options = StepOptions {
        z_loss: 1e-2,
        ..StepOptions::default()
    };
    check_model(&config, &batch, &options, 13);
}

#[test]
fn redllm_with_resets_gradients_match_finite_differences() {
    let config = micro_config(Arch::Red);
    let mut rng = SplitMix64::new(4);
    let mut batch = make_batch(&mut rng, config.vocab_size, 10, &[(10, 5), (8, 3)], 2);
    batch.doc_starts = vec![vec![3, 7], vec![5]];
    let options = StepOptions {
        reset_at_doc_boundaries: true,
        ..StepOptions::default()
    };
    check_model(&config, &batch, &options, 14);
}

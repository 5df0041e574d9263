//! What each prediction may see: causal targets, the bidirectional encoder, DecLLM + BiAttn,
//! padding, other rows and document resets. Checked on per-token losses of small models: a token
//! a prediction must not see leaves that prediction's loss bitwise unchanged.

use super::model_support;

use model_support::{make_batch, micro_config};
use redpack_trainer::backend::cpu::attention::{attention_forward, AttnShape};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::backend::Backend;
use redpack_trainer::batch::{Batch, StepOptions};
use redpack_trainer::config::{Arch, ModelConfig};
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;

fn losses(
    config: &ModelConfig,
    params: &ParamStore,
    batch: &Batch,
    options: &StepOptions,
) -> Vec<Vec<f64>> {
    CpuBackend::new(Some(1))
        .unwrap()
        .token_losses(config, params, batch, options)
        .unwrap()
}

/// `batch` with token `index` of row `row` replaced by another id.
fn with_token_changed(batch: &Batch, row: usize, index: usize, vocab: usize) -> Batch {
    let mut b = batch.clone();
    let at = row * b.seq + index;
    b.tokens[at] = (b.tokens[at] + 1) % vocab as u32;
    b
}

#[test]
fn decllm_prediction_never_sees_a_later_token() {
    let config = micro_config(Arch::Dec);
    let params = ParamStore::init(&config, 1);
    let mut rng = SplitMix64::new(1);
    let batch = make_batch(&mut rng, config.vocab_size, 10, &[(10, 3)], 0);
    let options = StepOptions {
        loss_on_prefix: true,
        ..StepOptions::default()
    };
    let base = losses(&config, &params, &batch, &options);
    // Targets are tokens 1..10: entry i of the row predicts token i + 1.
    for j in 1..10 {
        let changed = losses(
            &config,
            &params,
            &with_token_changed(&batch, 0, j, config.vocab_size),
            &options,
        );
        for i in 0..9 {
            let target = i + 1;
            if target < j {
                assert_eq!(
                    changed[0][i], base[0][i],
                    "token {j} changed the prediction of {target}"
                );
            } else if target > j {
                assert_ne!(
                    changed[0][i], base[0][i],
                    "token {j} should reach the prediction of {target}"
                );
            }
        }
    }
}

#[test]
fn redllm_decoder_never_sees_a_later_target_and_always_sees_the_whole_input() {
    let config = micro_config(Arch::Red);
    let params = ParamStore::init(&config, 2);
    let mut rng = SplitMix64::new(2);
    let (n, k) = (10, 4);
    let batch = make_batch(&mut rng, config.vocab_size, n, &[(n, k)], 0);
    let options = StepOptions::default();
    let base = losses(&config, &params, &batch, &options);
    assert_eq!(base[0].len(), n - k);
    for j in 0..n {
        let changed = losses(
            &config,
            &params,
            &with_token_changed(&batch, 0, j, config.vocab_size),
            &options,
        );
        for (i, (&c, &b)) in changed[0].iter().zip(&base[0]).enumerate() {
            let target = k + i;
            if j < k - 1 {
                // Reaches the decoder only through the bidirectional encoder: every prediction,
                // the first target's included.
                assert_ne!(
                    c, b,
                    "input token {j} should reach the prediction of {target}"
                );
            } else if target < j {
                assert_eq!(c, b, "token {j} changed the prediction of {target}");
            } else if target > j {
                assert_ne!(c, b, "token {j} should reach the prediction of {target}");
            }
        }
    }
}

#[test]
fn encoder_attention_sees_every_input_and_causal_attention_does_not() {
    let shape = AttnShape {
        n_heads: 1,
        head_dim: 4,
    };
    let mut rng = SplitMix64::new(3);
    let q = model_support::randn(&mut rng, 5 * 4, 1.0);
    let k = model_support::randn(&mut rng, 5 * 4, 1.0);
    let v = model_support::randn(&mut rng, 5 * 4, 1.0);
    let row = |causal, bidirectional_prefix| AttnRow {
        q_start: 0,
        q_len: 5,
        k_start: 0,
        k_len: 5,
        causal,
        bidirectional_prefix,
    };
    let run = |row: AttnRow, v: &[f32]| {
        let mut out = vec![0.0; 20];
        attention_forward(&q, &k, v, shape, &[row], None, &mut out);
        out
    };
    let mut v_last = v.clone();
    v_last[16] += 1.0; // the last token's value
    let mut v_two = v.clone();
    v_two[8] += 1.0; // token 2's value
                     // Encoder (full): query 0 depends on the last token.
    assert_ne!(
        run(row(false, 0), &v)[..4],
        run(row(false, 0), &v_last)[..4]
    );
    // Causal: query 0 does not.
    assert_eq!(run(row(true, 0), &v)[..4], run(row(true, 0), &v_last)[..4]);
    // BiAttn over a prefix of 3: query 0 sees token 2 but still not token 4.
    assert_ne!(run(row(true, 3), &v)[..4], run(row(true, 3), &v_two)[..4]);
    assert_eq!(run(row(true, 3), &v)[..4], run(row(true, 3), &v_last)[..4]);
    // ... and query 3 (a target) does not see token 4.
    assert_eq!(
        run(row(true, 3), &v)[12..16],
        run(row(true, 3), &v_last)[12..16]
    );
}

#[test]
fn decllm_biattn_targets_stay_causal_and_the_prefix_is_bidirectional() {
    let config = micro_config(Arch::Dec);
    let params = ParamStore::init(&config, 4);
    let mut rng = SplitMix64::new(4);
    let (n, k) = (10, 4);
    let batch = make_batch(&mut rng, config.vocab_size, n, &[(n, k)], 0);
    let biattn = StepOptions {
        bidirectional_prefix: true,
        ..StepOptions::default()
    };
    let base = losses(&config, &params, &batch, &biattn);
    assert_eq!(base[0].len(), n - k);
    // Target part: causal.
    for j in k..n {
        let changed = losses(
            &config,
            &params,
            &with_token_changed(&batch, 0, j, config.vocab_size),
            &biattn,
        );
        for (i, (&c, &b)) in changed[0].iter().zip(&base[0]).enumerate() {
            if k + i < j {
                assert_eq!(
                    c,
                    b,
                    "target token {j} leaked into the prediction of {}",
                    k + i
                );
            }
        }
    }
    // Prefix part: bidirectional, so the same prefix gives different target losses than with
    // a causal mask (earlier prefix positions now see later ones, which later layers read).
    let causal = losses(&config, &params, &batch, &StepOptions::default());
    assert!(causal[0].iter().zip(&base[0]).all(|(a, b)| a != b));
}

#[test]
fn padding_and_other_rows_have_no_influence() {
    for arch in [Arch::Dec, Arch::Red] {
        let config = micro_config(arch);
        let params = ParamStore::init(&config, 5);
        let mut rng = SplitMix64::new(5);
        let batch = make_batch(
            &mut rng,
            config.vocab_size,
            10,
            &[(10, 4), (6, 2), (3, 2)],
            0,
        );
        let options = StepOptions {
            z_loss: 1e-3,
            ..StepOptions::default()
        };
        let mut backend = CpuBackend::new(Some(2)).unwrap();
        let mut grads = params.zeros_like();
        let base = backend
            .forward_backward(&config, &params, &batch, &options, &mut grads)
            .unwrap();
        // Different padding ids (even ones outside the vocabulary: padding is never read).
        let mut padded = batch.clone();
        for r in 0..padded.rows {
            for t in padded.length[r]..padded.seq {
                padded.tokens[r * padded.seq + t] = 1_000_000 + t as u32;
            }
        }
        let mut grads2 = params.zeros_like();
        let other = backend
            .forward_backward(&config, &params, &padded, &options, &mut grads2)
            .unwrap();
        assert_eq!(base, other, "{arch:?}: padding changed the loss");
        assert_eq!(grads, grads2, "{arch:?}: padding changed the gradient");
        // Changing row 1 leaves rows 0 and 2 alone.
        let changed = with_token_changed(&batch, 1, 3, config.vocab_size);
        let l0 = losses(&config, &params, &batch, &options);
        let l1 = losses(&config, &params, &changed, &options);
        assert_eq!(l0[0], l1[0]);
        assert_eq!(l0[2], l1[2]);
        assert_ne!(l0[1], l1[1]);
    }
}

#[test]
fn document_resets_isolate_documents() {
    // DecLLM: a row with documents [0, 5) and [5, 10); token 2 of the first document.
    let config = micro_config(Arch::Dec);
    let params = ParamStore::init(&config, 6);
    let mut rng = SplitMix64::new(6);
    let mut batch = make_batch(&mut rng, config.vocab_size, 10, &[(10, 1)], 0);
    batch.doc_starts = vec![vec![5]];
    let reset = StepOptions {
        loss_on_prefix: true,
        reset_at_doc_boundaries: true,
        ..StepOptions::default()
    };
    let base = losses(&config, &params, &batch, &reset);
    let changed = losses(
        &config,
        &params,
        &with_token_changed(&batch, 0, 2, config.vocab_size),
        &reset,
    );
    // Entry i predicts token i + 1 from tokens ..= i; tokens 6.. are predicted from the second
    // document only.
    for i in 5..9 {
        assert_eq!(
            base[0][i],
            changed[0][i],
            "reset: prediction of token {} saw document 1",
            i + 1
        );
    }
    assert_ne!(base[0][4], changed[0][4]);
    // Without the reset, the second document sees the first.
    let plain = StepOptions {
        loss_on_prefix: true,
        ..StepOptions::default()
    };
    let a = losses(&config, &params, &batch, &plain);
    let b = losses(
        &config,
        &params,
        &with_token_changed(&batch, 0, 2, config.vocab_size),
        &plain,
    );
    assert_ne!(a[0][7], b[0][7]);

    // RedLLM: encoder [0, 4) holds document 0 and the start of document 1 at 3; the decoder's
    // predictions of tokens 6.. read only document 2 (starting at 5) with resets.
    let config = micro_config(Arch::Red);
    let params = ParamStore::init(&config, 7);
    let mut batch = make_batch(&mut rng, config.vocab_size, 10, &[(10, 4)], 0);
    batch.doc_starts = vec![vec![3, 5]];
    let reset = StepOptions {
        reset_at_doc_boundaries: true,
        ..StepOptions::default()
    };
    let base = losses(&config, &params, &batch, &reset);
    for j in 0..5 {
        let changed = losses(
            &config,
            &params,
            &with_token_changed(&batch, 0, j, config.vocab_size),
            &reset,
        );
        // Entry i predicts token 4 + i; tokens 6..10 are predicted from tokens 5.. only.
        for i in 2..6 {
            assert_eq!(
                base[0][i],
                changed[0][i],
                "token {j} reached the prediction of {}",
                4 + i
            );
        }
    }
}

#[test]
fn rows_without_predictions_are_handled() {
    for arch in [Arch::Dec, Arch::Red] {
        let config = micro_config(arch);
        let params = ParamStore::init(&config, 8);
        let mut rng = SplitMix64::new(8);
        // DecLLM: a one-token row predicts nothing; RedLLM: a row that is all input.
        let batch = make_batch(&mut rng, config.vocab_size, 6, &[(1, 1), (6, 6), (0, 0)], 0);
        let options = StepOptions {
            dropout: 0.1,
            loss_on_prefix: arch == Arch::Dec,
            ..StepOptions::default()
        };
        let mut grads = params.zeros_like();
        let stats = CpuBackend::new(Some(2))
            .unwrap()
            .forward_backward(&config, &params, &batch, &options, &mut grads)
            .unwrap();
        let expected = if arch == Arch::Dec { 5 } else { 0 };
        assert_eq!(stats.tokens, expected, "{arch:?}");
        assert_eq!(stats.row_tokens, vec![0, expected, 0]);
        let empty = make_batch(&mut rng, config.vocab_size, 4, &[], 0);
        let stats = CpuBackend::new(Some(1))
            .unwrap()
            .forward_backward(&config, &params, &empty, &options, &mut grads)
            .unwrap();
        assert_eq!(stats.tokens, 0);
    }
}

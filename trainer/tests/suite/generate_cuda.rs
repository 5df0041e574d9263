//! Decoding on the CUDA backend (a GPU, or the CPU emulation of one): at every step the cached
//! logits equal the CPU training forward over the whole row, for RedLLM, DecLLM and DecLLM +
//! BiAttn with ragged prompts in one batch, and greedy decoding gives the CPU decoder's tokens.

use super::cuda_support::{self, say};
use super::generate::{
    checkpoint_of, greedy_with_logits, prompts, reference_log_probs, worst, Kind, KINDS,
};

use std::sync::Arc;

use redpack_trainer::backend::cuda::decode::CudaDecoder;
use redpack_trainer::checkpoint;
use redpack_trainer::generate::cpu::CpuDecoder;
use redpack_trainer::generate::sample::log_prob;
use redpack_trainer::generate::DecodeMode;

fn mode(kind: Kind) -> DecodeMode {
    DecodeMode {
        bidirectional_prompt: kind == Kind::DecBiAttn,
    }
}

#[test]
fn cuda_decoding_equals_the_full_forward_and_the_cpu_tokens() {
    let test = "cuda_decoding_equals_the_full_forward_and_the_cpu_tokens";
    let info = cuda_support::device(test);
    cuda_support::require_nvrtc();
    let cache = cuda_support::kernel_cache(&info.arch());
    for kind in KINDS {
        let ckpt = checkpoint_of(kind);
        let loaded = checkpoint::load(&ckpt, false).unwrap();
        let config = &loaded.meta.model;
        let mut gpu = CudaDecoder::new(&info, &cache, config, &loaded.params, mode(kind), 64)
            .unwrap_or_else(|e| panic!("{test}: {e}"));
        let mut cpu = CpuDecoder::new(
            config,
            Arc::new(loaded.params.clone()),
            mode(kind),
            64,
            Some(2),
        )
        .unwrap();
        let prompts = prompts();
        let on_gpu = greedy_with_logits(&mut gpu, &prompts, 4);
        let on_cpu = greedy_with_logits(&mut cpu, &prompts, 4);
        let mut worst_seen = 0.0f64;
        for ((prompt, (tokens, logits)), (cpu_tokens, _)) in
            prompts.iter().zip(&on_gpu).zip(&on_cpu)
        {
            assert_eq!(
                tokens, cpu_tokens,
                "{kind:?}: CUDA greedy tokens differ from the CPU's"
            );
            for (s, l) in logits.iter().enumerate() {
                let mut row = prompt.clone();
                row.extend_from_slice(&tokens[..s]);
                let want = reference_log_probs(kind, &ckpt, &row, prompt.len());
                let got: Vec<f64> = (0..l.len()).map(|t| log_prob(l, t)).collect();
                worst_seen = worst_seen.max(worst(&got, &want));
            }
        }
        say(&format!(
            "{test}: {kind:?}: worst |log p| difference {worst_seen:.2e}"
        ));
        assert!(
            worst_seen < 1e-4,
            "{kind:?}: CUDA cached decoding differs from the full forward by {worst_seen:e}"
        );
    }
}

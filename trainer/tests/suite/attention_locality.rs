//! Attention locality: the local-mass arithmetic on hand-built probability patterns whose local
//! mass is known, the probe forward against the training forward, and `analysis` end to end on
//! tiny trained checkpoints of DecLLM, DecLLM + BiAttn and RedLLM.

use super::model_support::{make_batch, micro_config};
use super::train_common::{examples_corpus, packed_corpus, tiny_settings};

use std::collections::BTreeMap;
use std::path::Path;

use redpack_trainer::analysis::locality::{
    local_mass_self, local_mass_tail, LocalityReducer, QueryRange,
};
use redpack_trainer::analysis::{write_outputs, LocalityJob, LocalityOptions, LocalityReport};
use redpack_trainer::backend::cpu::probe::{AttentionReducer, AttnKind, AttnSite};
use redpack_trainer::backend::cpu::CpuBackend;
use redpack_trainer::batch::StepOptions;
use redpack_trainer::config::Arch;
use redpack_trainer::metrics::Quiet;
use redpack_trainer::model::attention::AttnRow;
use redpack_trainer::params::ParamStore;
use redpack_trainer::rng::SplitMix64;
use redpack_trainer::run::{Mode, TrainRun};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn local_mass_of_known_patterns() {
    // Uniform causal attention: query i sees keys 0..=i, 1/(i+1) each.
    let n = 40;
    for i in [0usize, 3, 4, 5, 39] {
        let mut row = vec![0.0f32; n];
        row[..=i].fill(1.0 / (i + 1) as f32);
        let want = 5.min(i + 1) as f64 / (i + 1) as f64;
        assert!(
            (local_mass_self(&row, i, 5) - want).abs() < 1e-6,
            "query {i}"
        );
    }
    // Identity attention is all local, for any window.
    let mut row = vec![0.0f32; n];
    row[17] = 1.0;
    assert!(close(local_mass_self(&row, 17, 1), 1.0));
    assert!(close(local_mass_self(&row, 17, 5), 1.0));
    // All mass on the first key: local only within the window.
    let mut row = vec![0.0f32; n];
    row[0] = 1.0;
    assert!(close(local_mass_self(&row, 4, 5), 1.0));
    assert!(close(local_mass_self(&row, 5, 5), 0.0));
    // Bidirectional uniform attention: 2·window − 1 local keys in the middle, fewer at the ends.
    let row = vec![1.0f32 / n as f32; n];
    assert!((local_mass_self(&row, 20, 5) - 9.0 / 40.0).abs() < 1e-6);
    assert!((local_mass_self(&row, 0, 5) - 5.0 / 40.0).abs() < 1e-6);
    assert!((local_mass_self(&row, 39, 5) - 5.0 / 40.0).abs() < 1e-6);
    // Cross-attention: the last `window` encoder keys.
    let mut row = vec![0.0f32; 10];
    row[9] = 0.5;
    row[5] = 0.25;
    row[4] = 0.25;
    assert!(close(local_mass_tail(&row, 5), 0.75));
    assert!(close(local_mass_tail(&row, 6), 1.0));
    assert!(close(local_mass_tail(&row, 1), 0.5));
    assert!(close(local_mass_tail(&row, 100), 1.0));
}

/// Feeds `reducer` a `q x k` matrix made by `p(head, i, j)` for every head, in blocks of `block`
/// rows.
#[allow(clippy::too_many_arguments)]
fn feed(
    reducer: &mut LocalityReducer,
    kind: AttnKind,
    layer: usize,
    q: usize,
    k: usize,
    heads: usize,
    block: usize,
    p: impl Fn(usize, usize, usize) -> f32,
) {
    let site = AttnSite {
        kind,
        layer,
        row: 0,
        mask: AttnRow {
            q_start: 0,
            q_len: q,
            k_start: 0,
            k_len: k,
            causal: kind == AttnKind::DecoderSelf,
            bidirectional_prefix: 0,
        },
    };
    let mut partials = Vec::new();
    for h in 0..heads {
        let mut partial = reducer.start(&site, h);
        let mut q0 = 0;
        while q0 < q {
            let rows = block.min(q - q0);
            let probs: Vec<f32> = (q0..q0 + rows)
                .flat_map(|i| (0..k).map(move |j| (i, j)))
                .map(|(i, j)| p(h, i, j))
                .collect();
            reducer.block(&mut partial, &site, q0, &probs);
            q0 += rows;
        }
        partials.push(partial);
    }
    reducer.finish(&site, partials);
}

#[test]
fn reducer_averages_known_patterns_over_heads_layers_and_queries() {
    let (q, window) = (30, 5);
    let mut ranges = BTreeMap::new();
    // Report queries 10..30 only.
    ranges.insert(
        AttnKind::DecoderSelf,
        QueryRange {
            first: 10,
            count: 20,
        },
    );
    let mut reducer = LocalityReducer::new(window, ranges);
    reducer.heatmaps = true;
    // Layer 0: head 0 identity (local 1), head 1 uniform causal (local 5/(i+1)).
    feed(
        &mut reducer,
        AttnKind::DecoderSelf,
        0,
        q,
        q,
        2,
        7,
        |h, i, j| match (h, j <= i) {
            (_, false) => 0.0,
            (0, true) => (i == j) as u8 as f32,
            _ => 1.0 / (i + 1) as f32,
        },
    );
    // Layer 1: everything on key 0 (local 0 for the reported queries).
    feed(
        &mut reducer,
        AttnKind::DecoderSelf,
        1,
        q,
        q,
        2,
        256,
        |_, _, j| (j == 0) as u8 as f32,
    );
    // Cross-attention over 8 encoder keys: uniform, so the last 5 hold 5/8.
    feed(&mut reducer, AttnKind::Cross, 0, q, 8, 2, 4, |_, _, _| {
        0.125
    });
    let l0 = &reducer.sums[&(AttnKind::DecoderSelf, 0)];
    let want: f64 = (10..30).map(|i| 1.0 + 5.0 / (i + 1) as f64).sum::<f64>() / 40.0;
    assert_eq!(l0.terms, 40);
    assert!((l0.local_sum / l0.terms as f64 - want).abs() < 1e-6);
    assert!((l0.by_query[0] - (1.0 + 5.0 / 11.0)).abs() < 1e-6);
    assert!(l0.max_row_sum_error < 1e-5);
    let l1 = &reducer.sums[&(AttnKind::DecoderSelf, 1)];
    assert_eq!(l1.local_sum, 0.0);
    let cross = &reducer.sums[&(AttnKind::Cross, 0)];
    assert_eq!(cross.terms, 60);
    assert!((cross.local_sum / 60.0 - 0.625).abs() < 1e-9);
    // The heat map of layer 0 is the head average: (identity + uniform causal) / 2.
    let map = &reducer.maps[&(AttnKind::DecoderSelf, 0)];
    assert_eq!((map.query_bins, map.key_bins), (30, 30));
    assert!((map.values[3 * 30 + 3] - (1.0 + 0.25) / 2.0).abs() < 1e-6);
    assert!((map.values[3 * 30 + 1] - 0.125).abs() < 1e-6);
    assert_eq!(map.values[3 * 30 + 4], 0.0);
}

/// Checks every probability block the probe shows: masked entries 0, rows summing to 1.
struct MaskCheck {
    sites: Vec<(AttnKind, usize)>,
}

impl AttentionReducer for MaskCheck {
    type Partial = usize;
    fn start(&self, _: &AttnSite, _: usize) -> usize {
        0
    }
    fn block(&self, seen: &mut usize, site: &AttnSite, first: usize, probs: &[f32]) {
        let k = site.mask.k_len;
        for (b, row) in probs.chunks(k).enumerate() {
            let i = first + b;
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{site:?} query {i}: sum {sum}");
            for (j, &p) in row.iter().enumerate() {
                if !site.mask.allowed(i, j, None) {
                    assert_eq!(p, 0.0, "{site:?} query {i} key {j}");
                }
            }
            *seen += 1;
        }
    }
    fn finish(&mut self, site: &AttnSite, heads: Vec<usize>) {
        assert!(heads.iter().all(|&n| n == site.mask.q_len));
        self.sites.push((site.kind, site.layer));
    }
}

/// The probe forward is the training forward: cross-entropies recomputed from its output match
/// `CpuBackend::token_losses`, with rows longer than one query block.
#[test]
fn probe_forward_matches_the_training_forward() {
    let backend = CpuBackend::new(Some(2)).unwrap();
    for (arch, bidirectional) in [(Arch::Dec, false), (Arch::Dec, true), (Arch::Red, false)] {
        let config = micro_config(arch);
        let params = ParamStore::init(&config, 5);
        let mut rng = SplitMix64::new(9);
        let batch = make_batch(&mut rng, config.vocab_size, 300, &[(300, 40), (37, 9)], 0);
        let options = StepOptions {
            bidirectional_prefix: bidirectional,
            ..StepOptions::default()
        };
        let want = backend
            .token_losses(&config, &params, &batch, &options)
            .unwrap();
        let mut check = MaskCheck { sites: Vec::new() };
        let out = backend
            .attention_probe(&config, &params, &batch, &options, &mut check)
            .unwrap();
        let expected_sites = match arch {
            Arch::Dec => 2 * 2,
            Arch::Red => 3 * 2 * 2,
        };
        assert_eq!(check.sites.len(), expected_sites, "{arch:?}");
        // Recompute each scored token's cross-entropy from the decoder output in f64: logits =
        // h · Eᵀ · d_model^-0.5 with the tied embedding E.
        let (d, embed) = (config.d_model, &params.tensors[0].data);
        let logit_scale = 1.0 / (d as f64).sqrt();
        let mut token = 0usize;
        for (r, row_losses) in want.iter().enumerate() {
            let (n, k) = (batch.length[r], batch.prefix_len[r]);
            let row = batch.row(r);
            let stream_len = match arch {
                Arch::Dec => n - 1,
                Arch::Red => n - k,
            };
            for (t, &ce) in row_losses.iter().enumerate() {
                // The scored targets are [k, n); the stream's last tokens predict them.
                let target = k + t;
                let idx = token + stream_len - (n - target);
                let h = &out.decoder_output[idx * d..(idx + 1) * d];
                let logits: Vec<f64> = (0..config.vocab_size)
                    .map(|v| {
                        h.iter()
                            .zip(&embed[v * d..(v + 1) * d])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * logit_scale
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::MIN, f64::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                let mine = lse - logits[row[target] as usize];
                assert!(
                    (mine - ce).abs() < 1e-4 * (1.0 + ce.abs()),
                    "{arch:?} bidi {bidirectional} row {r} target {target}: {mine} vs {ce}"
                );
            }
            token += stream_len;
        }
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn check_report(report: &LocalityReport, out: &Path, kinds: &[&str], layers: usize) {
    let names: Vec<&str> = report.attention.keys().map(|s| s.as_str()).collect();
    let mut want = kinds.to_vec();
    want.sort();
    assert_eq!(names, want);
    for (name, kind) in &report.attention {
        assert_eq!(kind.layers.len(), layers, "{name}");
        assert!(
            kind.max_row_sum_error <= 1e-5,
            "{name}: {}",
            kind.max_row_sum_error
        );
        for v in kind
            .layers
            .iter()
            .chain(&kind.by_position)
            .chain([&kind.overall])
        {
            // In [0, 1] up to the f32 rounding of the probabilities themselves.
            assert!((0.0..=1.0 + 1e-5).contains(v), "{name}: {v}");
        }
    }
    let dec = &report.attention["decoder_self"];
    assert_eq!(dec.first_position, report.prefix_len);
    assert_eq!(dec.by_position.len(), report.length - report.prefix_len);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("locality.json")).unwrap()).unwrap();
    assert_eq!(json["length"], report.length);
    let csv = std::fs::read_to_string(out.join("locality.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + kinds.len() * (layers + 1));
    let by_pos = std::fs::read_to_string(out.join("locality_by_position.csv")).unwrap();
    assert!(by_pos.starts_with("attention,position,local_mass\n"));
    let maps: Vec<&str> = report
        .heatmaps
        .iter()
        .map(|h| h.attention.as_str())
        .collect();
    let heat_kinds = kinds.iter().filter(|k| **k != "encoder_self").count();
    assert_eq!(maps.len(), heat_kinds * layers);
    for info in &report.heatmaps {
        let (w, h) = png_size(&out.join(&info.file));
        assert_eq!(
            w as usize,
            info.key_bins * info.pixels_per_bin,
            "{}",
            info.file
        );
        assert_eq!(
            h as usize,
            info.query_bins * info.pixels_per_bin,
            "{}",
            info.file
        );
    }
}

#[test]
fn analysis_end_to_end_on_tiny_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    let data = packed_corpus(&root.path().join("corpus"), 24, 64);
    let backend = CpuBackend::new(Some(2)).unwrap();
    let options = LocalityOptions {
        length: 48,
        prefix_len: 16,
        window: 5,
        rows: 3,
    };
    // DecLLM + BiAttn is a finetuning objective: that checkpoint trains on an examples corpus
    // with the same tokenizer and is analysed on the packed one like the others.
    let examples = examples_corpus(&root.path().join("examples"), 24);
    for (name, arch, bidirectional) in [
        ("dec", Arch::Dec, false),
        ("bidi", Arch::Dec, true),
        ("red", Arch::Red, false),
    ] {
        let run_dir = root.path().join(name);
        let (mode, train_data) = match bidirectional {
            true => (Mode::Finetune, &examples),
            false => (Mode::Pretrain, &data),
        };
        let mut settings = tiny_settings(arch, mode, train_data, &run_dir, 2);
        settings.objective.bidirectional_prefix = bidirectional;
        TrainRun::prepare(settings)
            .unwrap()
            .run(&mut CpuBackend::new(Some(1)).unwrap(), &mut Quiet)
            .unwrap();
        let job = LocalityJob::prepare(&run_dir, &data, options.clone()).unwrap();
        let (report, maps) = job.run(&backend, |_| {}).unwrap();
        assert_eq!(report.rows, 3);
        assert_eq!(report.bidirectional_prefix, bidirectional);
        let out = root.path().join(format!("{name}-out"));
        let report = write_outputs(report, &maps, &out).unwrap();
        let (kinds, layers): (&[&str], usize) = match arch {
            Arch::Dec => (&["decoder_self"], 2),
            Arch::Red => (&["decoder_self", "encoder_self", "cross"], 2),
        };
        check_report(&report, &out, kinds, layers);
        // Deterministic: a second run writes the same bytes.
        let again = LocalityJob::prepare(&run_dir, &data, options.clone())
            .unwrap()
            .run(&CpuBackend::new(Some(1)).unwrap(), |_| {})
            .unwrap();
        let out2 = root.path().join(format!("{name}-out2"));
        write_outputs(again.0, &again.1, &out2).unwrap();
        for file in ["locality.csv", "locality_by_position.csv"] {
            assert_eq!(
                std::fs::read(out.join(file)).unwrap(),
                std::fs::read(out2.join(file)).unwrap(),
                "{name} {file}"
            );
        }
        for info in &report.heatmaps {
            assert_eq!(
                std::fs::read(out.join(&info.file)).unwrap(),
                std::fs::read(out2.join(&info.file)).unwrap()
            );
        }
    }
    let bidi = root.path().join("bidi");
    let err = |o: LocalityOptions| {
        LocalityJob::prepare(&bidi, &data, o)
            .err()
            .expect("an error")
            .to_string()
    };
    let e = err(LocalityOptions {
        length: 65,
        ..options.clone()
    });
    assert!(e.contains("--length 65") && e.contains("64 tokens"), "{e}");
    let e = err(LocalityOptions {
        prefix_len: 48,
        ..options.clone()
    });
    assert!(
        e.contains("--prefix-len 48 must be below --length 48"),
        "{e}"
    );
    let e = err(LocalityOptions {
        window: 0,
        ..options.clone()
    });
    assert!(e.contains("--window must be at least 1"), "{e}");
}

//! Adafactor against steps computed by hand (the T5X formulas written out in the test), global
//! norm clipping, and the learning-rate schedules at their key steps.

use redpack_trainer::optim::adafactor::beta2;
use redpack_trainer::optim::{clip_global_norm, global_norm, Adafactor, AdafactorConfig};
use redpack_trainer::params::{ParamStore, Tensor};
use redpack_trainer::schedule::Schedule;

fn store(tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> ParamStore {
    ParamStore {
        names: tensors.iter().map(|(n, _, _)| n.to_string()).collect(),
        tensors: tensors
            .into_iter()
            .map(|(_, shape, data)| Tensor { shape, data })
            .collect(),
    }
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol,
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn decay_follows_t5x_step_convention() {
    // beta2_t = 1 - (t + 1)^-0.8 with t = updates done before: the first update has beta2 = 0.
    assert_eq!(beta2(0.8, 0), 0.0);
    assert!((beta2(0.8, 1) as f64 - (1.0 - 2f64.powf(-0.8))).abs() < 1e-7);
    assert!((beta2(0.8, 999) as f64 - (1.0 - 1000f64.powf(-0.8))).abs() < 1e-7);
}

#[test]
fn unfactored_two_hand_computed_steps() {
    let mut params = store(vec![("w", vec![2], vec![1.0, -2.0])]);
    let mut opt = Adafactor::new(AdafactorConfig::default(), &params).unwrap();
    // Step 1: v = g^2, y = g / |g| = ±1, RMS(y) = 1 (no clipping), scale = lr * RMS(p).
    let grads = store(vec![("w", vec![2], vec![0.5, -1.0])]);
    let stats = opt.update(&mut params, &grads, 0.01).unwrap();
    let rms_p = (2.5f64).sqrt();
    assert_close(
        &params.tensors[0].data,
        &[1.0 - 0.01 * rms_p, -2.0 + 0.01 * rms_p],
        1e-6,
    );
    assert!((stats.update_norm - 0.01 * rms_p * 2f64.sqrt()).abs() < 1e-6);
    assert_eq!(stats.beta2, 0.0);
    // Step 2: beta2 = 1 - 2^-0.8; v = beta2 * v + (1 - beta2) * g^2.
    let grads = store(vec![("w", vec![2], vec![0.1, 0.2])]);
    opt.update(&mut params, &grads, 0.01).unwrap();
    assert_close(
        &params.tensors[0].data,
        &[0.979_512_112_8, -1.988_865_110_6],
        1e-6,
    );
    let state = opt.state_tensors();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].0, "optimizer.w.v");
    assert_close(&state[0].1.data, &[0.112_156_197_4, 0.448_624_789_6], 1e-7);
}

#[test]
fn update_clipping_divides_by_rms() {
    let mut params = store(vec![("w", vec![2], vec![0.0, 0.0])]);
    let mut opt = Adafactor::new(AdafactorConfig::default(), &params).unwrap();
    let small = store(vec![("w", vec![2], vec![0.01, 0.01])]);
    opt.update(&mut params, &small, 1.0).unwrap();
    // Zero parameters: the scale is lr * epsilon2 = 1e-3, and y = 1 on the first step.
    assert_close(&params.tensors[0].data, &[-1e-3, -1e-3], 1e-9);
    // A gradient 100x larger than the history: y = 1 / sqrt(v) > 1, clipped back to RMS 1.
    let big = store(vec![("w", vec![2], vec![1.0, 1.0])]);
    let before = params.tensors[0].data.clone();
    opt.update(&mut params, &big, 1.0).unwrap();
    let b2 = 1.0 - 2f64.powf(-0.8);
    let v = b2 * (1e-4) + (1.0 - b2) * 1.0;
    assert!(
        1.0 / v.sqrt() > 1.0,
        "the test needs an update that clipping changes"
    );
    let scale = 1e-3f64.max((before[0] as f64).abs());
    assert_close(
        &params.tensors[0].data,
        &[before[0] as f64 - scale, before[1] as f64 - scale],
        1e-8,
    );
}

#[test]
fn factored_hand_computed_step() {
    let config = AdafactorConfig {
        factored: true,
        min_dim_size_to_factor: 2,
        ..AdafactorConfig::default()
    };
    let p0 = [0.5f64, -0.5, 0.5, -0.5];
    let mut params = store(vec![(
        "m",
        vec![2, 2],
        p0.iter().map(|&x| x as f32).collect(),
    )]);
    let mut opt = Adafactor::new(config, &params).unwrap();
    let g = [1.0f64, 2.0, 3.0, 4.0];
    let grads = store(vec![(
        "m",
        vec![2, 2],
        g.iter().map(|&x| x as f32).collect(),
    )]);
    opt.update(&mut params, &grads, 0.1).unwrap();
    // v_row = row means of g^2 = [2.5, 12.5]; v_col = column means = [5, 10]; mean(v_row) = 7.5.
    let v_row = [2.5f64, 12.5];
    let v_col = [5.0f64, 10.0];
    let y: Vec<f64> = (0..4)
        .map(|idx| g[idx] / (v_row[idx / 2] / 7.5 * v_col[idx % 2]).sqrt())
        .collect();
    let rms_y = (y.iter().map(|x| x * x).sum::<f64>() / 4.0).sqrt();
    assert!(rms_y < 1.0, "no clipping in this step");
    let want: Vec<f64> = (0..4).map(|i| p0[i] - 0.1 * 0.5 * y[i]).collect();
    assert_close(&params.tensors[0].data, &want, 1e-6);
    let state = opt.state_tensors();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["optimizer.m.v_row", "optimizer.m.v_col"]);
    assert_close(&state[0].1.data, &v_row, 1e-6);
    assert_close(&state[1].1.data, &v_col, 1e-6);
}

#[test]
fn small_matrices_and_vectors_stay_unfactored() {
    let config = AdafactorConfig {
        factored: true,
        ..AdafactorConfig::default()
    };
    assert!(config.factors(&[128, 256]));
    assert!(!config.factors(&[64, 256]));
    assert!(!config.factors(&[256]));
    assert!(!AdafactorConfig::default().factors(&[1024, 1024]));
}

#[test]
fn momentum_averages_updates() {
    let config = AdafactorConfig {
        beta1: Some(0.9),
        ..AdafactorConfig::default()
    };
    let mut params = store(vec![("w", vec![2], vec![1.0, 1.0])]);
    let mut opt = Adafactor::new(config, &params).unwrap();
    let grads = store(vec![("w", vec![2], vec![1.0, -1.0])]);
    opt.update(&mut params, &grads, 0.1).unwrap();
    // u = lr * RMS(p) * y = 0.1 * [1, -1]; m = 0.1 * u.
    assert_close(&params.tensors[0].data, &[1.0 - 0.01, 1.0 + 0.01], 1e-7);
    let state = opt.state_tensors();
    assert_eq!(state[1].0, "optimizer.w.m");
    assert_close(&state[1].1.data, &[0.01, -0.01], 1e-8);
}

#[test]
fn state_round_trip_continues_identically() {
    let config = AdafactorConfig {
        factored: true,
        min_dim_size_to_factor: 2,
        beta1: Some(0.5),
        ..AdafactorConfig::default()
    };
    let make = || {
        store(vec![
            ("a", vec![2, 3], vec![0.1, 0.2, -0.3, 0.4, 0.5, -0.6]),
            ("b", vec![3], vec![1.0, 1.0, 1.0]),
        ])
    };
    let grad = |s: f32| {
        store(vec![
            ("a", vec![2, 3], vec![s, -s, 2.0 * s, 0.5, -0.25, s]),
            ("b", vec![3], vec![s, 0.1, -s]),
        ])
    };
    let mut straight = make();
    let mut opt = Adafactor::new(config.clone(), &straight).unwrap();
    for s in [0.3, -0.7, 1.1] {
        opt.update(&mut straight, &grad(s), 0.05).unwrap();
    }
    let mut resumed = make();
    let mut first = Adafactor::new(config.clone(), &resumed).unwrap();
    for s in [0.3, -0.7] {
        first.update(&mut resumed, &grad(s), 0.05).unwrap();
    }
    let saved: std::collections::HashMap<_, _> = first.state_tensors().into_iter().collect();
    let mut second =
        Adafactor::from_state(config, &resumed, first.step(), |n| saved.get(n).cloned()).unwrap();
    second.update(&mut resumed, &grad(1.1), 0.05).unwrap();
    assert_eq!(straight, resumed);
    assert_eq!(opt, second);
}

#[test]
fn missing_state_is_an_error_naming_the_tensor() {
    let params = store(vec![("w", vec![2], vec![1.0, 1.0])]);
    let err = Adafactor::from_state(AdafactorConfig::default(), &params, 3, |_| None).unwrap_err();
    assert!(err.to_string().contains("optimizer.w.v"), "{err}");
}

#[test]
fn global_norm_clipping() {
    let mut grads = store(vec![
        ("a", vec![2], vec![3.0, 0.0]),
        ("b", vec![1], vec![4.0]),
    ]);
    assert_eq!(global_norm(&grads), 5.0);
    let before = clip_global_norm(&mut grads, 1.0);
    assert_eq!(before, 5.0);
    assert!((global_norm(&grads) - 1.0).abs() < 1e-6);
    let norm = clip_global_norm(&mut grads, 10.0);
    assert!(
        (norm - 1.0).abs() < 1e-6,
        "below the threshold nothing changes"
    );
}

#[test]
fn warmup_cosine_key_steps() {
    let s = Schedule::WarmupCosine {
        warmup_steps: 2000,
        peak: 0.01,
        end: 0.001,
    };
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    close(s.lr(1, 10_000), 0.01 / 2000.0);
    close(s.lr(1000, 10_000), 0.005);
    close(s.lr(2000, 10_000), 0.01);
    close(s.lr(6000, 10_000), 0.0055);
    close(s.lr(10_000, 10_000), 0.001);
    close(s.lr(12_000, 10_000), 0.001);
    assert!(s.lr(2001, 10_000) < 0.01 && s.lr(9999, 10_000) > 0.001);
}

#[test]
fn constant_and_rsqrt() {
    assert_eq!(Schedule::Constant { lr: 0.001 }.lr(1, 10), 0.001);
    assert_eq!(Schedule::Constant { lr: 0.001 }.lr(190_000, 10), 0.001);
    let t5 = Schedule::Rsqrt {
        scale: 1.0,
        warmup_steps: 10_000,
    };
    assert_eq!(t5.lr(1, 0), 0.01);
    assert_eq!(t5.lr(10_000, 0), 0.01);
    assert_eq!(t5.lr(40_000, 0), 0.005);
    assert_eq!(t5.with_peak(0.02).lr(5, 0), 0.02);
}

#[test]
fn schedules_parse_from_tagged_tables() {
    let s: Schedule =
        toml::from_str("type = \"warmup_cosine\"\nwarmup_steps = 2000\npeak = 0.01\nend = 0.001\n")
            .unwrap();
    assert_eq!(
        s,
        Schedule::WarmupCosine {
            warmup_steps: 2000,
            peak: 0.01,
            end: 0.001
        }
    );
    assert!(toml::from_str::<Schedule>("type = \"linear\"\n").is_err());
    assert!(Schedule::Constant { lr: f64::NAN }.validate().is_err());
}

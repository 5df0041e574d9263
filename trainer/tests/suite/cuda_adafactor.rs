//! The Adafactor update on the GPU (`launch_adafactor`, all tensors in each launch) against the
//! CPU's `optim::adafactor`: one tensor of each kind over three steps, and a whole model's worth
//! of tensors with the resident step's gradient scaling, global norm and clipping. Without a GPU it runs on
//! the CPU emulation of one (`cuda_support::emulation`); `cuda_emulated.rs` checks the same
//! kernels alone on the CPU model of CUDA.

use super::cuda_support;

use cuda_support::{assert_close, gpu, randn};
use redpack_trainer::rng::SplitMix64;

/// The change of each parameter, `after - before`.
fn deltas(after: &[f32], before: &[f32]) -> Vec<f32> {
    after.iter().zip(before).map(|(x, y)| x - y).collect()
}

/// Compares a device update with the CPU's. The updates are read back as differences of
/// parameters about 100 times larger, so one ulp of a parameter (the rounding of the final add on
/// either side) is already a few 1e-5 of the largest update: the tolerance is 1e-5 plus that ulp.
fn assert_update_close(label: &str, gpu_update: &[f32], cpu_update: &[f32], params: &[f32]) {
    let p_max = params.iter().fold(0f32, |m, v| m.max(v.abs()));
    let ulp = f32::from_bits(p_max.to_bits() + 1) - p_max;
    let u_max = cpu_update
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-30);
    assert_close(label, gpu_update, cpu_update, 1e-5 + f64::from(ulp / u_max));
}

#[test]
fn adafactor_matches_cpu_full_factored_and_with_momentum() {
    use redpack_trainer::backend::cuda::kernels::{
        AdafactorStep, AdafactorTensor, DeviceMoment, MomentShape, MultiTensorAdafactor,
    };
    use redpack_trainer::optim::adafactor::{beta2, Adafactor, AdafactorConfig};
    use redpack_trainer::params::{ParamStore, Tensor};
    let g = gpu("adafactor_matches_cpu_full_factored_and_with_momentum");
    let factored = AdafactorConfig {
        factored: true,
        ..AdafactorConfig::default()
    };
    let momentum = AdafactorConfig {
        beta1: Some(0.9),
        clipping_threshold: None,
        multiply_by_parameter_scale: false,
        ..AdafactorConfig::default()
    };
    let (rows, cols, lr) = (128, 160, 1e-2);
    let mut rng = SplitMix64::new(8);
    for (label, config) in [
        ("full", AdafactorConfig::default()),
        ("factored", factored),
        ("momentum", momentum),
    ] {
        let start = randn(&mut rng, rows * cols, 0.05);
        let grads: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, rows * cols, 1e-2)).collect();
        let store = |data: Vec<f32>| ParamStore {
            names: vec!["w".to_string()],
            tensors: vec![Tensor {
                shape: vec![rows, cols],
                data,
            }],
        };
        let mut params = store(start.clone());
        let mut optimizer = Adafactor::new(config.clone(), &params).unwrap();
        let is_factored = config.factors(&[rows, cols]);
        let shape = if is_factored {
            MomentShape::Factored { rows, cols }
        } else {
            MomentShape::Full { n: rows * cols }
        };
        let mut pd = g.upload(&start);
        let mut v_full = g.zeros(rows * cols);
        let (mut v_row, mut v_col) = (g.zeros(rows), g.zeros(cols));
        let mut m = config.beta1.map(|_| g.zeros(rows * cols));
        let mut update = MultiTensorAdafactor::new(&g.stream, &[shape]).unwrap();
        for (t, grad) in grads.iter().enumerate() {
            let before = params.tensors[0].data.clone();
            let before_gpu = g.download(&pd);
            optimizer
                .update(&mut params, &store(grad.clone()), lr)
                .unwrap();
            let mut gd = g.upload(grad);
            let step = AdafactorStep {
                config: &config,
                beta2: beta2(config.decay_rate, t as u64),
                lr,
            };
            let moment = if is_factored {
                DeviceMoment::Factored {
                    v_row: &mut v_row,
                    v_col: &mut v_col,
                }
            } else {
                DeviceMoment::Full(&mut v_full)
            };
            let mut tensors = [AdafactorTensor {
                param: &mut pd,
                grad: &mut gd,
                moment,
                momentum: m.as_mut(),
            }];
            update.update(&g.kernels, step, &mut tensors, 1.0).unwrap();
            assert_update_close(
                &format!("adafactor {label} update {t}"),
                &deltas(&g.download(&pd), &before_gpu),
                &deltas(&params.tensors[0].data, &before),
                &params.tensors[0].data,
            );
        }
    }
}

#[test]
fn adafactor_updates_many_tensors_at_once_as_the_cpu() {
    // The resident step's optimizer: gradients scaled to the mean, the global norm, clipping by a
    // factor, and one multi-tensor update of tensors of every kind (factored over several row
    // segments, full matrices below the factoring size, vectors, a chunk and a bit).
    use redpack_trainer::backend::cuda::kernels::{
        AdafactorStep, AdafactorTensor, DeviceMoment, MomentShape, MultiTensorAdafactor,
    };
    use redpack_trainer::optim::adafactor::{beta2, Adafactor, AdafactorConfig};
    use redpack_trainer::optim::clip::{global_norm, scale_grads};
    use redpack_trainer::params::{ParamStore, Tensor};
    let g = gpu("adafactor_updates_many_tensors_at_once_as_the_cpu");
    let shapes: Vec<Vec<usize>> = vec![
        vec![1100, 136],
        vec![7],
        vec![300, 200],
        vec![50, 40],
        vec![4097],
        vec![128, 1030],
    ];
    let momentum = AdafactorConfig {
        beta1: Some(0.9),
        ..AdafactorConfig::default()
    };
    let mut rng = SplitMix64::new(21);
    for (label, config) in [
        ("default", AdafactorConfig::default()),
        ("momentum", momentum),
    ] {
        let tensor = |rng: &mut SplitMix64, shape: &Vec<usize>, scale: f32| Tensor {
            shape: shape.clone(),
            data: randn(rng, shape.iter().product(), scale),
        };
        let mut params = ParamStore {
            names: (0..shapes.len()).map(|i| format!("p{i}")).collect(),
            tensors: shapes.iter().map(|s| tensor(&mut rng, s, 0.05)).collect(),
        };
        let mut optimizer = Adafactor::new(config.clone(), &params).unwrap();
        let moment_shapes: Vec<MomentShape> = shapes
            .iter()
            .map(|s| match config.factors(s) {
                true => MomentShape::Factored {
                    rows: s[0],
                    cols: s[1],
                },
                false => MomentShape::Full {
                    n: s.iter().product(),
                },
            })
            .collect();
        assert!(moment_shapes
            .iter()
            .any(|s| matches!(s, MomentShape::Full { .. })));
        let mut update = MultiTensorAdafactor::new(&g.stream, &moment_shapes).unwrap();
        let mut pd: Vec<_> = params.tensors.iter().map(|t| g.upload(&t.data)).collect();
        let mut v: Vec<_> = params.tensors.iter().map(|t| g.zeros(t.len())).collect();
        let mut v_row: Vec<_> = shapes.iter().map(|s| g.zeros(s[0])).collect();
        let mut v_col: Vec<_> = shapes.iter().map(|s| g.zeros(*s.last().unwrap())).collect();
        let mut m: Vec<_> = params
            .tensors
            .iter()
            .map(|t| config.beta1.map(|_| g.zeros(t.len())))
            .collect();
        // Summed gradients over 1000 scored tokens, 5 per value: after scaling, the norm is
        // about 0.005 sqrt(347,000), about 3, so a threshold of 1 clips and one of 100 does not.
        let (tokens, lr) = (1000.0f32, 1e-2);
        for (t, max_norm) in [1.0, 100.0, 1.0].into_iter().enumerate() {
            let summed = ParamStore {
                names: params.names.clone(),
                tensors: shapes.iter().map(|s| tensor(&mut rng, s, 5.0)).collect(),
            };
            let mut gd: Vec<_> = summed.tensors.iter().map(|x| g.upload(&x.data)).collect();
            // The CPU: scale to the mean, clip, update.
            let mut grads = summed.clone();
            scale_grads(&mut grads, 1.0 / tokens);
            let norm = global_norm(&grads);
            let factor = if norm > max_norm {
                (max_norm / norm) as f32
            } else {
                1.0
            };
            assert_eq!(factor < 1.0, max_norm == 1.0, "norm {norm}");
            scale_grads(&mut grads, factor);
            let before = params.clone();
            let stats = optimizer.update(&mut params, &grads, lr).unwrap();
            // The device.
            let before_gpu: Vec<Vec<f32>> = pd.iter().map(|p| g.download(p)).collect();
            let mut tensors: Vec<AdafactorTensor<'_>> = pd
                .iter_mut()
                .zip(&mut gd)
                .zip(moment_shapes.iter().zip(&mut v))
                .zip(v_row.iter_mut().zip(&mut v_col).zip(&mut m))
                .map(
                    |(((param, grad), (shape, v)), ((v_row, v_col), m))| AdafactorTensor {
                        param,
                        grad,
                        moment: match shape {
                            MomentShape::Full { .. } => DeviceMoment::Full(v),
                            MomentShape::Factored { .. } => DeviceMoment::Factored { v_row, v_col },
                        },
                        momentum: m.as_mut(),
                    },
                )
                .collect();
            update
                .gradient_squares(&g.kernels, &mut tensors, 1.0 / tokens)
                .unwrap();
            let gpu_norm = g
                .stream
                .clone_dtoh(&update.grad_sq)
                .unwrap()
                .iter()
                .sum::<f64>()
                .sqrt();
            assert!(
                (gpu_norm - norm).abs() <= 1e-12 * norm,
                "{label} step {t}: gradient norm {gpu_norm} on the device, {norm} on the CPU"
            );
            let step = AdafactorStep {
                config: &config,
                beta2: beta2(config.decay_rate, t as u64),
                lr,
            };
            update
                .update(&g.kernels, step, &mut tensors, factor)
                .unwrap();
            drop(tensors);
            let gpu_update_norm = g
                .stream
                .clone_dtoh(&update.update_sq)
                .unwrap()
                .iter()
                .sum::<f64>()
                .sqrt();
            assert!(
                (gpu_update_norm - stats.update_norm).abs() <= 1e-5 * stats.update_norm,
                "{label} step {t}: update norm {gpu_update_norm} on the device, {} on the CPU",
                stats.update_norm
            );
            // The scaled gradient stays on the device, as the resident step leaves it.
            assert_close(
                &format!("{label} step {t} scaled gradient"),
                &g.download(&gd[0]),
                &summed.tensors[0]
                    .data
                    .iter()
                    .map(|x| x * (1.0 / tokens))
                    .collect::<Vec<_>>(),
                0.0,
            );
            for (i, p) in pd.iter().enumerate() {
                assert_update_close(
                    &format!("{label} step {t} tensor {i} {:?}", shapes[i]),
                    &deltas(&g.download(p), &before_gpu[i]),
                    &deltas(&params.tensors[i].data, &before.tensors[i].data),
                    &params.tensors[i].data,
                );
            }
        }
    }
}

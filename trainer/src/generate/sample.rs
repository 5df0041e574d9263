//! Choosing the next token from logits: greedy (argmax), or temperature and nucleus (top-p)
//! sampling with a seed.
//!
//! A sampled draw is a counter hash of `(seed, request index, step)`, so the tokens of a request
//! depend only on the seed, its place in the request list and its own logits: never on the
//! batch it was decoded in, the thread count or the device.

use crate::rng::counter_hash;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id on a tie).
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely tokens
    /// whose probability reaches `top_p`, drawn with `seed`.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    /// Checks the settings: a temperature above 0 and finite, `top_p` in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = *self
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(format!(
                    "temperature must be above 0 and finite, got {temperature}"
                ));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(format!("top-p must be in (0, 1], got {top_p}"));
            }
        }
        Ok(())
    }
}

/// The index of the largest logit (the first on a tie); `None` when a logit is NaN.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i)
}

/// `ln softmax(logits)[target]`, computed in f64.
pub fn log_prob(logits: &[f32], target: usize) -> f64 {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}

/// The next token of request `request` at decoding step `step`; `None` when the logits hold a
/// NaN.
pub fn choose(sampling: &Sampling, logits: &[f32], request: usize, step: usize) -> Option<usize> {
    match *sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::TopP {
            temperature,
            top_p,
            seed,
        } => {
            if logits.iter().any(|l| l.is_nan()) {
                return None;
            }
            let t = temperature as f64;
            let max = logits
                .iter()
                .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            // Most likely first; ties by id, so the order is total.
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0;
            let mut mass = 0.0;
            for p in &probs {
                kept += 1;
                mass += p.1 / total;
                if mass >= top_p as f64 {
                    break;
                }
            }
            let nucleus = &probs[..kept];
            let nucleus_total: f64 = nucleus.iter().map(|p| p.1).sum();
            let hash = counter_hash(seed, &[request as u64, step as u64]);
            // 53 random bits: a uniform draw in [0, 1).
            let u = (hash >> 11) as f64 / (1u64 << 53) as f64 * nucleus_total;
            let mut acc = 0.0;
            for p in nucleus {
                acc += p.1;
                if u < acc {
                    return Some(p.0);
                }
            }
            nucleus.last().map(|p| p.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_refuses_nan() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), Some(1));
        assert_eq!(argmax(&[0.0, f32::NAN]), None);
    }

    #[test]
    fn a_tiny_top_p_is_greedy_and_a_seed_repeats() {
        let logits = [0.1, 3.0, 0.2, 2.9, -1.0];
        for step in 0..20 {
            let s = Sampling::TopP {
                temperature: 1.0,
                top_p: 1e-6,
                seed: 7,
            };
            assert_eq!(choose(&s, &logits, 0, step), Some(1));
        }
        let s = Sampling::TopP {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let a: Vec<_> = (0..50).map(|i| choose(&s, &logits, 3, i)).collect();
        let b: Vec<_> = (0..50).map(|i| choose(&s, &logits, 3, i)).collect();
        assert_eq!(a, b);
        // Both likely tokens come up; the unlikely ones (p < 3% each) rarely.
        assert!(a.contains(&Some(1)) && a.contains(&Some(3)), "{a:?}");
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // p ≈ [0.47, 0.43, 0.06, 0.04]: top-p 0.8 keeps ids 0 and 1.
        let logits = [2.0, 1.9, 0.0, -0.4];
        let s = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.8,
            seed: 1,
        };
        for i in 0..200 {
            let t = choose(&s, &logits, 0, i).unwrap();
            assert!(t < 2, "drew {t} outside the nucleus");
        }
    }

    #[test]
    fn log_prob_matches_a_direct_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((log_prob(&logits, 2) - (3.0f64.exp() / z).ln()).abs() < 1e-12);
    }
}

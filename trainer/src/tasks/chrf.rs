//! ChrF (Popović 2015) as sacreBLEU computes it by default: character n-grams of orders 1 to 6
//! with whitespace removed, no word n-grams, beta = 2.
//!
//! For each order n the statistics are the hypothesis n-gram count (0 when the reference has no
//! n-gram of that order), the reference n-gram count and their clipped matches (sum over n-grams
//! of the smaller count). A corpus score sums the
//! statistics over sentences. Precision and recall are averaged over the orders where both the
//! hypothesis and the reference have n-grams, then combined as
//! `F = (1 + β²)·P·R / (β²·P + R)`, reported × 100.

use std::collections::HashMap;

/// The character n-gram orders.
pub const CHAR_ORDER: usize = 6;
/// Recall weighs β² = 4 times precision.
pub const BETA: f64 = 2.0;

/// Per order `[hypothesis n-grams, reference n-grams, matches]`.
pub type Stats = [[u64; 3]; CHAR_ORDER];

fn ngram_counts(chars: &[char], n: usize) -> HashMap<&[char], u64> {
    let mut counts = HashMap::new();
    if chars.len() >= n {
        for window in chars.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

/// The statistics of one sentence pair.
pub fn sentence_stats(hypothesis: &str, reference: &str) -> Stats {
    let hyp: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
    let reference: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    let mut stats = [[0u64; 3]; CHAR_ORDER];
    for (order, slot) in stats.iter_mut().enumerate() {
        let n = order + 1;
        let h = ngram_counts(&hyp, n);
        let r = ngram_counts(&reference, n);
        let matches: u64 = h
            .iter()
            .map(|(gram, count)| (*count).min(r.get(gram).copied().unwrap_or(0)))
            .sum();
        // An order the reference has no n-gram of counts none of the hypothesis's either.
        let hyp_count = if r.is_empty() { 0 } else { h.values().sum() };
        *slot = [hyp_count, r.values().sum(), matches];
    }
    stats
}

/// The ChrF score (0-100) of summed statistics.
pub fn score(stats: &Stats) -> f64 {
    let factor = BETA * BETA;
    let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0usize);
    for [hyp, reference, matches] in stats {
        if *hyp > 0 && *reference > 0 {
            precision += *matches as f64 / *hyp as f64;
            recall += *matches as f64 / *reference as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    precision /= orders as f64;
    recall /= orders as f64;
    if precision + recall == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * precision * recall / (factor * precision + recall)
}

/// Corpus ChrF of hypotheses against their references (one each).
pub fn corpus(hypotheses: &[String], references: &[String]) -> f64 {
    let mut total = [[0u64; 3]; CHAR_ORDER];
    for (h, r) in hypotheses.iter().zip(references) {
        let stats = sentence_stats(h, r);
        for (sum, add) in total.iter_mut().zip(stats) {
            for k in 0..3 {
                sum[k] += add[k];
            }
        }
    }
    score(&total)
}

/// Sentence ChrF.
pub fn sentence(hypothesis: &str, reference: &str) -> f64 {
    score(&sentence_stats(hypothesis, reference))
}

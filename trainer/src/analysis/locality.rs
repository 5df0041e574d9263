//! The local-attention-probability arithmetic: the local mass of one probability row, and the
//! reducer that accumulates it (and one row's heat maps) over layers, heads and rows.

use std::collections::BTreeMap;

use crate::backend::cpu::probe::{AttentionReducer, AttnKind, AttnSite};

/// Sum of the probability on keys `j` with `|j - query| < window` (`query` in key indices):
/// self-attention's local mass. With a causal mask the keys after the query hold 0, so this is
/// the mass on the `window` keys ending at the query.
pub fn local_mass_self(probs: &[f32], query: usize, window: usize) -> f64 {
    let lo = (query + 1).saturating_sub(window);
    let hi = (query + window).min(probs.len());
    probs
        .get(lo..hi)
        .map_or(0.0, |s| s.iter().map(|&p| p as f64).sum())
}

/// Sum of the probability on the last `window` keys: cross-attention's local mass (the encoder
/// positions nearest the decoder's first position).
pub fn local_mass_tail(probs: &[f32], window: usize) -> f64 {
    let lo = probs.len().saturating_sub(window);
    probs[lo..].iter().map(|&p| p as f64).sum()
}

/// Which queries of a site are reported: the site's query indices `first..first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRange {
    pub first: usize,
    pub count: usize,
}

/// The largest side of a heat map grid; longer sides are averaged into this many bins.
pub const HEATMAP_BINS: usize = 512;

/// A head-averaged attention matrix of one site, averaged into at most `HEATMAP_BINS` bins per
/// side: `values[qb * key_bins + kb]` is the mean probability over the cells of the bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub queries: usize,
    pub keys: usize,
    pub query_bins: usize,
    pub key_bins: usize,
    pub values: Vec<f64>,
}

impl Heatmap {
    fn new(queries: usize, keys: usize) -> Heatmap {
        let query_bins = queries.clamp(1, HEATMAP_BINS);
        let key_bins = keys.clamp(1, HEATMAP_BINS);
        Heatmap {
            queries,
            keys,
            query_bins,
            key_bins,
            values: vec![0.0; query_bins * key_bins],
        }
    }

    fn bin(index: usize, len: usize, bins: usize) -> usize {
        index * bins / len.max(1)
    }

    /// Cells per bin along one side.
    fn bin_sizes(len: usize, bins: usize) -> Vec<usize> {
        let mut sizes = vec![0usize; bins];
        for i in 0..len {
            sizes[Heatmap::bin(i, len, bins)] += 1;
        }
        sizes
    }
}

/// Accumulated local mass of one (attention kind, layer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSums {
    /// Sum over rows, heads and reported queries of the local mass.
    pub local_sum: f64,
    /// Number of (row, head, query) terms in `local_sum`.
    pub terms: u64,
    /// Per reported query (in order): the local mass summed over rows and heads.
    pub by_query: Vec<f64>,
    /// Rows summed into `by_query` (times heads gives its divisor).
    pub rows: u64,
    /// The largest `|sum of a probability row - 1|` over every query that sees a key.
    pub max_row_sum_error: f64,
    /// Queries that saw no key (their probabilities are all 0; not counted in `local_sum`).
    pub empty_queries: u64,
}

/// One head's partial result at one site.
pub struct HeadPartial {
    local_sum: f64,
    terms: u64,
    by_query: Vec<f64>,
    max_err: f64,
    empty: u64,
    heat: Option<Vec<f64>>,
}

/// Accumulates local masses per (kind, layer) and, for the first row of each batch when
/// `heatmaps` is set, the head-averaged heat maps of decoder self- and cross-attention.
pub struct LocalityReducer {
    pub window: usize,
    /// The reported queries of each kind (a kind not listed: every query of the site).
    pub ranges: BTreeMap<AttnKind, QueryRange>,
    /// Keep heat maps of batch row 0.
    pub heatmaps: bool,
    pub sums: BTreeMap<(AttnKind, usize), LayerSums>,
    pub maps: BTreeMap<(AttnKind, usize), Heatmap>,
}

impl LocalityReducer {
    pub fn new(window: usize, ranges: BTreeMap<AttnKind, QueryRange>) -> LocalityReducer {
        LocalityReducer {
            window,
            ranges,
            heatmaps: false,
            sums: BTreeMap::new(),
            maps: BTreeMap::new(),
        }
    }

    fn range(&self, site: &AttnSite) -> QueryRange {
        self.ranges.get(&site.kind).copied().unwrap_or(QueryRange {
            first: 0,
            count: site.mask.q_len,
        })
    }

    fn wants_heatmap(&self, site: &AttnSite) -> bool {
        self.heatmaps && site.row == 0 && site.kind != AttnKind::EncoderSelf
    }
}

impl AttentionReducer for LocalityReducer {
    type Partial = HeadPartial;

    fn start(&self, site: &AttnSite, _head: usize) -> HeadPartial {
        let heat = self.wants_heatmap(site).then(|| {
            let h = Heatmap::new(site.mask.q_len, site.mask.k_len);
            vec![0.0; h.values.len()]
        });
        HeadPartial {
            local_sum: 0.0,
            terms: 0,
            by_query: vec![0.0; self.range(site).count],
            max_err: 0.0,
            empty: 0,
            heat,
        }
    }

    fn block(&self, partial: &mut HeadPartial, site: &AttnSite, first_query: usize, probs: &[f32]) {
        let lk = site.mask.k_len;
        if lk == 0 {
            return;
        }
        let range = self.range(site);
        let (q_len, qb, kb) = (
            site.mask.q_len,
            site.mask.q_len.clamp(1, HEATMAP_BINS),
            lk.clamp(1, HEATMAP_BINS),
        );
        for (b, row) in probs.chunks(lk).enumerate() {
            let i = first_query + b;
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            if sum == 0.0 {
                partial.empty += 1;
                continue;
            }
            partial.max_err = partial.max_err.max((sum - 1.0).abs());
            if i >= range.first && i < range.first + range.count {
                let local = match site.kind {
                    AttnKind::Cross => local_mass_tail(row, self.window),
                    AttnKind::DecoderSelf | AttnKind::EncoderSelf => {
                        local_mass_self(row, i, self.window)
                    }
                };
                partial.local_sum += local;
                partial.terms += 1;
                partial.by_query[i - range.first] += local;
            }
            if let Some(heat) = partial.heat.as_mut() {
                let base = Heatmap::bin(i, q_len, qb) * kb;
                for (j, &p) in row.iter().enumerate() {
                    heat[base + Heatmap::bin(j, lk, kb)] += p as f64;
                }
            }
        }
    }

    fn finish(&mut self, site: &AttnSite, heads: Vec<HeadPartial>) {
        let n_heads = heads.len();
        let count = self.range(site).count;
        let entry = self.sums.entry((site.kind, site.layer)).or_default();
        if entry.by_query.len() != count {
            entry.by_query = vec![0.0; count];
        }
        entry.rows += 1;
        let mut heat_sum: Option<Vec<f64>> = None;
        for h in heads {
            entry.local_sum += h.local_sum;
            entry.terms += h.terms;
            entry.max_row_sum_error = entry.max_row_sum_error.max(h.max_err);
            entry.empty_queries += h.empty;
            for (a, b) in entry.by_query.iter_mut().zip(&h.by_query) {
                *a += b;
            }
            if let Some(heat) = h.heat {
                match heat_sum.as_mut() {
                    Some(acc) => acc.iter_mut().zip(&heat).for_each(|(a, b)| *a += b),
                    None => heat_sum = Some(heat),
                }
            }
        }
        if let Some(acc) = heat_sum {
            let mut map = Heatmap::new(site.mask.q_len, site.mask.k_len);
            let qs = Heatmap::bin_sizes(map.queries, map.query_bins);
            let ks = Heatmap::bin_sizes(map.keys, map.key_bins);
            for (qb, &qn) in qs.iter().enumerate() {
                for (kb, &kn) in ks.iter().enumerate() {
                    let cells = (qn * kn * n_heads).max(1) as f64;
                    map.values[qb * map.key_bins + kb] = acc[qb * map.key_bins + kb] / cells;
                }
            }
            self.maps.insert((site.kind, site.layer), map);
        }
    }
}

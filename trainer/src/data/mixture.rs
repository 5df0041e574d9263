//! Mixture sampling: examples drawn by source weight instead of uniformly over rows.
//!
//! A recipe's `[data.mixture]` table gives a weight per key. A key covers a source whose name
//! it equals, or whose name's part before the first `_` it equals (`cot` covers `cot_zsopt` and
//! `cot_fsnoopt`); an exact match wins over a prefix match. The key `default`, when given,
//! covers every source no other key covers; without it such a source is an error that names it.
//! A key that covers no source of the corpus is reported, not an error.
//!
//! The sources a key covers form one group, and the key's weight is the group's: the weights
//! are normalized over the groups present, and inside a group examples are drawn uniformly,
//! so its sources weigh by their size within it.
//!
//! Draw `j` of the run picks a group from `counter_hash(seed, [CHOICE, j])` against the
//! cumulative normalized weights. The `c`-th draw from group `g` takes position `c mod n_g` of
//! that group's epoch `c div n_g`, a seeded [`Permutation`] of its examples keyed by
//! `(seed, g, epoch)`. The whole sampler state is therefore the number of draws: the data
//! cursor's `epoch · n + position`, with `n` the corpus's examples (an epoch of a mixture run
//! is `n` draws, not a pass over every row). A loader started from a cursor replays the group
//! choices of the draws before it (one hash each; no example is read) to find each group's
//! count, and continues exactly where the uninterrupted run would be.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Cursor, DataError, ExampleSource, Permutation};
use crate::rng::counter_hash;

/// Key for the sources no other key covers.
pub const DEFAULT_KEY: &str = "default";
/// Tags mixed into the mixture's hashes so they never collide with the uniform order's.
const CHOICE_STREAM: u64 = 0x4d49_5843;
const GROUP_ORDER: u64 = 0x4d49_5847;

/// Weights per source key, as the recipe's `[data.mixture]` table gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Mixture {
    pub weights: BTreeMap<String, f64>,
}

impl Mixture {
    pub fn new<K: Into<String>>(weights: impl IntoIterator<Item = (K, f64)>) -> Mixture {
        Mixture {
            weights: weights.into_iter().map(|(k, w)| (k.into(), w)).collect(),
        }
    }

    /// Checks the weights alone: at least one, each finite and `>= 0`, not all zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.is_empty() {
            return Err("[data.mixture] gives no weights".into());
        }
        for (key, &w) in &self.weights {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "[data.mixture] weight of `{key}` must be a finite number >= 0, got {w}"
                ));
            }
        }
        if self.weights.values().all(|&w| w == 0.0) {
            return Err("[data.mixture] weights are all 0".into());
        }
        Ok(())
    }

    /// The key that covers `source`: an exact match, else the part before the first `_`, else
    /// `default`.
    pub fn key_for(&self, source: &str) -> Option<&str> {
        let prefix = source.split('_').next().unwrap_or(source);
        [source, prefix, DEFAULT_KEY]
            .into_iter()
            .find_map(|k| self.weights.get_key_value(k).map(|(k, _)| k.as_str()))
    }
}

/// The sources one key covers and the examples they hold.
#[derive(Clone, PartialEq)]
pub struct MixtureGroup {
    pub key: String,
    /// The weight as given.
    pub weight: f64,
    /// The weight normalized over the groups present.
    pub share: f64,
    /// Source names in the group, sorted.
    pub sources: Vec<String>,
    /// Corpus indices of the group's examples, ascending (32 bits: half the memory of a
    /// corpus-sized list, and no examples corpus comes near 2³² rows).
    indices: Vec<u32>,
}

impl MixtureGroup {
    pub fn examples(&self) -> u64 {
        self.indices.len() as u64
    }
}

/// A mixture resolved against a corpus: the groups present, in key order, and the cumulative
/// shares the group choice is drawn against.
#[derive(Clone, PartialEq)]
pub struct MixturePlan {
    pub groups: Vec<MixtureGroup>,
    /// Keys that cover no source of the corpus.
    pub unused_keys: Vec<String>,
    /// Cumulative shares; 1.0 from the last group with a weight on.
    cumulative: Vec<f64>,
    /// Examples in the corpus (`n` of the cursor).
    total: u64,
}

// The weights are validated finite, so equality is reflexive.
impl Eq for MixturePlan {}

impl std::fmt::Debug for MixturePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<_> = self
            .groups
            .iter()
            .map(|g| (&g.key, g.share, g.examples()))
            .collect();
        f.debug_struct("MixturePlan")
            .field("groups", &groups)
            .field("unused_keys", &self.unused_keys)
            .finish_non_exhaustive()
    }
}

impl MixturePlan {
    /// Reads every example's source once and groups them by key. Fails on a source no key
    /// covers (naming it) and when every group present has weight 0.
    pub fn build(source: &dyn ExampleSource, mixture: &Mixture) -> Result<MixturePlan, DataError> {
        let bad = |problem: String| DataError::Mixture {
            place: source.place(),
            problem,
        };
        mixture.validate().map_err(bad)?;
        if source.len() > u64::from(u32::MAX) {
            return Err(bad(format!(
                "mixture sampling reads at most {} examples, the corpus holds {}",
                u32::MAX,
                source.len()
            )));
        }
        let mut members: BTreeMap<&str, (Vec<String>, Vec<u32>)> = BTreeMap::new();
        let mut uncovered: BTreeMap<String, u64> = BTreeMap::new();
        let mut last: Option<(String, Option<&str>)> = None;
        for index in 0..source.len() {
            let name = source.source_name(index)?;
            // Rows of one source are usually adjacent: reuse the previous row's lookup.
            let key = match &last {
                Some((prev, key)) if *prev == name => *key,
                _ => {
                    let key = mixture.key_for(&name);
                    last = Some((name.clone(), key));
                    key
                }
            };
            match key {
                Some(key) => {
                    let (sources, indices) = members.entry(key).or_default();
                    if !sources.contains(&name) {
                        sources.push(name);
                    }
                    indices.push(index as u32);
                }
                None => *uncovered.entry(name).or_default() += 1,
            }
        }
        if !uncovered.is_empty() {
            let list: Vec<String> = uncovered
                .iter()
                .map(|(name, n)| format!("`{name}` ({n} examples)"))
                .collect();
            return Err(bad(format!(
                "no [data.mixture] weight covers source {}; give it a weight (its name, or the part before its first `_`) or set `{DEFAULT_KEY}`",
                list.join(", ")
            )));
        }
        let present: f64 = members.keys().map(|k| mixture.weights[*k]).sum();
        if present <= 0.0 {
            return Err(bad(format!(
                "the [data.mixture] weights of the sources present ({}) are all 0",
                members.keys().copied().collect::<Vec<_>>().join(", ")
            )));
        }
        let groups: Vec<MixtureGroup> = members
            .into_iter()
            .map(|(key, (mut sources, indices))| {
                sources.sort();
                let weight = mixture.weights[key];
                MixtureGroup {
                    key: key.to_string(),
                    weight,
                    share: weight / present,
                    sources,
                    indices,
                }
            })
            .collect();
        let mut cumulative = Vec::with_capacity(groups.len());
        let mut sum = 0.0;
        for g in &groups {
            sum += g.weight;
            cumulative.push(sum / present);
        }
        if let Some(last_on) = groups.iter().rposition(|g| g.weight > 0.0) {
            for c in &mut cumulative[last_on..] {
                *c = 1.0;
            }
        }
        let unused_keys = mixture
            .weights
            .keys()
            .filter(|k| !groups.iter().any(|g| &g.key == *k))
            .cloned()
            .collect();
        Ok(MixturePlan {
            groups,
            unused_keys,
            cumulative,
            total: source.len(),
        })
    }

    /// Group chosen by draw `draw` of the run.
    pub fn choice(&self, seed: u64, draw: u64) -> usize {
        let u =
            (counter_hash(seed, &[CHOICE_STREAM, draw]) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.groups.len() - 1)
    }

    /// The corpus index of the `count`-th draw (0-based) from group `group`.
    pub fn example_at(&self, seed: u64, group: usize, count: u64) -> u64 {
        let indices = &self.groups[group].indices;
        let n = indices.len() as u64;
        let permutation = Permutation::new(
            n,
            counter_hash(seed, &[GROUP_ORDER, group as u64, count / n]),
        );
        u64::from(indices[permutation.get(count % n) as usize])
    }

    /// Examples in the corpus the plan was built over.
    pub fn examples(&self) -> u64 {
        self.total
    }

    /// Draws made by the time the data stands at `cursor`.
    pub fn draws_at(&self, cursor: Cursor) -> u64 {
        cursor.epoch * self.total + cursor.position
    }

    /// One line per group (share, examples, sources) and one for keys that matched nothing.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{:<12} weight {} (share {:.4}), {} examples from {}",
                    g.key,
                    g.weight,
                    g.share,
                    g.examples(),
                    g.sources.join(", ")
                )
            })
            .collect();
        if !self.unused_keys.is_empty() {
            lines.push(format!(
                "no source in the corpus for: {}",
                self.unused_keys.join(", ")
            ));
        }
        lines
    }
}

/// Where a mixture stream stands: draws made and draws taken from each group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixtureState {
    plan: Arc<MixturePlan>,
    seed: u64,
    draws: u64,
    taken: Vec<u64>,
}

impl MixtureState {
    /// The stream of `plan` under `seed`, before its first draw.
    pub fn new(plan: Arc<MixturePlan>, seed: u64) -> MixtureState {
        let taken = vec![0; plan.groups.len()];
        MixtureState {
            plan,
            seed,
            draws: 0,
            taken,
        }
    }

    /// The stream as it stands after `draws` draws (replayed from the start).
    pub fn at(plan: Arc<MixturePlan>, seed: u64, draws: u64) -> MixtureState {
        let mut state = MixtureState::new(plan, seed);
        state.advance_to(draws);
        state
    }

    /// Makes the choices up to `draws` without reading examples (no-op when already past).
    pub fn advance_to(&mut self, draws: u64) {
        while self.draws < draws {
            let g = self.plan.choice(self.seed, self.draws);
            self.taken[g] += 1;
            self.draws += 1;
        }
    }

    /// The next draw's corpus index.
    pub fn next_index(&mut self) -> u64 {
        let g = self.plan.choice(self.seed, self.draws);
        let index = self.plan.example_at(self.seed, g, self.taken[g]);
        self.taken[g] += 1;
        self.draws += 1;
        index
    }

    pub fn draws(&self) -> u64 {
        self.draws
    }

    pub fn plan(&self) -> &MixturePlan {
        &self.plan
    }

    /// Draws taken from each group, by key.
    pub fn taken(&self) -> BTreeMap<String, u64> {
        self.plan
            .groups
            .iter()
            .zip(&self.taken)
            .map(|(g, &n)| (g.key.clone(), n))
            .collect()
    }

    /// The realized share of each group so far (empty before the first draw).
    pub fn proportions(&self) -> BTreeMap<String, f64> {
        if self.draws == 0 {
            return BTreeMap::new();
        }
        self.plan
            .groups
            .iter()
            .zip(&self.taken)
            .map(|(g, &n)| (g.key.clone(), n as f64 / self.draws as f64))
            .collect()
    }
}

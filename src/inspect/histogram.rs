//! Text histograms of example lengths: equal-width buckets between the smallest and largest
//! value, drawn as bars scaled to the fullest bucket.

use std::io::{self, Write};

use serde::Serialize;

/// A distribution of non-negative integers (token counts), summarized for printing and JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    /// Equal-width buckets covering `min..=max`; empty when there are no values.
    pub buckets: Vec<Bucket>,
}

/// Values in `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub lo: u64,
    pub hi: u64,
    pub count: u64,
}

/// Widest bar, in characters.
const BAR_WIDTH: u64 = 40;

impl Histogram {
    /// Buckets `values` into at most `bins` equal-width buckets. A constant distribution (every
    /// packed sequence has the same length) is one bucket.
    pub fn new(values: &[u32], bins: usize) -> Histogram {
        let bins = bins.max(1) as u64;
        let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max()) else {
            return Histogram {
                count: 0,
                min: 0,
                max: 0,
                mean: 0.0,
                buckets: Vec::new(),
            };
        };
        let (min, max) = (u64::from(min), u64::from(max));
        let width = (max - min + 1).div_ceil(bins);
        let used = (max - min) / width + 1;
        let mut buckets: Vec<Bucket> = (0..used)
            .map(|b| Bucket {
                lo: min + b * width,
                hi: (min + (b + 1) * width - 1).min(max),
                count: 0,
            })
            .collect();
        let mut sum = 0u64;
        for &v in values {
            let v = u64::from(v);
            sum += v;
            // `used` buckets cover min..=max, so the index is always in range.
            if let Some(bucket) = buckets.get_mut(((v - min) / width) as usize) {
                bucket.count += 1;
            }
        }
        Histogram {
            count: values.len() as u64,
            min,
            max,
            mean: sum as f64 / values.len() as f64,
            buckets,
        }
    }

    /// Writes one line per bucket, indented by `indent` spaces: range, bar, count and share.
    pub fn render(&self, out: &mut dyn Write, indent: usize) -> io::Result<()> {
        let pad = " ".repeat(indent);
        if self.count == 0 {
            return writeln!(out, "{pad}(no examples)");
        }
        writeln!(
            out,
            "{pad}min {}  mean {:.1}  max {}",
            self.min, self.mean, self.max
        )?;
        let fullest = self
            .buckets
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(1)
            .max(1);
        let label_width = self.max.to_string().len();
        for b in &self.buckets {
            let range = if b.lo == b.hi {
                format!("{:>label_width$}", b.lo)
            } else {
                format!("{:>label_width$}..={:<label_width$}", b.lo, b.hi)
            };
            let bar = bar(b.count, fullest);
            let share = 100.0 * b.count as f64 / self.count as f64;
            writeln!(
                out,
                "{pad}{range:>width$} │{bar:<bar_width$} {count} ({share:.1}%)",
                width = 2 * label_width + 3,
                bar_width = BAR_WIDTH as usize,
                count = super::numbers::thousands(b.count),
            )?;
        }
        Ok(())
    }
}

/// A bar of `count / fullest` × [`BAR_WIDTH`] characters in eighths, so small buckets still show.
fn bar(count: u64, fullest: u64) -> String {
    const PARTS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let eighths = (count * BAR_WIDTH * 8).div_ceil(fullest);
    let mut out = "█".repeat((eighths / 8) as usize);
    let rest = (eighths % 8) as usize;
    if rest > 0 {
        out.push(PARTS[rest - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_and_count_everything() {
        let values: Vec<u32> = (1..=100).collect();
        let h = Histogram::new(&values, 10);
        assert_eq!(h.buckets.len(), 10);
        assert_eq!(
            h.buckets[0],
            Bucket {
                lo: 1,
                hi: 10,
                count: 10
            }
        );
        assert_eq!(
            h.buckets[9],
            Bucket {
                lo: 91,
                hi: 100,
                count: 10
            }
        );
        assert_eq!(h.buckets.iter().map(|b| b.count).sum::<u64>(), 100);
        assert!((h.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn constant_values_are_one_bucket() {
        let h = Histogram::new(&[2048; 5], 10);
        assert_eq!(
            h.buckets,
            vec![Bucket {
                lo: 2048,
                hi: 2048,
                count: 5
            }]
        );
        let mut out = Vec::new();
        h.render(&mut out, 2).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("2048 │████████████████████████████████████████ 5 (100.0%)"),
            "{text}"
        );
    }

    #[test]
    fn ranges_narrower_than_the_bin_count_and_empty_input() {
        let h = Histogram::new(&[3, 4, 4, 6], 10);
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.buckets[1].count, 2);
        assert_eq!(h.buckets[2].count, 0);
        let empty = Histogram::new(&[], 10);
        assert!(empty.buckets.is_empty());
        let mut out = Vec::new();
        empty.render(&mut out, 0).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "(no examples)\n");
    }

    #[test]
    fn small_buckets_still_show_a_sliver() {
        assert_eq!(bar(1, 1000), "▏");
        assert_eq!(bar(0, 1000), "");
        assert_eq!(bar(1000, 1000).chars().count(), BAR_WIDTH as usize);
    }
}

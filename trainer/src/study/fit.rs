//! Fits the report draws: a power law `y = A x^(-alpha)` by least squares in log-log space, and
//! a parabola in log-parameters per FLOPs budget whose minimum is the compute-optimal size
//! (Chinchilla's approach 2). Every fit keeps its residuals.

use serde::{Deserialize, Serialize};

/// The fewest points a fit needs before the report draws conclusions from it.
pub const MIN_POINTS: usize = 3;

/// `y = a * x^(-alpha)`, fitted as `ln y = ln a - alpha ln x`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    pub alpha: f64,
    pub a: f64,
    /// Coefficient of determination in log space.
    pub r2: f64,
    /// `ln y - ln fitted` per point, in the points' order.
    pub residuals: Vec<f64>,
    /// Root mean square of the residuals.
    pub rms_residual: f64,
    pub points: usize,
}

impl PowerLaw {
    /// Fits the points with positive coordinates; `None` with fewer than 2 such points or when
    /// every x is the same.
    pub fn fit(points: &[(f64, f64)]) -> Option<PowerLaw> {
        let logs: Vec<(f64, f64)> = points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite())
            .map(|(x, y)| (x.ln(), y.ln()))
            .collect();
        if logs.len() < 2 || logs.len() != points.len() {
            return None;
        }
        let n = logs.len() as f64;
        let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
        let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let syy: f64 = logs.iter().map(|p| (p.1 - my).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let residuals: Vec<f64> = logs
            .iter()
            .map(|(x, y)| y - (intercept + slope * x))
            .collect();
        let sse: f64 = residuals.iter().map(|r| r * r).sum();
        Some(PowerLaw {
            alpha: -slope,
            a: intercept.exp(),
            r2: if syy > 0.0 { 1.0 - sse / syy } else { 1.0 },
            rms_residual: (sse / n).sqrt(),
            residuals,
            points: logs.len(),
        })
    }

    pub fn predict(&self, x: f64) -> f64 {
        self.a * x.powf(-self.alpha)
    }
}

/// `y = c2 t^2 + c1 t + c0` with `t = ln x - center`, fitted by least squares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parabola {
    pub c2: f64,
    pub c1: f64,
    pub c0: f64,
    /// The mean `ln x` the fit is centred on.
    pub center: f64,
    /// `y - fitted` per point.
    pub residuals: Vec<f64>,
    pub rms_residual: f64,
    pub points: usize,
}

impl Parabola {
    /// Fits `(x, y)` with x > 0 in `ln x`; `None` with fewer than 3 distinct x.
    pub fn fit(points: &[(f64, f64)]) -> Option<Parabola> {
        if points
            .iter()
            .any(|(x, y)| !(*x > 0.0 && x.is_finite() && y.is_finite()))
        {
            return None;
        }
        let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        if xs.len() < 3 {
            return None;
        }
        let n = points.len() as f64;
        let center = points.iter().map(|p| p.0.ln()).sum::<f64>() / n;
        // Normal equations for (c0, c1, c2).
        let mut m = [[0.0f64; 4]; 3];
        for &(x, y) in points {
            let t = x.ln() - center;
            let powers = [1.0, t, t * t];
            for (row, &pi) in m.iter_mut().zip(&powers) {
                for (cell, &pj) in row.iter_mut().zip(&powers) {
                    *cell += pi * pj;
                }
                row[3] += pi * y;
            }
        }
        let [c0, c1, c2] = solve3(m)?;
        let residuals: Vec<f64> = points
            .iter()
            .map(|&(x, y)| {
                let t = x.ln() - center;
                y - (c2 * t * t + c1 * t + c0)
            })
            .collect();
        let sse: f64 = residuals.iter().map(|r| r * r).sum();
        Some(Parabola {
            c2,
            c1,
            c0,
            center,
            rms_residual: (sse / n).sqrt(),
            residuals,
            points: points.len(),
        })
    }

    pub fn predict(&self, x: f64) -> f64 {
        let t = x.ln() - self.center;
        self.c2 * t * t + self.c1 * t + self.c0
    }

    /// The x of the minimum and the fitted y there; `None` when the parabola opens downwards (no
    /// minimum).
    pub fn minimum(&self) -> Option<(f64, f64)> {
        if self.c2 <= 0.0 {
            return None;
        }
        let t = -self.c1 / (2.0 * self.c2);
        let x = (t + self.center).exp();
        Some((x, self.predict(x)))
    }
}

/// Gaussian elimination with partial pivoting on an augmented 3 x 4 matrix.
fn solve3(mut m: [[f64; 4]; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col];
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let factor = row[col] / pivot_row[col];
                for (cell, &p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *cell -= factor * p;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

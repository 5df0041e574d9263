//! Heat maps as PNG images, without text: rows are queries (first at the top), columns keys
//! (first at the left), each bin a square of pixels. The colour of a bin is
//! `sqrt(value / max)` of the map through the viridis colour map (dark blue for 0, yellow for the
//! map's largest value); the square root keeps the small probabilities far from the diagonal
//! visible. Axes and scale are written beside the images in the JSON report.

use super::locality::Heatmap;

/// Side of the image the grid is scaled up towards (a whole number of pixels per bin).
const TARGET_PIXELS: usize = 512;

/// Viridis at 9 evenly spaced points, interpolated linearly between them.
const VIRIDIS: [[f64; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

fn colour(t: f64) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (VIRIDIS[i][c] + (VIRIDIS[i + 1][c] - VIRIDIS[i][c]) * f).round() as u8;
    }
    out
}

/// Pixels per bin: the whole number that brings the longer side closest to `TARGET_PIXELS`
/// without exceeding it (at least 1).
pub fn pixels_per_bin(map: &Heatmap) -> usize {
    (TARGET_PIXELS / map.query_bins.max(map.key_bins)).max(1)
}

/// The PNG bytes of a heat map; its size is `key_bins · s` by `query_bins · s` pixels, `s =
/// pixels_per_bin(map)`.
pub fn encode(map: &Heatmap) -> Result<Vec<u8>, png::EncodingError> {
    let s = pixels_per_bin(map);
    let (w, h) = (map.key_bins * s, map.query_bins * s);
    let max = map.values.iter().copied().fold(0.0f64, f64::max);
    let mut pixels = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let v = map.values[(y / s) * map.key_bins + x / s];
            let t = if max > 0.0 { (v / max).sqrt() } else { 0.0 };
            pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour(t));
        }
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w as u32, h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_ends() {
        assert_eq!(colour(0.0), [68, 1, 84]);
        assert_eq!(colour(1.0), [253, 231, 37]);
        assert_eq!(colour(f64::NAN), [68, 1, 84]);
    }
}

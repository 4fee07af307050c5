//! Image analysis on one small copy of the decoded image (at most 512 px on the long side): a
//! 64-bit DCT perceptual hash, a sharpness score, exposure figures, dominant colours and a
//! ThumbHash placeholder; and near-duplicate grouping of perceptual hashes.

use std::fmt;

use fast_image_resize::Resizer;
use serde::{Deserialize, Serialize};

use crate::decode::Decoded;
use crate::error::ImageError;
use crate::format::Format;
use crate::resize::{self, AREA};

/// Long side of the analysis copy. Sharpness is measured at this scale, so it is comparable
/// across source resolutions.
const ANALYSIS_SIDE: u32 = 512;
/// The perceptual hash looks at a 32×32 greyscale thumbnail and keeps the 8×8 lowest frequencies.
const HASH_SIDE: usize = 32;
/// Number of dominant colours sought.
const COLOURS: usize = 5;
/// ThumbHash encodes an image of at most 100×100 pixels.
const THUMBHASH_SIDE: u32 = 100;

/// Hamming distance at or below which two perceptual hashes are near-duplicates. Chosen on the
/// fixtures: re-encoding at JPEG q60, halving the size and +10 % brightness stay at or below 2;
/// different photos are at 32 or more. 10 leaves room for heavier edits (crops of a few %,
/// watermarks) without merging different shots.
pub const NEAR_DUPLICATE_DISTANCE: u32 = 10;

/// A 64-bit perceptual hash (DCT of a 32×32 greyscale thumbnail). Serialized as 16 hex digits, so
/// JavaScript readers do not lose bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PHash(pub u64);

impl PHash {
    /// Number of differing bits (0 = same picture, 64 = opposite).
    pub fn distance(self, other: PHash) -> u32 {
        (self.0 ^ other.0).count_ones()
    }

    /// True when the distance is within [`NEAR_DUPLICATE_DISTANCE`].
    pub fn is_near_duplicate(self, other: PHash) -> bool {
        self.distance(other) <= NEAR_DUPLICATE_DISTANCE
    }
}

impl fmt::Display for PHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for PHash {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(PHash)
    }
}

impl Serialize for PHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Exposure figures on the analysis copy (Rec. 601 luma of the sRGB values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Mean luma, 0 (black) … 1 (white).
    pub mean_luma: f64,
    /// Share of pixels with luma ≥ 250/255 (blown highlights).
    pub clipped_highlights: f64,
    /// Share of pixels with luma ≤ 5/255 (crushed shadows).
    pub crushed_shadows: f64,
    /// A verdict from the figures above.
    pub verdict: ExposureVerdict,
}

/// Whether a photo looks under-, well or over-exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureVerdict {
    /// Dark: low mean luma or many crushed shadows.
    Under,
    /// Neither.
    Normal,
    /// Bright: high mean luma or many clipped highlights.
    Over,
}

/// One dominant colour and the share of the picture it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DominantColour {
    /// sRGB.
    pub rgb: [u8; 3],
    /// `#rrggbb`.
    pub hex: String,
    /// Share of the (opaque) pixels, 0…1; the shares of all colours sum to 1.
    pub share: f64,
}

/// The result of [`analyze`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Detected format of the source.
    pub format: Format,
    /// Upright width.
    pub width: u32,
    /// Upright height.
    pub height: u32,
    /// Whether some pixel is not opaque.
    pub has_alpha: bool,
    /// Perceptual hash for near-duplicate detection.
    pub phash: PHash,
    /// Variance of the Laplacian of the greyscale analysis copy: higher is sharper. Below ~100
    /// usually means a blurred or out-of-focus photo (flat graphics also score low).
    pub sharpness: f64,
    /// Exposure figures.
    pub exposure: Exposure,
    /// Up to five dominant colours, largest share first.
    pub dominant_colours: Vec<DominantColour>,
    /// A [ThumbHash](https://evanw.github.io/thumbhash/) of the picture (about 25 bytes, base64
    /// with padding): a page draws a blurred placeholder of the right aspect ratio and colours
    /// from it while the variants load (`thumbHashToDataURL` in the browser, or any decoder).
    pub thumbhash: String,
}

/// The least upright size a decode must reach (for [`crate::decode_scaled`]) for [`analyze`]
/// to see its full 512 px copy, given the stored `width × height`. The copy's long side is
/// what counts, whichever way the photo is turned, so the answer asks the same of both sides:
/// the short side scaled as the long side reaches 512. A 4240 × 2832 JPEG then decodes at
/// ⅛ scale (530 × 354) instead of ¼.
pub fn analysis_decode_size(width: u32, height: u32) -> (u32, u32) {
    let (long, short) = (width.max(height), width.min(height));
    if long <= ANALYSIS_SIDE {
        // The whole image: no scale reaches this on both sides except the full one.
        return (long, long);
    }
    let q = (u64::from(ANALYSIS_SIDE) * u64::from(short)).div_ceil(u64::from(long.max(1))) as u32;
    (q.max(1), q.max(1))
}

/// Analyses a decoded image. Works on one small copy, so it costs a few ms after the decode.
pub fn analyze(decoded: &Decoded) -> Result<Analysis, ImageError> {
    let image = &decoded.image;
    let (w, h) = resize::fit_within(image.width(), image.height(), ANALYSIS_SIDE, ANALYSIS_SIDE);
    let mut resizer = Resizer::new();
    let small = resize::resize(&mut resizer, image, w, h, AREA)?;
    let colours = dominant_colours(&small);
    let thumbhash = thumbhash_of(&mut resizer, &small)?;
    let rgb = resize::flatten_onto_white(small);
    let luma = Luma::from_rgb(&rgb);
    let (width, height) = decoded.source_size();
    Ok(Analysis {
        format: decoded.header.format,
        width,
        height,
        has_alpha: decoded.has_alpha(),
        phash: phash_of_luma(&luma),
        sharpness: luma.laplacian_variance(),
        exposure: luma.exposure(),
        dominant_colours: colours,
        thumbhash,
    })
}

/// The ThumbHash of the analysis copy, scaled to fit 100×100 (alpha kept), base64.
fn thumbhash_of(resizer: &mut Resizer, small: &image::DynamicImage) -> Result<String, ImageError> {
    use base64::Engine;
    let (w, h) = resize::fit_within(small.width(), small.height(), THUMBHASH_SIDE, THUMBHASH_SIDE);
    let tiny = resize::resize(resizer, small, w, h, AREA)?.into_rgba8();
    let hash = thumbhash::rgba_to_thumb_hash(w as usize, h as usize, tiny.as_raw());
    Ok(base64::engine::general_purpose::STANDARD.encode(hash))
}

/// Perceptual hash of a decoded image alone (same value as [`Analysis::phash`]).
pub fn phash(decoded: &Decoded) -> Result<PHash, ImageError> {
    analyze(decoded).map(|a| a.phash)
}

/// A greyscale plane in 0…255.
struct Luma {
    width: usize,
    height: usize,
    values: Vec<f32>,
}

impl Luma {
    fn from_rgb(rgb: &image::RgbImage) -> Self {
        let values = rgb
            .as_raw()
            .chunks_exact(3)
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .collect();
        Luma { width: rgb.width() as usize, height: rgb.height() as usize, values }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    /// Area-average downsample to `side × side` (the source is at least that large or is
    /// stretched by nearest sampling when smaller).
    fn thumbnail(&self, side: usize) -> Vec<f32> {
        let mut out = vec![0f32; side * side];
        for ty in 0..side {
            let y0 = ty * self.height / side;
            let y1 = ((ty + 1) * self.height / side).max(y0 + 1).min(self.height);
            for tx in 0..side {
                let x0 = tx * self.width / side;
                let x1 = ((tx + 1) * self.width / side).max(x0 + 1).min(self.width);
                let mut sum = 0f32;
                for y in y0..y1 {
                    for x in x0..x1 {
                        sum += self.at(x, y);
                    }
                }
                out[ty * side + tx] = sum / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
        out
    }

    fn laplacian_variance(&self) -> f64 {
        if self.width < 3 || self.height < 3 {
            return 0.0;
        }
        let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
        for y in 1..self.height - 1 {
            for x in 1..self.width - 1 {
                let l =
                    self.at(x - 1, y) + self.at(x + 1, y) + self.at(x, y - 1) + self.at(x, y + 1) - 4.0 * self.at(x, y);
                let l = f64::from(l);
                sum += l;
                sum_sq += l * l;
                n += 1.0;
            }
        }
        let mean = sum / n;
        sum_sq / n - mean * mean
    }

    fn exposure(&self) -> Exposure {
        let n = self.values.len().max(1) as f64;
        let mean = self.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n / 255.0;
        let clipped = self.values.iter().filter(|&&v| v >= 250.0).count() as f64 / n;
        let crushed = self.values.iter().filter(|&&v| v <= 5.0).count() as f64 / n;
        let verdict = if mean < 0.22 || crushed > 0.25 {
            ExposureVerdict::Under
        } else if mean > 0.78 || clipped > 0.25 {
            ExposureVerdict::Over
        } else {
            ExposureVerdict::Normal
        };
        Exposure { mean_luma: mean, clipped_highlights: clipped, crushed_shadows: crushed, verdict }
    }
}

/// pHash: 32×32 greyscale, 2-D DCT-II, the 8×8 lowest frequencies compared with their median
/// (the DC term is left out of the median, as it only carries the mean brightness).
fn phash_of_luma(luma: &Luma) -> PHash {
    let n = HASH_SIDE;
    let pixels = luma.thumbnail(n);
    // cos table: c[u][x] = cos((2x+1)uπ / 2n), for the 8 lowest u.
    let mut cos = [[0f64; HASH_SIDE]; 8];
    for (u, row) in cos.iter_mut().enumerate() {
        for (x, c) in row.iter_mut().enumerate() {
            *c = ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * n) as f64).cos();
        }
    }
    // Rows first (8 frequencies per row), then columns.
    let mut rows = vec![[0f64; 8]; n];
    for (y, out) in rows.iter_mut().enumerate() {
        for (u, o) in out.iter_mut().enumerate() {
            *o = (0..n).map(|x| f64::from(pixels[y * n + x]) * cos[u][x]).sum();
        }
    }
    let mut coeffs = [0f64; 64];
    for v in 0..8 {
        for u in 0..8 {
            coeffs[v * 8 + u] = (0..n).map(|y| rows[y][u] * cos[v][y]).sum();
        }
    }
    let mut ac: Vec<f64> = coeffs[1..].to_vec();
    ac.sort_by(f64::total_cmp);
    let median = (ac[31] + ac[32]) / 2.0;
    let bits = coeffs.iter().enumerate().fold(0u64, |acc, (i, &c)| if c > median { acc | (1 << i) } else { acc });
    PHash(bits)
}

/// Dominant colours: median cut into up to [`COLOURS`] boxes, refined by a few k-means steps.
/// Deterministic (no random seeding). Transparent pixels are left out.
fn dominant_colours(small: &image::DynamicImage) -> Vec<DominantColour> {
    const MAX_SAMPLES: usize = 16_384;
    let (channels, raw) = match small {
        image::DynamicImage::ImageRgba8(b) => (4, b.as_raw().as_slice()),
        image::DynamicImage::ImageRgb8(b) => (3, b.as_raw().as_slice()),
        _ => return Vec::new(),
    };
    let total = raw.len() / channels;
    let step = total.div_ceil(MAX_SAMPLES).max(1);
    let samples: Vec<[f32; 3]> = raw
        .chunks_exact(channels)
        .step_by(step)
        .filter(|p| channels == 3 || p[3] >= 128)
        .map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])
        .collect();
    if samples.is_empty() {
        return Vec::new();
    }
    let mut centres = median_cut(&samples, COLOURS);
    let mut counts = vec![0usize; centres.len()];
    for _ in 0..6 {
        let mut sums = vec![[0f64; 3]; centres.len()];
        counts.iter_mut().for_each(|c| *c = 0);
        for s in &samples {
            let k = nearest(&centres, s);
            counts[k] += 1;
            for c in 0..3 {
                sums[k][c] += f64::from(s[c]);
            }
        }
        for (k, centre) in centres.iter_mut().enumerate() {
            if counts[k] > 0 {
                for c in 0..3 {
                    centre[c] = (sums[k][c] / counts[k] as f64) as f32;
                }
            }
        }
    }
    let n = samples.len() as f64;
    let mut out: Vec<DominantColour> = centres
        .iter()
        .zip(&counts)
        .filter(|(_, count)| **count > 0)
        .map(|(centre, &count)| {
            let rgb = centre.map(|v| v.round().clamp(0.0, 255.0) as u8);
            DominantColour { rgb, hex: format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]), share: count as f64 / n }
        })
        .collect();
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    out
}

fn nearest(centres: &[[f32; 3]], s: &[f32; 3]) -> usize {
    let dist = |c: &[f32; 3]| (0..3).map(|i| (c[i] - s[i]).powi(2)).sum::<f32>();
    centres.iter().enumerate().min_by(|a, b| dist(a.1).total_cmp(&dist(b.1))).map(|(i, _)| i).unwrap_or(0)
}

/// Splits the box with the widest channel range at its median until there are `k` boxes (or no
/// box can be split); returns each box's mean.
fn median_cut(samples: &[[f32; 3]], k: usize) -> Vec<[f32; 3]> {
    let mut boxes: Vec<Vec<[f32; 3]>> = vec![samples.to_vec()];
    while boxes.len() < k {
        let range = |b: &Vec<[f32; 3]>, c: usize| {
            let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(lo, hi), s| (lo.min(s[c]), hi.max(s[c])));
            hi - lo
        };
        let Some((index, channel, width)) = boxes
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= 2)
            .flat_map(|(i, b)| (0..3).map(move |c| (i, c, range(b, c))))
            .max_by(|a, b| a.2.total_cmp(&b.2))
        else {
            break;
        };
        if width <= 0.0 {
            break;
        }
        let mut b = boxes.swap_remove(index);
        b.sort_by(|x, y| x[channel].total_cmp(&y[channel]));
        let upper = b.split_off(b.len() / 2);
        boxes.push(b);
        boxes.push(upper);
    }
    boxes
        .iter()
        .map(|b| {
            let n = b.len().max(1) as f32;
            let sum = b.iter().fold([0f32; 3], |acc, s| [acc[0] + s[0], acc[1] + s[1], acc[2] + s[2]]);
            sum.map(|v| v / n)
        })
        .collect()
}

/// Groups near-duplicate images by perceptual hash. Pairwise comparison with union-find: for a
/// portfolio of a few hundred images that is tens of thousands of XOR+popcounts (microseconds),
/// so a BK-tree would only add code. Grouping is transitive: A~B and B~C put A, B, C together.
#[derive(Debug, Clone)]
pub struct NearDuplicates<Id> {
    items: Vec<(Id, PHash)>,
    max_distance: u32,
}

impl<Id: Clone> NearDuplicates<Id> {
    /// An empty set using [`NEAR_DUPLICATE_DISTANCE`].
    pub fn new() -> Self {
        Self::with_max_distance(NEAR_DUPLICATE_DISTANCE)
    }

    /// An empty set with a custom threshold (hamming distance, inclusive).
    pub fn with_max_distance(max_distance: u32) -> Self {
        NearDuplicates { items: Vec::new(), max_distance }
    }

    /// Adds one image.
    pub fn add(&mut self, id: Id, hash: PHash) {
        self.items.push((id, hash));
    }

    /// Groups of two or more near-duplicates, each in insertion order; groups ordered by their
    /// first member. Images with no near-duplicate are not listed.
    pub fn groups(&self) -> Vec<Vec<Id>> {
        let n = self.items.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for i in 0..n {
            for j in i + 1..n {
                if self.items[i].1.distance(self.items[j].1) <= self.max_distance {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
            }
        }
        let mut groups: Vec<(usize, Vec<Id>)> = Vec::new();
        for i in 0..n {
            let r = root(&mut parent, i);
            match groups.iter_mut().find(|(root, _)| *root == r) {
                Some((_, members)) => members.push(self.items[i].0.clone()),
                None => groups.push((r, vec![self.items[i].0.clone()])),
            }
        }
        groups.into_iter().filter(|(_, m)| m.len() > 1).map(|(_, m)| m).collect()
    }
}

impl<Id: Clone> Default for NearDuplicates<Id> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_transitively_and_skips_singletons() {
        let mut set = NearDuplicates::new();
        set.add("a", PHash(0));
        set.add("b", PHash(0b111)); // 3 from a
        set.add("c", PHash(u64::MAX));
        set.add("d", PHash(0b111_1111_1111)); // 8 from b, 11 from a
        assert_eq!(set.groups(), vec![vec!["a", "b", "d"]]);
    }

    #[test]
    fn the_analysis_decode_reaches_512_on_the_long_side_either_way_up() {
        assert_eq!(analysis_decode_size(4240, 2832), (342, 342));
        assert_eq!(analysis_decode_size(2832, 4240), (342, 342));
        assert_eq!(analysis_decode_size(400, 300), (400, 400));
        assert_eq!(analysis_decode_size(100_000, 1), (1, 1));
        // libjpeg-turbo's n/8 sizes: the smallest n with both sides ≥ q keeps the long side ≥ 512.
        for (w, h) in [(4240u32, 2832u32), (6000, 4000), (4000, 4000), (1024, 700), (5000, 600)] {
            let (q, _) = analysis_decode_size(w, h);
            let n = (1..=8u32).find(|n| w * n >= q * 8 && h * n >= q * 8).unwrap();
            assert!(w.max(h) * n >= 512 * 8, "{w}x{h} at {n}/8");
        }
    }

    #[test]
    fn phash_serializes_as_hex() {
        let json = serde_json::to_string(&PHash(0xdead_beef)).unwrap();
        assert_eq!(json, "\"00000000deadbeef\"");
        assert_eq!(serde_json::from_str::<PHash>(&json).unwrap(), PHash(0xdead_beef));
    }

    #[test]
    fn median_cut_separates_two_colours() {
        let mut samples = vec![[255.0, 0.0, 0.0]; 300];
        samples.extend(vec![[0.0, 0.0, 255.0]; 100]);
        let img = image::RgbImage::from_fn(20, 20, |x, y| {
            if (y * 20 + x) < 300 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) }
        });
        let colours = dominant_colours(&image::DynamicImage::ImageRgb8(img));
        assert_eq!(colours[0].rgb, [255, 0, 0]);
        assert!((colours[0].share - 0.75).abs() < 1e-9);
        let sum: f64 = colours.iter().map(|c| c.share).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert!(median_cut(&samples, 5).len() <= 3);
        assert_eq!(colours.len(), 2, "{colours:?}");
    }
}

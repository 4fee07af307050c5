//! One decode per photo for its two jobs.
//!
//! A portfolio asks for an `image.analyze` and an `image.variants` job per photo, one
//! after the other in the same batch, so the two usually run in the same worker within a
//! second of each other. Decoding a 12 MP JPEG is the largest single cost of either job,
//! so the decoded pixels are shared: the first job to need an upload's pixels decodes them
//! (once, whoever else is waiting: a single flight) and leaves them here for a short while;
//! the sibling takes them if they are large enough for it (the variants need their widest
//! width, the analysis only a 512 px copy).
//!
//! The analysis needs far less than the variants, so on its own it decodes at ⅛ scale. It
//! decodes at the variants' scale instead only while variants jobs are running in this
//! process (their widest width, seen within [`HINT_TTL`]), and stops doing so as soon as
//! one of the decodes it made larger for a sibling expires unused.
//!
//! An entry is identified by the object key and the SHA-256 of the bytes both jobs read,
//! so a replaced object is never served from the other's pixels. It is dropped once both
//! kinds have taken it, after [`TTL`], or, oldest first, when the entries hold more than
//! their byte cap (the pixels a job holds count against the memory budget separately).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::Decoded;
#[cfg(test)]
use crate::ImageError;

/// How long decoded pixels wait for their sibling job.
const TTL: Duration = Duration::from_secs(30);
/// How long a variants job's widest width steers the analysis decodes.
const HINT_TTL: Duration = Duration::from_secs(60);
/// At most this many entries (in flight or decoded): a portfolio's photos come in pairs,
/// so a worker running two to four jobs has one or two pairs open at a time. More only
/// holds pixels nobody will take (measured: with all analyses queued before all variants,
/// 8 entries and 128 MiB let the worker's peak RSS reach 368 MB instead of ~190 MB).
const MAX_ENTRIES: usize = 4;

/// Which job kind took an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taker {
    Analysis = 1,
    Variants = 2,
}

type Cell = Arc<OnceCell<Arc<Decoded>>>;

struct Entry {
    key: String,
    sha256: String,
    /// The upright size asked of the decoder: the pixels are at least this large, or the
    /// whole image.
    need: (u32, u32),
    cell: Cell,
    /// `Taker` bits of the jobs that took it.
    taken: u8,
    /// Made larger than the analysis needed, for a variants job expected next.
    for_sibling: bool,
    at: Instant,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.cell.get().map_or(0, |d| d.image.as_bytes().len())
    }

    /// Whether the entry's pixels are (or will be) at least `need`.
    fn covers(&self, need: (u32, u32)) -> bool {
        match self.cell.get() {
            Some(d) => {
                let whole = (d.width(), d.height()) == d.source_size();
                whole || (d.width() >= need.0 && d.height() >= need.1)
            }
            None => self.need.0 >= need.0 && self.need.1 >= need.1,
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    /// The widest variant width recently asked for, and when.
    hint: Option<(u32, Instant)>,
}

/// Decoded uploads shared between the two image jobs of this process.
pub(crate) struct DecodeShare {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl std::fmt::Debug for DecodeShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeShare").field("max_bytes", &self.max_bytes).finish_non_exhaustive()
    }
}

impl DecodeShare {
    /// Holds at most `max_bytes` of decoded pixels.
    pub(crate) fn new(max_bytes: usize) -> Self {
        DecodeShare { inner: Mutex::new(Inner::default()), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A variants job whose widest width is `widest` is running: analyses decode for it.
    pub(crate) fn expect_variants(&self, widest: u32) {
        let mut inner = self.lock();
        let now = Instant::now();
        let w = match inner.hint {
            Some((w, at)) if now.duration_since(at) < HINT_TTL => w.max(widest),
            _ => widest,
        };
        inner.hint = Some((w, now));
    }

    /// What an analysis that needs `need` should decode on a miss: `need`, or enough for
    /// the variants expected next as well (and whether it is the latter).
    pub(crate) fn analysis_plan(&self, need: (u32, u32)) -> ((u32, u32), bool) {
        let inner = self.lock();
        match inner.hint {
            Some((w, at)) if at.elapsed() < HINT_TTL && w > need.0 => ((w, need.1), true),
            _ => (need, false),
        }
    }

    /// The pixels of `key` (whose bytes hash to `sha256`), at least `need` large: from an
    /// entry (waiting for its decode when it is in flight), or decoded by `decode` at
    /// `plan` (at least `need`) and left for the other job. `decode` runs at most once
    /// per entry; if it fails, the entry is dropped and the error returned.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn get<F, Fut, E>(
        &self,
        key: &str,
        sha256: &str,
        need: (u32, u32),
        plan: (u32, u32),
        for_sibling: bool,
        taker: Taker,
        decode: F,
    ) -> Result<Arc<Decoded>, E>
    where
        F: FnOnce((u32, u32)) -> Fut,
        Fut: std::future::Future<Output = Result<Decoded, E>>,
    {
        let (cell, plan) = {
            let mut inner = self.lock();
            self.evict(&mut inner);
            let found = inner.entries.iter_mut().find(|e| e.key == key && e.sha256 == sha256 && e.covers(need));
            match found {
                Some(e) => {
                    e.taken |= taker as u8;
                    (e.cell.clone(), e.need)
                }
                None => {
                    let cell: Cell = Arc::new(OnceCell::new());
                    inner.entries.push(Entry {
                        key: key.to_owned(),
                        sha256: sha256.to_owned(),
                        need: plan,
                        cell: cell.clone(),
                        taken: taker as u8,
                        for_sibling,
                        at: Instant::now(),
                    });
                    (cell, plan)
                }
            }
        };
        let result = cell.get_or_try_init(move || async move { decode(plan).await.map(Arc::new) }).await.cloned();
        let mut inner = self.lock();
        match &result {
            Err(_) => inner.entries.retain(|e| !Arc::ptr_eq(&e.cell, &cell)),
            Ok(_) => {
                // Both kinds have it: nobody else will ask.
                inner.entries.retain(|e| !(Arc::ptr_eq(&e.cell, &cell) && e.taken == 3));
                self.evict(&mut inner);
            }
        }
        result
    }

    /// Drops expired entries, then the oldest decoded ones while over the caps. A decode
    /// made larger for a sibling that never came turns the hint off.
    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        let mut mispredicted = false;
        inner.entries.retain(|e| {
            let keep = now.duration_since(e.at) < TTL;
            if !keep && e.for_sibling && e.taken & Taker::Variants as u8 == 0 {
                mispredicted = true;
            }
            keep
        });
        loop {
            let total: usize = inner.entries.iter().map(Entry::bytes).sum();
            if total <= self.max_bytes && inner.entries.len() <= MAX_ENTRIES {
                break;
            }
            // Entries are in insertion order: the first decoded one is the oldest.
            let Some(i) = inner.entries.iter().position(|e| e.cell.initialized()) else { break };
            let e = inner.entries.remove(i);
            if e.for_sibling && e.taken & Taker::Variants as u8 == 0 {
                mispredicted = true;
            }
        }
        if mispredicted {
            inner.hint = None;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn decoded(w: u32, h: u32) -> Decoded {
        let bytes = {
            let img = image::RgbImage::new(w * 4, h * 4);
            let mut out = Vec::new();
            image::DynamicImage::ImageRgb8(img)
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            out
        };
        let mut d = crate::decode(&bytes, &crate::Limits::default()).unwrap();
        d.image = image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h));
        d
    }

    #[tokio::test]
    async fn the_sibling_takes_the_pixels_and_they_are_decoded_once() {
        let share = DecodeShare::new(64 << 20);
        let decodes = AtomicUsize::new(0);
        let decode = |_plan| {
            decodes.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ImageError>(decoded(200, 100)) }
        };
        let a = share.get("k", "s", (200, 0), (200, 0), false, Taker::Variants, decode).await.unwrap();
        assert_eq!(share.len(), 1);
        let b = share.get("k", "s", (60, 30), (60, 30), false, Taker::Analysis, decode).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(decodes.load(Ordering::SeqCst), 1);
        assert_eq!(share.len(), 0, "both kinds took it: dropped");
    }

    #[tokio::test]
    async fn too_small_or_other_bytes_are_decoded_again() {
        let share = DecodeShare::new(64 << 20);
        let decodes = AtomicUsize::new(0);
        let decode = |plan: (u32, u32)| {
            decodes.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, ImageError>(decoded(plan.0.max(50), 50)) }
        };
        share.get("k", "s", (50, 50), (50, 50), false, Taker::Analysis, decode).await.unwrap();
        let big = share.get("k", "s", (400, 0), (400, 0), false, Taker::Variants, decode).await.unwrap();
        assert_eq!(big.width(), 400);
        share.get("k", "other", (50, 50), (50, 50), false, Taker::Analysis, decode).await.unwrap();
        assert_eq!(decodes.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_waiter_shares_a_decode_in_flight_and_errors_are_not_kept() {
        let share = Arc::new(DecodeShare::new(64 << 20));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let share = share.clone();
            tokio::spawn(async move {
                share
                    .get("k", "s", (100, 0), (100, 50), false, Taker::Variants, |_| async {
                        rx.await.ok();
                        Ok::<_, ImageError>(decoded(100, 50))
                    })
                    .await
            })
        };
        while share.len() == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let share = share.clone();
            tokio::spawn(async move {
                share
                    .get("k", "s", (10, 10), (10, 10), false, Taker::Analysis, |_| async {
                        Err(ImageError::Internal("must not decode".into()))
                    })
                    .await
            })
        };
        tx.send(()).unwrap();
        let (a, b) = (first.await.unwrap().unwrap(), second.await.unwrap().unwrap());
        assert!(Arc::ptr_eq(&a, &b));

        let err = share
            .get("bad", "s", (1, 1), (1, 1), false, Taker::Analysis, |_| async {
                Err(ImageError::Corrupt("no".into()))
            })
            .await;
        assert!(err.is_err());
        assert_eq!(share.len(), 0);
    }

    #[test]
    fn the_hint_steers_analyses_until_a_decode_for_a_sibling_goes_unused() {
        let share = DecodeShare::new(1);
        assert_eq!(share.analysis_plan((342, 342)), ((342, 342), false));
        share.expect_variants(2048);
        assert_eq!(share.analysis_plan((342, 342)), ((2048, 342), true));
        // An entry made for a sibling, evicted by the byte cap before the sibling came.
        let cell: Cell = Arc::new(OnceCell::new_with(Some(Arc::new(decoded(2048, 1000)))));
        let mut inner = share.lock();
        inner.entries.push(Entry {
            key: "k".into(),
            sha256: "s".into(),
            need: (2048, 342),
            cell,
            taken: Taker::Analysis as u8,
            for_sibling: true,
            at: Instant::now(),
        });
        share.evict(&mut inner);
        drop(inner);
        assert_eq!(share.analysis_plan((342, 342)), ((342, 342), false));
    }
}

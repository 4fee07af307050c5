//! Partitioned queues: one logical queue spread over several hash tags, so that one
//! hot queue can use several Redis Cluster shards (several cores).
//!
//! A queue declared with `n > 1` partitions is `n` physical queues, each an ordinary
//! queue with its own hash tag (`<queue>#<s>`, see [`partition_queues`]) and its own keys,
//! scripts and counters. Nothing else changes: a queue declared without partitions (or
//! with 1) is the one physical queue it always was. Where a job goes is chosen at
//! enqueue ([`pick`]): by a key, so every job of one key lands in one partition and
//! keeps its order, else round-robin.

/// Most partitions a queue may have.
pub const MAX_PARTITIONS: u32 = 64;

/// Redis Cluster slots.
const SLOTS: u32 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster maps keys to slots with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The cluster slot of the hash tag `tag` (the text between `{` and `}`).
pub fn slot(tag: &str) -> u32 {
    u32::from(crc16(tag.as_bytes())) % SLOTS
}

/// Physical queue names of `queue` with `n` partitions, in partition order.
///
/// `n <= 1`: just `queue`. Otherwise `<queue>#<s>` for `n` suffixes `s` chosen so that
/// partition `i`'s slot falls in the `i`-th of `n` equal slot ranges: a cluster whose
/// slots are split evenly over its primaries (as `redis-cli --cluster create` does)
/// gets the partitions spread over them, one per primary when `n` is the number of
/// primaries. The names depend on `queue` and `n` only, so every process agrees.
pub fn partition_queues(queue: &str, n: u32) -> Vec<String> {
    if n <= 1 {
        return vec![queue.to_owned()];
    }
    let n = n.min(MAX_PARTITIONS);
    let mut out = Vec::with_capacity(n as usize);
    let mut s: u32 = 0;
    for i in 0..n {
        let (lo, hi) = (i * SLOTS / n, (i + 1) * SLOTS / n);
        // A suffix lands in a range of size SLOTS/n with chance 1/n: a few hundred tries
        // at most in practice; the bound keeps a pathological name finite.
        let found = (s..s + 100_000).find(|c| {
            let sl = slot(&format!("{queue}#{c}"));
            sl >= lo && sl < hi
        });
        let c = found.unwrap_or(s);
        out.push(format!("{queue}#{c}"));
        s = c + 1;
    }
    out
}

/// Whether `physical` is a partition name (`<queue>#<digits>`), and of which queue.
pub fn logical_queue(physical: &str) -> &str {
    match physical.rsplit_once('#') {
        Some((q, s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => q,
        _ => physical,
    }
}

/// FNV-1a: a stable hash, the same in every process and version.
fn fnv1a(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition (index below `n`) of a job with partition key `key`, or, without a
/// key, the next of `round_robin` (a counter the caller advances).
pub fn pick(n: usize, key: Option<&str>, round_robin: &std::sync::atomic::AtomicUsize) -> usize {
    match key {
        Some(k) => (fnv1a(k) % n as u64) as usize,
        None => round_robin.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n,
    }
}

/// Parses a partition declaration `queue=n[,queue=n...]` (the `FLEET_PARTITIONS`
/// setting of `fleetctl`).
pub fn parse_spec(spec: &str) -> Result<Vec<(String, u32)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (q, n) = part.split_once('=').ok_or_else(|| format!("{part:?} is not queue=partitions"))?;
            let n: u32 = n.trim().parse().map_err(|_| format!("{n:?} is not a number in {part:?}"))?;
            Ok((q.trim().to_owned(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn partitions_spread_over_even_slot_ranges() {
        assert_eq!(partition_queues("q", 1), vec!["q".to_owned()]);
        let names = partition_queues("emails", 3);
        assert_eq!(names.len(), 3);
        for (i, n) in names.iter().enumerate() {
            let s = slot(n);
            assert!(s >= i as u32 * SLOTS / 3 && s < (i as u32 + 1) * SLOTS / 3, "{n} in slot {s}");
            assert_eq!(logical_queue(n), "emails");
        }
        assert_eq!(names, partition_queues("emails", 3));
        assert_eq!(logical_queue("plain"), "plain");
    }

    #[test]
    fn keys_pick_one_partition_and_none_round_robin() {
        let rr = std::sync::atomic::AtomicUsize::new(0);
        let a = pick(3, Some("tenant-a"), &rr);
        assert!((0..20).all(|_| pick(3, Some("tenant-a"), &rr) == a));
        let spread: std::collections::HashSet<usize> = (0..3).map(|_| pick(3, None, &rr)).collect();
        assert_eq!(spread.len(), 3);
    }
}

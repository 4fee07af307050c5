//! The operators' data API, used by `fleetctl` and the admin HTTP API and never by a
//! worker's hot path: queues and their counters, jobs by state, dead letters grouped by
//! reason, replay and purge of dead letters, live workers.

use crate::client::Client;
use crate::error::Result;
use crate::keys::QueueKeys;
use crate::scripts;
use crate::state::{DeadLetter, JobState, QueueStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Exactly these ids (other filters are ignored).
    pub ids: Vec<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only those whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Only those that died before this time (ms since the epoch).
    pub died_before: Option<u64>,
    /// At most this many (default: all).
    pub limit: Option<usize>,
}

impl DeadFilter {
    fn matches(&self, d: &DeadLetter) -> bool {
        // An undecodable envelope's kind is `(undecodable)`, so `kind` can select those too.
        let kind_ok = self.kind.as_deref().is_none_or(|k| d.job.kind() == k);
        let reason_ok = self.reason_contains.as_deref().is_none_or(|r| d.reason.contains(r));
        let age_ok = self.died_before.is_none_or(|t| d.died_at < t);
        kind_ok && reason_ok && age_ok
    }
}

/// A live worker instance on a queue.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// Instance id (host, pid, random part).
    pub instance: String,
    /// Last heartbeat, ms since the epoch.
    pub last_seen: u64,
    /// Jobs it held at its last heartbeat.
    pub running: u64,
    /// The first 20 of them.
    pub jobs: Vec<String>,
}

/// One queue at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct QueueOverview {
    /// Queue name.
    pub queue: String,
    /// Its counters.
    pub stats: QueueStats,
    /// Age of the oldest ready job, ms.
    pub lag_ms: u64,
    /// Whether it is paused.
    pub paused: bool,
    /// Live worker instances.
    pub workers: usize,
}

/// A job as listed.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// Its score in the state's set (due time, lease end or death time, ms), if any.
    pub at: Option<u64>,
}

impl Client {
    /// Every key matching `pattern` (SCAN, 1000 at a time, on every primary of a cluster:
    /// for operators and tools, never a worker's hot path).
    pub async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>> {
        // On a cluster, every primary is scanned: keys of different queues live on different nodes.
        let keys = self.connection().scan_match(pattern, 1000).await?;
        Ok(keys.into_iter().map(lossy).collect())
    }

    /// Every queue under this prefix that has counters.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let keys = self.scan_keys(&format!("{}:{{*}}:stats", self.prefix())).await?;
        let mut out: Vec<String> =
            keys.iter().filter_map(|k| Some(k[k.find('{')? + 1..k.find('}')?].to_owned())).collect();
        // The partitions of a queue this client knows as partitioned show as that queue.
        for q in &mut out {
            let logical = crate::partitions::logical_queue(q);
            if logical != q.as_str() && self.partitions(logical).len() > 1 {
                *q = logical.to_owned();
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The ready lists of `queue`, highest priority first: per priority the list of jobs
    /// without a tenant, then the lists of the first 100 tenants in the ring and of the
    /// tenants parked at their cap.
    pub(crate) async fn ready_lists(&self, queue: &str) -> Result<Vec<String>> {
        let k = self.keys(queue);
        let mut conn = self.connection();
        let tpark = format!("{}tpark", k.jobs.trim_end_matches("jobs"));
        let parked: Vec<(String, String)> =
            redis::cmd("HSCAN").arg(&tpark).arg(0).arg("COUNT").arg(100).query_async::<(u64, _)>(&mut conn).await?.1;
        // Suspects (jobs reaped from a stopped worker, waiting to run alone) come first.
        let mut out = vec![k.suspects.clone()];
        for (p, base) in k.ready.iter().enumerate() {
            out.push(base.clone());
            let ring: Vec<String> =
                redis::cmd("LRANGE").arg(format!("{base}:ring")).arg(0).arg(99).query_async(&mut conn).await?;
            let digit = char::from(b'0' + p as u8);
            let at_cap = parked.iter().filter(|(_, pris)| pris.contains(digit)).map(|(t, _)| t.clone());
            for t in ring.into_iter().chain(at_cap).filter(|t| !t.is_empty()) {
                let list = format!("{base}:t:{t}");
                if !out.contains(&list) {
                    out.push(list);
                }
            }
        }
        Ok(out)
    }

    /// Age of the oldest ready job of `queue` (how long it has waited since it was due),
    /// in ms; 0 when nothing is ready. Looks at the head of each priority list.
    pub async fn lag_ms(&self, queue: &str) -> Result<u64> {
        let k = self.keys(queue);
        let mut conn = self.connection();
        let now = crate::envelope::now_ms();
        let mut lag = 0;
        for list in &self.ready_lists(queue).await? {
            let head: Option<Vec<u8>> = redis::cmd("LINDEX").arg(list).arg(0).query_async(&mut conn).await?;
            if let Some(id) = head {
                let env: Option<Vec<u8>> = redis::cmd("HGET").arg(&k.jobs).arg(&id).query_async(&mut conn).await?;
                if let Some(e) = env.and_then(|e| serde_json::from_slice::<crate::Envelope>(&e).ok()) {
                    lag = lag.max(now.saturating_sub(e.run_at.max(e.enqueued_at)));
                }
            }
        }
        Ok(lag)
    }

    /// One queue for a dashboard: counters, lag, paused, live workers.
    /// On a partitioned queue: the sums of its partitions' counters, the largest lag,
    /// paused if any partition is, and the live instances serving any partition.
    pub async fn overview(&self, queue: &str) -> Result<QueueOverview> {
        let parts = self.partitions(queue);
        if parts.len() > 1 {
            let (mut lag_ms, mut paused, mut workers) = (0, false, std::collections::BTreeSet::new());
            for p in &parts {
                lag_ms = lag_ms.max(self.lag_ms(p).await?);
                paused |= self.is_paused(p).await?;
                workers.extend(self.workers(p).await?.into_iter().map(|w| w.instance));
            }
            return Ok(QueueOverview {
                queue: queue.to_owned(),
                stats: self.stats(queue).await?,
                lag_ms,
                paused,
                workers: workers.len(),
            });
        }
        Ok(QueueOverview {
            queue: queue.to_owned(),
            stats: self.stats(queue).await?,
            lag_ms: self.lag_ms(queue).await?,
            paused: self.is_paused(queue).await?,
            workers: self.workers(queue).await?.len(),
        })
    }

    /// The overview of each partition of `queue` (of `queue` alone when it has none).
    pub async fn partition_overviews(&self, queue: &str) -> Result<Vec<QueueOverview>> {
        let mut out = Vec::new();
        for p in self.partitions(queue) {
            out.push(Box::pin(self.overview(&p)).await?);
        }
        Ok(out)
    }

    /// Every queue's overview.
    pub async fn overviews(&self) -> Result<Vec<QueueOverview>> {
        let mut out = Vec::new();
        for q in self.queues().await? {
            out.push(self.overview(&q).await?);
        }
        Ok(out)
    }

    /// Counters of every queue.
    pub async fn all_stats(&self) -> Result<Vec<(String, QueueStats)>> {
        let mut out = Vec::new();
        for q in self.queues().await? {
            let s = self.stats(&q).await?;
            out.push((q, s));
        }
        Ok(out)
    }

    /// Jobs of `queue` in `state`, `limit` from `offset` (ready: in run order; scheduled and
    /// retrying: soonest first; running: by lease end; dead: newest first; succeeded: by expiry).
    pub async fn jobs_in_state(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobSummary>> {
        let k = self.keys(queue);
        let mut conn = self.connection();
        let window = ((offset + limit) * 10).min(100_000) as isize;
        // Ids are read as bytes (one written by something other than Fleet must not fail
        // the listing) and shown lossily.
        let page =
            |v: Vec<(Vec<u8>, f64)>| v.into_iter().map(|(id, s)| (lossy(id), Some(s as u64))).collect::<Vec<_>>();
        let ids: Vec<(String, Option<u64>)> = match state {
            JobState::Ready => {
                let mut all = Vec::new();
                for list in &self.ready_lists(queue).await? {
                    if all.len() >= offset + limit {
                        break;
                    }
                    let ids: Vec<Vec<u8>> =
                        redis::cmd("LRANGE").arg(list).arg(0).arg(offset + limit).query_async(&mut conn).await?;
                    all.extend(ids.into_iter().map(|i| (lossy(i), None)));
                }
                all
            }
            JobState::Scheduled | JobState::Retrying => {
                // The set mixes scheduled and retrying jobs: read a bounded window and filter.
                page(
                    redis::cmd("ZRANGE")
                        .arg(&k.sched)
                        .arg(0)
                        .arg(window)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await?,
                )
            }
            JobState::Running => page(
                redis::cmd("ZRANGE")
                    .arg(&k.leases)
                    .arg(offset)
                    .arg(offset + limit)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?,
            ),
            JobState::Dead => page(
                redis::cmd("ZRANGE")
                    .arg(&k.dead)
                    .arg(offset)
                    .arg(offset + limit)
                    .arg("REV")
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?,
            ),
            JobState::Succeeded | JobState::Cancelled | JobState::Expired => page(
                redis::cmd("ZRANGE").arg(&k.done).arg(0).arg(window).arg("WITHSCORES").query_async(&mut conn).await?,
            ),
            // No set holds the jobs whose state field is garbage.
            JobState::Unknown => Vec::new(),
        };
        let mut out = Vec::new();
        for (id, at) in ids {
            let Some(job) = self.job(queue, &id).await? else { continue };
            // A dead letter whose state field is garbage is still listed with the dead (as
            // `unknown`): it is in the dead-letter set and counted there.
            let listed = job.state == state || (state == JobState::Dead && job.state == JobState::Unknown);
            if !listed {
                continue;
            }
            out.push(JobSummary { id, kind: job.kind().to_owned(), state: job.state, attempts: job.attempts, at });
        }
        let skip = if matches!(state, JobState::Running | JobState::Dead) { 0 } else { offset };
        Ok(out.into_iter().skip(skip).take(limit).collect())
    }

    /// Dead letters of `queue` matching `filter`, newest first.
    pub async fn dead_matching(&self, queue: &str, filter: &DeadFilter) -> Result<Vec<DeadLetter>> {
        if !filter.ids.is_empty() {
            let mut out = Vec::new();
            for id in &filter.ids {
                if let Some(job) = self.job(queue, id).await?
                    && job.state == JobState::Dead
                {
                    let died: Option<f64> = redis::cmd("ZSCORE")
                        .arg(self.keys(queue).dead)
                        .arg(id)
                        .query_async(&mut self.connection())
                        .await?;
                    let reason = job.last_error();
                    out.push(DeadLetter { id: id.clone(), died_at: died.unwrap_or(0.0) as u64, reason, job });
                }
            }
            return Ok(out);
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.dead_letters(queue, offset, 500).await?;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            for d in page {
                if filter.matches(&d) {
                    out.push(d);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Dead letters of `queue` counted by reason (the first line, digits folded so the
    /// same error with different numbers groups together), most frequent first.
    pub async fn dead_by_reason(&self, queue: &str) -> Result<Vec<(String, usize)>> {
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for d in self.dead_matching(queue, &DeadFilter::default()).await? {
            let line = d.reason.lines().next().unwrap_or("").to_owned();
            let folded: String = line.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
            *groups.entry(folded).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = groups.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(v)
    }

    /// Replays the dead letters matching `filter`: back to ready with fresh attempts.
    /// With `per_second`, replays are paced (in chunks) so a recovering service is not
    /// flooded; replayed jobs also go through their kinds' limits as they run.
    pub async fn replay(&self, queue: &str, filter: &DeadFilter, per_second: Option<u32>) -> Result<usize> {
        let ids = self.dead_ids(queue, filter).await?;
        self.dead_op(queue, "replay", &ids, per_second).await
    }

    /// Deletes the dead letters matching `filter` (only those; nothing else is touched).
    pub async fn purge(&self, queue: &str, filter: &DeadFilter) -> Result<usize> {
        let ids = self.dead_ids(queue, filter).await?;
        self.dead_op(queue, "purge", &ids, None).await
    }

    /// The ids `filter` selects. Ids named exactly go to the script as they are (it skips
    /// those that are not dead), so replay and purge by id never depend on decoding a record.
    async fn dead_ids(&self, queue: &str, filter: &DeadFilter) -> Result<Vec<String>> {
        if !filter.ids.is_empty() {
            return Ok(filter.ids.clone());
        }
        Ok(self.dead_matching(queue, filter).await?.into_iter().map(|d| d.id).collect())
    }

    async fn dead_op(&self, queue: &str, op: &str, ids: &[String], per_second: Option<u32>) -> Result<usize> {
        let k: QueueKeys = self.keys(queue);
        let chunk = per_second.map(|r| (r as usize).clamp(1, 200)).unwrap_or(200);
        let mut moved = 0;
        for (i, part) in ids.chunks(chunk).enumerate() {
            if i > 0 && per_second.is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut inv = k.invoke(&scripts::DEAD_LETTERS);
            inv.arg(op);
            for id in part {
                inv.arg(id);
            }
            let n: usize = inv.invoke_async(&mut self.connection()).await?;
            moved += n;
        }
        Ok(moved)
    }

    /// Worker instances that heartbeat on `queue`, most recent first.
    pub async fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>> {
        let v: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys(queue).workers)
            .arg(0)
            .arg(-1)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await?;
        let mut out = Vec::with_capacity(v.len());
        for (instance, s) in v {
            let instance = lossy(instance);
            let info: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(self.keys(queue).workerjobs)
                .arg(&instance)
                .query_async(&mut self.connection())
                .await?;
            let info: serde_json::Value = info.and_then(|i| serde_json::from_slice(&i).ok()).unwrap_or_default();
            let jobs = info["ids"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            out.push(WorkerInfo { instance, last_seen: s as u64, running: info["count"].as_u64().unwrap_or(0), jobs });
        }
        Ok(out)
    }

    /// Whether `queue` is paused.
    pub async fn is_paused(&self, queue: &str) -> Result<bool> {
        let v: Option<Vec<u8>> =
            redis::cmd("HGET").arg(self.keys(queue).conf).arg("paused").query_async(&mut self.connection()).await?;
        Ok(v.as_deref() == Some(b"1".as_slice()))
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

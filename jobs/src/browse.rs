//! Browsing a queue's jobs by state, filtered (kind, tenant, text in args or error, time
//! range) a page at a time, and acting on one job (retry now, delete): for the admin API
//! and the dashboard, never a worker's hot path.
//!
//! Redis holds no index by kind, tenant or text, so a page is found by reading the
//! state's set in order, [`CHUNK`] entries per round trip (four `HMGET`s), and keeping
//! those that match. A call reads at most [`MAX_SCAN`] entries whatever the backlog and
//! answers a cursor to go on from, so a filter that matches little costs bounded work per
//! call and the caller decides whether to read further. (Finished jobs past the Redis
//! retention are searched in the PostgreSQL archive instead.)

use crate::client::Client;
use crate::error::{Error, Result};
use crate::scripts;
use crate::state::{JobInfo, JobState};
use serde::Serialize;

/// Entries read per round trip.
pub const CHUNK: usize = 250;
/// Most entries one [`Client::browse`] call reads.
pub const MAX_SCAN: usize = 5_000;
/// Longest page.
pub const MAX_PAGE: usize = 200;

/// Which jobs a listing keeps (every field optional).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this tenant's jobs.
    pub tenant: Option<String>,
    /// Only jobs whose arguments or last error contain this text (case-insensitive).
    pub text: Option<String>,
    /// Only jobs enqueued at or after this time (ms since the epoch).
    pub from_ms: Option<u64>,
    /// Only jobs enqueued before this time (ms since the epoch).
    pub to_ms: Option<u64>,
}

impl JobFilter {
    fn matches(&self, job: &JobInfo, needle: Option<&str>) -> bool {
        if self.kind.as_deref().is_some_and(|k| job.kind() != k) {
            return false;
        }
        let env = job.envelope.as_ref();
        if let Some(t) = self.tenant.as_deref()
            && env.and_then(|e| e.tenant.as_deref()) != Some(t)
        {
            return false;
        }
        let at = env.map(|e| e.enqueued_at);
        if self.from_ms.is_some_and(|f| at.is_none_or(|a| a < f))
            || self.to_ms.is_some_and(|t| at.is_none_or(|a| a >= t))
        {
            return false;
        }
        match needle {
            None => true,
            Some(n) => {
                let args = env.map_or(job.raw_envelope.as_str(), |e| e.args.get());
                args.to_lowercase().contains(n) || job.last_error().to_lowercase().contains(n)
            }
        }
    }
}

/// A job as a listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    /// Id.
    pub id: String,
    /// Kind (`(undecodable)` when the envelope does not decode).
    pub kind: String,
    /// State.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// Its tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it was enqueued (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<u64>,
    /// Its score in the state's set (due time, lease end, death or expiry, ms), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// The first line of its last error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    /// The matching jobs, in the state's order.
    pub jobs: Vec<JobRow>,
    /// Where the next page starts (`None`: nothing more to read).
    pub next: Option<String>,
    /// Entries this call read.
    pub scanned: usize,
}

/// A position in a listing: partition, list (the ready lists of a queue are several),
/// offset in it. Written `p.l.o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    part: usize,
    list: usize,
    offset: usize,
}

impl Cursor {
    fn parse(s: &str) -> Result<Cursor> {
        let bad = || Error::Invalid(format!("cursor {s:?} is not one this listing gave"));
        let mut it = s.split('.').map(|p| p.parse::<usize>().map_err(|_| bad()));
        let c = Cursor {
            part: it.next().ok_or_else(bad)??,
            list: it.next().ok_or_else(bad)??,
            offset: it.next().ok_or_else(bad)??,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(c)
    }

    fn text(self) -> String {
        format!("{}.{}.{}", self.part, self.list, self.offset)
    }
}

impl Client {
    /// Jobs of `queue` in `state` matching `filter`, at most `limit` (up to [`MAX_PAGE`]),
    /// from `cursor` (a previous page's `next`; `None`: the start). Order: ready in run
    /// order; scheduled and retrying soonest first; running by lease end; dead and
    /// finished newest first. Reads at most [`MAX_SCAN`] entries: a page may come back
    /// short with a `next` when the filter matched little.
    pub async fn browse(
        &self,
        queue: &str,
        state: JobState,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut pos = cursor.map(Cursor::parse).transpose()?.unwrap_or_default();
        let needle = filter.text.as_deref().map(str::to_lowercase).filter(|n| !n.is_empty());
        let parts = self.partitions(queue);
        let mut page = JobPage { jobs: Vec::new(), next: None, scanned: 0 };
        while let Some(part) = parts.get(pos.part) {
            let lists = self.state_lists(part, state, filter.tenant.as_deref()).await?;
            while let Some((list, kind)) = lists.get(pos.list) {
                loop {
                    if page.jobs.len() >= limit || page.scanned >= MAX_SCAN {
                        page.next = Some(pos.text());
                        return Ok(page);
                    }
                    let want = CHUNK.min(MAX_SCAN - page.scanned);
                    let ids = self.read_entries(list, *kind, pos.offset, want).await?;
                    if ids.is_empty() {
                        break;
                    }
                    let records = self.records(part, &ids).await?;
                    let n = ids.len();
                    for ((id, at), info) in ids.into_iter().zip(records) {
                        if page.jobs.len() >= limit {
                            break;
                        }
                        pos.offset += 1;
                        page.scanned += 1;
                        let Some(job) = info else { continue };
                        let listed = job.state == state || (state == JobState::Dead && job.state == JobState::Unknown);
                        if listed && filter.matches(&job, needle.as_deref()) {
                            page.jobs.push(row(id, at, &job));
                        }
                    }
                    if n < want && page.jobs.len() < limit {
                        break;
                    }
                }
                pos = Cursor { list: pos.list + 1, offset: 0, ..pos };
            }
            pos = Cursor { part: pos.part + 1, list: 0, offset: 0 };
        }
        Ok(page)
    }

    /// The Redis structures that hold `state`'s jobs on one physical queue, in order. A
    /// tenant's ready jobs wait in its own list per priority (and, after a crash, among
    /// the suspects), so a listing of one tenant's ready jobs reads only those.
    async fn state_lists(&self, queue: &str, state: JobState, tenant: Option<&str>) -> Result<Vec<(String, Entries)>> {
        let k = self.keys(queue);
        Ok(match (state, tenant) {
            (JobState::Ready, Some(t)) => std::iter::once(k.suspects.clone())
                .chain(k.ready.iter().map(|base| format!("{base}:t:{t}")))
                .map(|l| (l, Entries::List))
                .collect(),
            (state, _) => match state {
                JobState::Ready => self.ready_lists(queue).await?.into_iter().map(|l| (l, Entries::List)).collect(),
                JobState::Scheduled | JobState::Retrying => vec![(k.sched, Entries::Ascending)],
                JobState::Running => vec![(k.leases, Entries::Ascending)],
                JobState::Dead => vec![(k.dead, Entries::Descending)],
                JobState::Succeeded | JobState::Cancelled | JobState::Expired => vec![(k.done, Entries::Descending)],
                JobState::Unknown => Vec::new(),
            },
        })
    }

    async fn read_entries(
        &self,
        key: &str,
        kind: Entries,
        offset: usize,
        n: usize,
    ) -> Result<Vec<(Vec<u8>, Option<u64>)>> {
        let mut conn = self.connection();
        let stop = offset + n - 1;
        Ok(match kind {
            Entries::List => {
                let ids: Vec<Vec<u8>> =
                    redis::cmd("LRANGE").arg(key).arg(offset).arg(stop).query_async(&mut conn).await?;
                ids.into_iter().map(|i| (i, None)).collect()
            }
            Entries::Ascending | Entries::Descending => {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(key).arg(offset).arg(stop);
                if kind == Entries::Descending {
                    cmd.arg("REV");
                }
                let v: Vec<(Vec<u8>, f64)> = cmd.arg("WITHSCORES").query_async(&mut conn).await?;
                v.into_iter().map(|(i, s)| (i, Some(s as u64))).collect()
            }
        })
    }

    /// The records of `ids` on one physical queue, in four round trips' worth of one
    /// pipeline (`None` for an entry whose record is gone).
    async fn records(&self, queue: &str, ids: &[(Vec<u8>, Option<u64>)]) -> Result<Vec<Option<JobInfo>>> {
        let k = self.keys(queue);
        type Col = Vec<Option<Vec<u8>>>;
        let mut pipe = redis::pipe();
        for key in [&k.jobs, &k.state, &k.att, &k.hist] {
            let cmd = pipe.cmd("HMGET").arg(key);
            for (id, _) in ids {
                cmd.arg(id);
            }
        }
        let (envs, states, atts, hists): (Col, Col, Col, Col) = pipe.query_async(&mut self.connection()).await?;
        Ok(envs
            .into_iter()
            .zip(states)
            .zip(atts.into_iter().zip(hists))
            .map(|((env, state), (att, hist))| Some(JobInfo::from_bytes(env?, state.unwrap_or_default(), att, hist)))
            .collect())
    }

    /// Makes a scheduled or retrying job due now (the next fetch runs it; idle workers
    /// are woken). Answers whether it was waiting.
    pub async fn retry_now(&self, queue: &str, id: &str) -> Result<bool> {
        for p in self.partitions(queue) {
            let k = self.keys(&p);
            let n: i64 = k.invoke(&scripts::NUDGE).arg(id).invoke_async(&mut self.connection()).await?;
            if n == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes a finished job's record (succeeded, cancelled or expired; dead letters are
    /// purged with [`Client::purge`]). Answers whether there was one.
    pub async fn forget(&self, queue: &str, id: &str) -> Result<bool> {
        for p in self.partitions(queue) {
            let k = self.keys(&p);
            let n: i64 = k.invoke(&scripts::FORGET).arg(id).invoke_async(&mut self.connection()).await?;
            if n == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// How a structure's entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    List,
    Ascending,
    Descending,
}

fn row(id: Vec<u8>, at: Option<u64>, job: &JobInfo) -> JobRow {
    let error = job.last_error();
    JobRow {
        id: String::from_utf8(id).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        kind: job.kind().to_owned(),
        state: job.state,
        attempts: job.attempts,
        tenant: job.envelope.as_ref().and_then(|e| e.tenant.clone()),
        enqueued_at: job.envelope.as_ref().map(|e| e.enqueued_at),
        at,
        error: (!error.is_empty()).then(|| error.lines().next().unwrap_or("").chars().take(300).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_foreign_ones_are_refused() {
        let c = Cursor { part: 1, list: 2, offset: 250 };
        assert_eq!(Cursor::parse(&c.text()).unwrap(), c);
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "-1.0.0"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}

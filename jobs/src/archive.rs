//! Finished jobs on their way to the archive (PostgreSQL, written by the scheduler).
//!
//! The scripts that finish a job (succeeded, expired, dead, cancelled) append one entry,
//! `<state code>:<attempt>:<finished ms>:<id>`, to the queue's `archive` list, but only
//! when a scheduler archives the queue (its `conf` field `archive` is `1`, set by
//! [`Client::set_archiving`]), and at most `ARCHIVE_CAP` (1,000,000) entries per queue:
//! past it an ending is counted in `stats.archive_dropped`. The cost on the hot path is
//! one `RPUSH` per finished job inside the script that finishes it.
//!
//! The scheduler drains the list at its own pace: [`Client::archive_read`] reads the
//! first entries with what the job's record holds (envelope, failed attempts, progress,
//! result), the scheduler writes them into PostgreSQL (idempotently), and only then
//! [`Client::archive_done`] drops them, if they are still the list's first entries. A
//! scheduler or PostgreSQL that stops between the two leaves the entries in place to be
//! copied again, which changes nothing. The records themselves stay for the worker's
//! retention (24 h by default), which is how long the scheduler may lag; a record gone by
//! then (retention 0, purged) is reported as such and its entry dropped.

use crate::client::Client;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::keys::QueueKeys;
use crate::state::JobState;

/// One finished job read from a queue's archive list.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The entry as stored (pass it back to [`Client::archive_done`]).
    pub entry: String,
    /// Job id.
    pub id: String,
    /// How it ended: succeeded, dead, cancelled or expired (`None`: an entry Fleet does
    /// not write).
    pub state: Option<JobState>,
    /// Attempts started when it finished.
    pub attempt: u32,
    /// When it finished, ms since the epoch.
    pub finished_at: u64,
    /// What its record holds; `None` when the record is gone.
    pub record: Option<FinishedRecord>,
}

/// What a finished job's record holds.
#[derive(Debug, Clone)]
pub struct FinishedRecord {
    /// The envelope, or the stored text (lossily) when it does not decode.
    pub envelope: std::result::Result<Envelope, String>,
    /// Its failed attempts, oldest first (the stored JSON array; `[]` when none).
    pub history: serde_json::Value,
    /// The progress it last reported.
    pub progress: Option<serde_json::Value>,
    /// The result it recorded.
    pub result: Option<serde_json::Value>,
}

/// Parses an archive entry: (state, attempt, finished ms, id).
fn parse_entry(entry: &str) -> Option<(Option<JobState>, u32, u64, &str)> {
    let mut parts = entry.splitn(4, ':');
    let state = match parts.next()? {
        "k" => Some(JobState::Succeeded),
        "d" => Some(JobState::Dead),
        "c" => Some(JobState::Cancelled),
        "x" => Some(JobState::Expired),
        _ => None,
    };
    let attempt = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((state, attempt, at, parts.next()?))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn json(bytes: Option<Vec<u8>>) -> Option<serde_json::Value> {
    bytes.map(|b| serde_json::from_slice(&b).unwrap_or_else(|_| serde_json::Value::String(text(b))))
}

impl Client {
    /// Every queue under this prefix as Redis holds it: a partitioned queue's partitions
    /// one by one (`<queue>#<n>`), so each partition's archive list is drained.
    pub async fn physical_queues(&self) -> Result<Vec<String>> {
        let keys = self.scan_keys(&format!("{}:{{*}}:stats", self.prefix())).await?;
        let mut out: Vec<String> =
            keys.iter().filter_map(|k| Some(k[k.find('{')? + 1..k.find('}')?].to_owned())).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Starts (or stops) queueing `queue`'s finished jobs for the archive.
    pub async fn set_archiving(&self, queue: &str, on: bool) -> Result<()> {
        let k = self.keys(queue);
        let mut conn = self.connection();
        if on {
            redis::cmd("HSET").arg(&k.conf).arg("archive").arg("1").query_async::<()>(&mut conn).await?;
        } else {
            redis::cmd("HDEL").arg(&k.conf).arg("archive").query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// How many finished jobs of `queue` wait for the archive.
    pub async fn archive_pending(&self, queue: &str) -> Result<u64> {
        let k = self.keys(queue);
        Ok(redis::cmd("LLEN").arg(&k.archive).query_async(&mut self.connection()).await?)
    }

    /// The first `max` finished jobs of `queue` waiting for the archive, with their
    /// records: two round trips (the entries, then one pipeline of the record's fields).
    pub async fn archive_read(&self, queue: &str, max: usize) -> Result<Vec<Finished>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let k: QueueKeys = self.keys(queue);
        let mut conn = self.connection();
        let entries: Vec<Vec<u8>> =
            redis::cmd("LRANGE").arg(&k.archive).arg(0).arg(max as i64 - 1).query_async(&mut conn).await?;
        let entries: Vec<String> = entries.into_iter().map(text).collect();
        let parsed: Vec<_> =
            entries.iter().map(|e| parse_entry(e).map(|(s, a, t, id)| (s, a, t, id.to_owned()))).collect();
        let ids: Vec<&str> = parsed.iter().map(|p| p.as_ref().map_or("", |p| p.3.as_str())).collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        type Fields = Vec<Option<Vec<u8>>>;
        let mut pipe = redis::pipe();
        for key in [&k.jobs, &k.hist, &k.progress, &k.results] {
            pipe.cmd("HMGET").arg(key).arg(&ids);
        }
        let (jobs, hist, progress, results): (Fields, Fields, Fields, Fields) = pipe.query_async(&mut conn).await?;
        drop(ids);
        let mut out = Vec::with_capacity(entries.len());
        let rows = entries.into_iter().zip(parsed).zip(jobs).zip(hist).zip(progress).zip(results);
        for (((((entry, parsed), env), hist), progress), result) in rows {
            let (state, attempt, finished_at, id) = parsed.unwrap_or_default();
            let record = env.map(|env| FinishedRecord {
                envelope: serde_json::from_slice::<Envelope>(&env).map_err(|_| text(env)),
                history: json(hist).unwrap_or_else(|| serde_json::json!([])),
                progress: json(progress),
                result: json(result),
            });
            out.push(Finished { entry, id, state, attempt, finished_at, record });
        }
        Ok(out)
    }

    /// Drops `entries` (as [`Client::archive_read`] gave them, in order) from the head of
    /// `queue`'s archive list, if they are still its first entries; answers whether they
    /// were dropped (false: another scheduler dropped them first).
    pub async fn archive_done(&self, queue: &str, entries: &[String]) -> Result<bool> {
        if entries.is_empty() {
            return Ok(true);
        }
        let k = self.keys(queue);
        let mut call = k.invoke(&crate::scripts::ARCHIVED);
        for e in entries {
            call.arg(e);
        }
        let n: i64 = call.invoke_async(&mut self.connection()).await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        assert_eq!(
            parse_entry("k:2:1700000000000:abc"),
            Some((Some(JobState::Succeeded), 2, 1_700_000_000_000, "abc"))
        );
        assert_eq!(parse_entry("c:0:5:a:b"), Some((Some(JobState::Cancelled), 0, 5, "a:b")));
        assert_eq!(parse_entry("z:1:1:x").map(|p| p.0), Some(None));
        assert_eq!(parse_entry("k:x:1:a"), None);
        assert_eq!(parse_entry("garbage"), None);
    }
}

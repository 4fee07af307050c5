//! Redis key names of one queue.
//!
//! Every key of a queue carries the same hash tag, `{<queue>}`, so a queue
//! lives in one Redis Cluster slot and every script is cluster-safe; different
//! queues spread over the shards. There are no global keys. The prefix (default
//! `fleet`) namespaces a deployment, and tests use one prefix each.

/// Key names of one queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    /// Job envelopes: hash id -> envelope JSON.
    pub jobs: String,
    /// Job states: hash id -> `<code><priority>[:<token>]`.
    pub state: String,
    /// Attempt counts: hash id -> attempts started.
    pub att: String,
    /// Ready lists, one per priority level.
    pub ready: [String; 3],
    /// Delayed, retrying and snoozed jobs: sorted set scored by due time.
    pub sched: String,
    /// Leases of running jobs: sorted set scored by lease deadline.
    pub leases: String,
    /// Per-state counters and totals.
    pub stats: String,
    /// Dead letters: sorted set scored by time of death.
    pub dead: String,
    /// Finished records awaiting expiry: sorted set scored by expiry time.
    pub done: String,
    /// Attempt histories: hash id -> JSON array.
    pub hist: String,
    /// Wake-up tokens for idle workers.
    pub wake: String,
    /// Queue settings (e.g. paused).
    pub conf: String,
    /// Live worker instances: sorted set scored by last heartbeat.
    pub workers: String,
    /// What each live worker holds: hash instance -> `{"count": n, "ids": [first 20]}`.
    pub workerjobs: String,
    /// Unique keys: hash key -> id of the job holding it.
    pub uniq: String,
    /// Unique keys by end of their window: sorted set.
    pub uniqexp: String,
    /// Batch counters: hash `<batch>:total|ok|fail|cb|fired` -> value.
    pub batches: String,
    /// Batches whose jobs have all finished and whose callbacks are to be enqueued.
    pub batchdone: String,
    /// Batches whose callbacks were enqueued, by time (for expiry of their counters).
    pub batchfin: String,
    /// Crash counts: hash id -> times the job was running when its worker stopped.
    pub crashes: String,
    /// Suspects: ready ids whose worker stopped while they ran, leased one at a time, alone.
    pub suspects: String,
    /// The one worker instance told to drain so it can take a suspect (expires by itself).
    pub drain: String,
}

impl QueueKeys {
    /// Key names of `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> Self {
        let k = |name: &str| format!("{prefix}:{{{queue}}}:{name}");
        QueueKeys {
            jobs: k("jobs"),
            state: k("state"),
            att: k("att"),
            ready: [k("ready:0"), k("ready:1"), k("ready:2")],
            sched: k("sched"),
            leases: k("leases"),
            stats: k("stats"),
            dead: k("dead"),
            done: k("done"),
            hist: k("hist"),
            wake: k("wake"),
            conf: k("conf"),
            workers: k("workers"),
            workerjobs: k("workerjobs"),
            uniq: k("uniq"),
            uniqexp: k("uniqexp"),
            batches: k("batches"),
            batchdone: k("batchdone"),
            batchfin: k("batchfin"),
            crashes: k("crashes"),
            suspects: k("suspects"),
            drain: k("drain"),
        }
    }
}

impl QueueKeys {
    /// The key called `name` in the scripts' `KEYS` comments (`jobs`, `r0`, `sched`, ...).
    fn named(&self, name: &str) -> &str {
        match name {
            "jobs" => &self.jobs,
            "state" => &self.state,
            "att" => &self.att,
            "r0" => &self.ready[0],
            "r1" => &self.ready[1],
            "r2" => &self.ready[2],
            "sched" => &self.sched,
            "leases" => &self.leases,
            "stats" => &self.stats,
            "dead" => &self.dead,
            "done" => &self.done,
            "hist" => &self.hist,
            "wake" => &self.wake,
            "conf" => &self.conf,
            "workers" => &self.workers,
            "workerjobs" => &self.workerjobs,
            "uniq" => &self.uniq,
            "uniqexp" => &self.uniqexp,
            "batches" => &self.batches,
            "batchdone" => &self.batchdone,
            "batchfin" => &self.batchfin,
            "crashes" => &self.crashes,
            "suspects" => &self.suspects,
            "drain" => &self.drain,
            other => panic!("no queue key named {other:?}"),
        }
    }

    /// A call of `script` with the keys `names` declared in order, exactly as the
    /// script's `KEYS` comment lists them.
    pub(crate) fn invoke<'a>(&self, script: &'a redis::Script, names: &str) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for name in names.split_whitespace() {
            inv.key(self.named(name));
        }
        inv
    }
}

/// Checks a queue name: non-empty, at most 64 characters, letters, digits and `-_.` only
/// (no braces, so the hash tag stays intact).
pub fn validate_queue_name(queue: &str) -> Result<(), String> {
    if queue.is_empty() || queue.len() > 64 {
        return Err(format!("queue name must be 1 to 64 characters, got {:?}", queue));
    }
    if !queue.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("queue name {queue:?} may only contain ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_share_the_queue_hash_tag() {
        let k = QueueKeys::new("fleet", "images");
        for key in [&k.jobs, &k.state, &k.ready[0], &k.ready[2], &k.sched, &k.wake, &k.workers] {
            assert!(key.contains("{images}"), "{key}");
            assert_eq!(key.matches('{').count(), 1);
        }
    }

    #[test]
    fn queue_names_with_braces_are_refused() {
        assert!(validate_queue_name("a{b}").is_err());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("webhooks.high-1").is_ok());
    }
}

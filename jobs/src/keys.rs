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
    /// Progress reported by running jobs: hash id -> progress JSON (see `crate::progress`).
    pub progress: String,
    /// Results recorded by jobs: hash id -> result JSON (see `crate::progress`).
    pub results: String,
    /// Finished jobs waiting to be copied into the archive: list of
    /// `<state code>:<attempt>:<finished ms>:<id>` (see `crate::archive`).
    pub archive: String,
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
            progress: k("progress"),
            results: k("results"),
            archive: k("archive"),
        }
    }
}

/// One of a queue's keys, as a script's `KEYS` list names it. Each script's list is
/// declared once, beside the script (`crate::scripts`), as a slice of these; the
/// names ([`QueueKey::name`]) are the ones its Lua header and its `K` table use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKey {
    /// [`QueueKeys::jobs`].
    Jobs,
    /// [`QueueKeys::state`].
    State,
    /// [`QueueKeys::att`].
    Att,
    /// `ready[0]`, the high-priority ready list.
    R0,
    /// `ready[1]`.
    R1,
    /// `ready[2]`, the low-priority ready list.
    R2,
    /// [`QueueKeys::sched`].
    Sched,
    /// [`QueueKeys::leases`].
    Leases,
    /// [`QueueKeys::stats`].
    Stats,
    /// [`QueueKeys::dead`].
    Dead,
    /// [`QueueKeys::done`].
    Done,
    /// [`QueueKeys::hist`].
    Hist,
    /// [`QueueKeys::wake`].
    Wake,
    /// [`QueueKeys::conf`].
    Conf,
    /// [`QueueKeys::workers`].
    Workers,
    /// [`QueueKeys::workerjobs`].
    Workerjobs,
    /// [`QueueKeys::uniq`].
    Uniq,
    /// [`QueueKeys::uniqexp`].
    Uniqexp,
    /// [`QueueKeys::batches`].
    Batches,
    /// [`QueueKeys::batchdone`].
    Batchdone,
    /// [`QueueKeys::batchfin`].
    Batchfin,
    /// [`QueueKeys::crashes`].
    Crashes,
    /// [`QueueKeys::suspects`].
    Suspects,
    /// [`QueueKeys::drain`].
    Drain,
    /// [`QueueKeys::progress`].
    Progress,
    /// [`QueueKeys::results`].
    Results,
    /// [`QueueKeys::archive`].
    Archive,
}

impl QueueKey {
    /// Every queue key.
    pub const ALL: [QueueKey; 27] = [
        QueueKey::Jobs,
        QueueKey::State,
        QueueKey::Att,
        QueueKey::R0,
        QueueKey::R1,
        QueueKey::R2,
        QueueKey::Sched,
        QueueKey::Leases,
        QueueKey::Stats,
        QueueKey::Dead,
        QueueKey::Done,
        QueueKey::Hist,
        QueueKey::Wake,
        QueueKey::Conf,
        QueueKey::Workers,
        QueueKey::Workerjobs,
        QueueKey::Uniq,
        QueueKey::Uniqexp,
        QueueKey::Batches,
        QueueKey::Batchdone,
        QueueKey::Batchfin,
        QueueKey::Crashes,
        QueueKey::Suspects,
        QueueKey::Drain,
        QueueKey::Progress,
        QueueKey::Results,
        QueueKey::Archive,
    ];

    /// The key's name in the scripts' `KEYS` headers (`jobs`, `r0`, `sched`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            QueueKey::Jobs => "jobs",
            QueueKey::State => "state",
            QueueKey::Att => "att",
            QueueKey::R0 => "r0",
            QueueKey::R1 => "r1",
            QueueKey::R2 => "r2",
            QueueKey::Sched => "sched",
            QueueKey::Leases => "leases",
            QueueKey::Stats => "stats",
            QueueKey::Dead => "dead",
            QueueKey::Done => "done",
            QueueKey::Hist => "hist",
            QueueKey::Wake => "wake",
            QueueKey::Conf => "conf",
            QueueKey::Workers => "workers",
            QueueKey::Workerjobs => "workerjobs",
            QueueKey::Uniq => "uniq",
            QueueKey::Uniqexp => "uniqexp",
            QueueKey::Batches => "batches",
            QueueKey::Batchdone => "batchdone",
            QueueKey::Batchfin => "batchfin",
            QueueKey::Crashes => "crashes",
            QueueKey::Suspects => "suspects",
            QueueKey::Drain => "drain",
            QueueKey::Progress => "progress",
            QueueKey::Results => "results",
            QueueKey::Archive => "archive",
        }
    }
}

impl QueueKeys {
    /// The Redis key `key` of this queue.
    pub fn key(&self, key: QueueKey) -> &str {
        match key {
            QueueKey::Jobs => &self.jobs,
            QueueKey::State => &self.state,
            QueueKey::Att => &self.att,
            QueueKey::R0 => &self.ready[0],
            QueueKey::R1 => &self.ready[1],
            QueueKey::R2 => &self.ready[2],
            QueueKey::Sched => &self.sched,
            QueueKey::Leases => &self.leases,
            QueueKey::Stats => &self.stats,
            QueueKey::Dead => &self.dead,
            QueueKey::Done => &self.done,
            QueueKey::Hist => &self.hist,
            QueueKey::Wake => &self.wake,
            QueueKey::Conf => &self.conf,
            QueueKey::Workers => &self.workers,
            QueueKey::Workerjobs => &self.workerjobs,
            QueueKey::Uniq => &self.uniq,
            QueueKey::Uniqexp => &self.uniqexp,
            QueueKey::Batches => &self.batches,
            QueueKey::Batchdone => &self.batchdone,
            QueueKey::Batchfin => &self.batchfin,
            QueueKey::Crashes => &self.crashes,
            QueueKey::Suspects => &self.suspects,
            QueueKey::Drain => &self.drain,
            QueueKey::Progress => &self.progress,
            QueueKey::Results => &self.results,
            QueueKey::Archive => &self.archive,
        }
    }

    /// A call of `script` with its declared keys as `KEYS`, in their declared order.
    pub(crate) fn invoke<'a>(
        &self,
        script: &'a crate::scripts::ScriptSpec<QueueKey>,
    ) -> crate::scripts::ScriptCall<'a> {
        let mut inv = script.call();
        for key in script.keys {
            inv.key(self.key(*key));
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
    fn every_queue_key_resolves_to_its_own_name() {
        let k = QueueKeys::new("fleet", "images");
        let mut seen = std::collections::HashSet::new();
        for key in QueueKey::ALL {
            let name = key.name();
            let resolved = k.key(key);
            let suffix = match name.strip_prefix('r').and_then(|n| n.parse::<u8>().ok()) {
                Some(p) => format!("ready:{p}"),
                None => name.to_owned(),
            };
            assert_eq!(resolved, format!("fleet:{{images}}:{suffix}"), "{key:?}");
            assert!(seen.insert(resolved.to_owned()), "{key:?} resolves to a key another also does");
        }
    }

    #[test]
    fn queue_names_with_braces_are_refused() {
        assert!(validate_queue_name("a{b}").is_err());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("webhooks.high-1").is_ok());
    }
}

//! The typed client that upstream Rust apps use to enqueue jobs and read their state.

use crate::conn::RedisConn;
use crate::dedup::{Dedup, DedupMode, DedupTag, Deduplicated, Enqueued};
use crate::envelope::{Envelope, JobId, Priority, now_ms};
use crate::error::{Error, Result};
use crate::keys::{QueueKeys, validate_queue_name};
use crate::kind::{JobArgs, KindOptions};
use crate::scripts;
use crate::state::{DeadLetter, JobInfo, JobState, QueueStats};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Jobs per enqueue script call in [`Client::enqueue_bulk`]: one round trip per chunk.
pub const BULK_CHUNK: usize = 1000;

/// Per-job options; unset fields fall back to the kind's [`KindOptions`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Queue to use instead of the kind's.
    pub queue: Option<String>,
    /// Priority instead of the kind's.
    pub priority: Option<Priority>,
    /// Run no earlier than this long after the enqueue (measured on the Redis clock).
    pub delay: Option<Duration>,
    /// Run no earlier than this instant (overrides `delay`).
    pub run_at: Option<SystemTime>,
    /// Attempts instead of the kind's.
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt instead of the kind's.
    pub timeout: Option<Duration>,
    /// W3C `traceparent` of the enqueuing request.
    pub trace: Option<String>,
    /// A caller-chosen job id: enqueueing the same id twice creates one job.
    pub id: Option<JobId>,
    /// Uniqueness: while the window lasts, enqueueing another job with the same key
    /// returns the first job's id and creates nothing.
    pub unique: Option<Unique>,
    /// A job not started by this instant expires instead of running.
    pub deadline: Option<SystemTime>,
    /// The tenant it belongs to (set by the HTTP API).
    pub tenant: Option<String>,
    /// The batch it belongs to (set by batch creation).
    pub batch: Option<String>,
    /// When the enqueue is acknowledged; `None`: the queue's setting on this client
    /// ([`Client::with_queue_durability`]), else [`Durability::Primary`].
    pub durability: Option<Durability>,
    /// On a partitioned queue ([`Client::with_partitions`]), the key that picks the
    /// partition: jobs with the same key land in the same partition (and so keep their
    /// order). `None`: the batch, else the tenant, else the unique key, else a
    /// caller-chosen id; a job with none of them goes round-robin. Ignored on a queue
    /// without partitions.
    pub partition_key: Option<String>,
    /// A dedup key and mode (debounce, replace, keep-last; see [`crate::dedup`]). With
    /// `unique` too, the throttle is checked first. Not with a batch; a debounced job's
    /// start is its debounce delay (no `delay` or `run_at`).
    pub dedup: Option<Dedup>,
}

/// Longest [`Durability::Replicated`] wait: below the connection's 5 s reply timeout.
pub const MAX_REPLICATION_WAIT: Duration = Duration::from_secs(4);

/// When an enqueue is acknowledged, and so what survives the death of the Redis primary
/// that took it (see the README's "Durability" section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// As soon as the primary has written the job. Replication is asynchronous: a
    /// primary that dies within the replication lag (usually under a millisecond, more
    /// under load or a slow link) loses the jobs it had not passed on yet, and a replica
    /// promoted in its place never saw them.
    #[default]
    Primary,
    /// Once at least `replicas` replicas of the primary hold the job (`WAIT` on the same
    /// primary, right after the enqueue), waiting at most `timeout`; otherwise
    /// [`Error::NotReplicated`]: the job was written on the primary but may be lost if it
    /// dies now (enqueueing the same ids again is safe). A replica's copy is in its
    /// memory, not on its disk: it survives the primary's death and the replica's
    /// promotion, not a power loss of both.
    Replicated {
        /// Replicas that must hold the job (1 for a replica per primary).
        replicas: u32,
        /// Longest wait for them, at most [`MAX_REPLICATION_WAIT`].
        timeout: Duration,
    },
}

/// A unique key and how long it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    /// The key, e.g. `"sync:calendar:42"`; scoped to the queue.
    pub key: String,
    /// How long after the first enqueue duplicates are refused.
    pub window: Duration,
}

/// The result of [`Client::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; holds the state it was in. A running job's worker stops its handler
    /// at its next heartbeat.
    Cancelled(JobState),
    /// It had already finished in this state.
    AlreadyFinished(JobState),
    /// No such job (or its record expired).
    NotFound,
}

impl EnqueueOptions {
    /// Options that put the job on `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Options with a priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }
    /// Options with a delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Options with a max attempt count.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
    /// Options with a per-attempt timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Options with a unique key held for `window`.
    pub fn unique(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.unique = Some(Unique { key: key.into(), window });
        self
    }
    /// Options with a deadline.
    pub fn deadline(mut self, at: SystemTime) -> Self {
        self.deadline = Some(at);
        self
    }
    /// Options acknowledged only once `replicas` replicas hold the job, within `timeout`
    /// (see [`Durability::Replicated`]).
    pub fn replicated(mut self, replicas: u32, timeout: Duration) -> Self {
        self.durability = Some(Durability::Replicated { replicas, timeout });
        self
    }
    /// Options with a debounce key: see [`DedupMode::Debounce`].
    pub fn debounce(mut self, key: impl Into<String>, delay: Duration, max_wait: Duration) -> Self {
        self.dedup = Some(Dedup { key: key.into(), mode: DedupMode::Debounce { delay, max_wait } });
        self
    }
    /// Options with a replace key: see [`DedupMode::Replace`].
    pub fn replace(mut self, key: impl Into<String>) -> Self {
        self.dedup = Some(Dedup { key: key.into(), mode: DedupMode::Replace });
        self
    }
    /// Options with a keep-last-if-running key: see [`DedupMode::KeepLast`].
    pub fn keep_last(mut self, key: impl Into<String>) -> Self {
        self.dedup = Some(Dedup { key: key.into(), mode: DedupMode::KeepLast });
        self
    }
    /// Options with a partition key (see [`EnqueueOptions::partition_key`]).
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }
}

/// One job ready to be written: the chunk unit of the enqueue script.
struct Prepared {
    /// The physical queue written to (a partition of `logical`, or `logical` itself).
    queue: String,
    /// The queue the caller named.
    logical: String,
    /// What picks the partition on a partitioned queue.
    partition_key: Option<String>,
    id: JobId,
    envelope: String,
    priority: u8,
    delay_ms: u64,
    at_ms: u64,
    unique: Option<Unique>,
    dedup: Option<Dedup>,
    tenant: Option<String>,
    durability: Option<Durability>,
}

impl Durability {
    fn validate(self) -> Result<()> {
        match self {
            Durability::Replicated { replicas, timeout }
                if replicas == 0 || timeout.is_zero() || timeout > MAX_REPLICATION_WAIT =>
            {
                Err(Error::Invalid(format!(
                    "replicated durability needs at least 1 replica and a wait of 1 ms to {} ms",
                    MAX_REPLICATION_WAIT.as_millis()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Enqueues jobs and reads queue and job state. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    conn: RedisConn,
    prefix: String,
    /// Per-queue durability of this client's enqueues (see [`Client::with_queue_durability`]).
    durability: std::sync::Arc<HashMap<String, Durability>>,
    /// Partitioned queues: logical name -> physical names (see [`Client::with_partitions`]).
    pub(crate) partitions: std::sync::Arc<HashMap<String, Vec<String>>>,
    /// Round-robin counter of enqueues without a partition key.
    round_robin: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("prefix", &self.prefix).finish()
    }
}

impl Client {
    /// A client on an existing connection, with key prefix `prefix` (normally `fleet`).
    pub fn new(conn: impl Into<RedisConn>, prefix: impl Into<String>) -> Self {
        Client {
            conn: conn.into(),
            prefix: prefix.into(),
            durability: Default::default(),
            partitions: Default::default(),
            round_robin: Default::default(),
        }
    }

    /// Connects to Redis at `url` (e.g. `redis://127.0.0.1:6379`; several comma-separated
    /// URLs for a Redis Cluster: see [`crate::conn`]).
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self> {
        let conn = crate::connect(url).await?;
        Ok(Client::new(conn, prefix))
    }

    /// Like [`Client::connect`], with the TLS settings of a `rediss://` URL (CA file,
    /// client certificate).
    pub async fn connect_with(url: &str, tls: &crate::RedisTls, prefix: impl Into<String>) -> Result<Self> {
        let conn = crate::connect_with(url, tls).await?;
        Ok(Client::new(conn, prefix))
    }

    /// The same client, acknowledging its enqueues onto `queue` as `durability` unless a
    /// call's [`EnqueueOptions::durability`] says otherwise (e.g. `Durability::Replicated`
    /// for a queue of payments, where a job lost with a dying primary costs money).
    pub fn with_queue_durability(mut self, queue: &str, durability: Durability) -> Result<Self> {
        validate_queue_name(queue).map_err(Error::Invalid)?;
        durability.validate()?;
        std::sync::Arc::make_mut(&mut self.durability).insert(queue.to_owned(), durability);
        Ok(self)
    }

    /// The same client, treating `queue` as partitioned into `n` partitions (1 to
    /// [`crate::partitions::MAX_PARTITIONS`]; 1 undoes it): enqueues spread over them
    /// (see [`EnqueueOptions::partition_key`]) and reads (stats, job, cancel, dead
    /// letters, pause, batches, tenant limits) cover all of them. Every process that
    /// enqueues onto or serves the queue must declare the same `n`.
    pub fn with_partitions(mut self, queue: &str, n: u32) -> Result<Self> {
        validate_queue_name(queue).map_err(Error::Invalid)?;
        if n == 0 || n > crate::partitions::MAX_PARTITIONS {
            return Err(Error::Invalid(format!(
                "queue {queue:?}: partitions must be 1 to {}, got {n}",
                crate::partitions::MAX_PARTITIONS
            )));
        }
        let map = std::sync::Arc::make_mut(&mut self.partitions);
        if n == 1 {
            map.remove(queue);
        } else {
            map.insert(queue.to_owned(), crate::partitions::partition_queues(queue, n));
        }
        Ok(self)
    }

    /// The physical queues of `queue`: its partitions in order, or just `queue` when it
    /// is not partitioned.
    pub fn partitions(&self, queue: &str) -> Vec<String> {
        self.partitions.get(queue).cloned().unwrap_or_else(|| vec![queue.to_owned()])
    }

    /// The partition of `queue` that jobs with partition key `key` go to (`queue` itself
    /// when it is not partitioned).
    pub fn partition_of(&self, queue: &str, key: &str) -> String {
        match self.partitions.get(queue) {
            Some(names) => names[crate::partitions::pick(names.len(), Some(key), &self.round_robin)].clone(),
            None => queue.to_owned(),
        }
    }

    /// Moves a prepared job onto its partition (nothing for a queue without partitions).
    fn place(&self, job: &mut Prepared) {
        if let Some(names) = self.partitions.get(&job.logical) {
            let i = crate::partitions::pick(names.len(), job.partition_key.as_deref(), &self.round_robin);
            job.queue = names[i].clone();
        }
    }

    /// How enqueues onto `queue` are acknowledged when a call does not say.
    pub fn queue_durability(&self, queue: &str) -> Durability {
        self.durability.get(queue).copied().unwrap_or_default()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying connection.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Key names of `queue`.
    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, queue)
    }

    /// Enqueues one job with its kind's default options.
    pub async fn enqueue<A: JobArgs>(&self, args: &A) -> Result<JobId> {
        self.enqueue_with(args, EnqueueOptions::default()).await
    }

    /// Enqueues one job with options.
    pub async fn enqueue_with<A: JobArgs>(&self, args: &A, opts: EnqueueOptions) -> Result<JobId> {
        Ok(self.enqueue_reported(args, opts).await?.id)
    }

    /// Enqueues one job with options and says what its unique or dedup key did (the
    /// surviving job's id and the outcome: see [`Deduplicated`]).
    pub async fn enqueue_reported<A: JobArgs>(&self, args: &A, opts: EnqueueOptions) -> Result<Enqueued> {
        let raw = encode_args(A::KIND, args)?;
        let mut job = prepare(A::KIND, raw, &A::options(), opts)?;
        self.place(&mut job);
        Ok(self.write_chunk(&[job]).await?.remove(0))
    }

    /// Enqueues a job of any kind from JSON arguments (the HTTP API's path; also how
    /// tests enqueue a kind no worker knows).
    pub async fn enqueue_raw(
        &self,
        kind: &str,
        args: Box<RawValue>,
        defaults: &KindOptions,
        opts: EnqueueOptions,
    ) -> Result<JobId> {
        Ok(self.enqueue_raw_reported(kind, args, defaults, opts).await?.id)
    }

    /// [`Client::enqueue_raw`] that says what the job's unique or dedup key did.
    pub async fn enqueue_raw_reported(
        &self,
        kind: &str,
        args: Box<RawValue>,
        defaults: &KindOptions,
        opts: EnqueueOptions,
    ) -> Result<Enqueued> {
        if kind.is_empty() || kind.len() > 128 {
            return Err(Error::Invalid("kind must be 1 to 128 characters".into()));
        }
        let mut job = prepare(kind, args, defaults, opts)?;
        self.place(&mut job);
        Ok(self.write_chunk(&[job]).await?.remove(0))
    }

    /// Enqueues many jobs of one kind, [`BULK_CHUNK`] per round trip, and returns
    /// their ids in order (for a duplicate unique key, the id of the job holding it).
    pub async fn enqueue_bulk<A, I>(&self, jobs: I) -> Result<Vec<JobId>>
    where
        A: JobArgs,
        I: IntoIterator<Item = A>,
    {
        self.enqueue_bulk_with(jobs.into_iter().map(|a| (a, EnqueueOptions::default()))).await
    }

    /// Enqueues many jobs of one kind with per-job options, [`BULK_CHUNK`] per round trip
    /// (jobs for different queues are written in one call per queue).
    pub async fn enqueue_bulk_with<A, I>(&self, jobs: I) -> Result<Vec<JobId>>
    where
        A: JobArgs,
        I: IntoIterator<Item = (A, EnqueueOptions)>,
    {
        let defaults = A::options();
        let written = self
            .write_all(
                jobs.into_iter().map(|(args, opts)| prepare(A::KIND, encode_args(A::KIND, &args)?, &defaults, opts)),
            )
            .await?;
        Ok(written.into_iter().map(|e| e.id).collect())
    }

    /// Enqueues jobs of any kinds from JSON arguments (the HTTP API's bulk path), in chunks
    /// of [`BULK_CHUNK`]: one round trip per chunk and queue.
    pub async fn enqueue_many(
        &self,
        jobs: Vec<(String, Box<RawValue>, KindOptions, EnqueueOptions)>,
    ) -> Result<Vec<JobId>> {
        Ok(self.enqueue_many_reported(jobs).await?.into_iter().map(|e| e.id).collect())
    }

    /// [`Client::enqueue_many`] that says what each job's unique or dedup key did.
    pub async fn enqueue_many_reported(
        &self,
        jobs: Vec<(String, Box<RawValue>, KindOptions, EnqueueOptions)>,
    ) -> Result<Vec<Enqueued>> {
        self.write_all(jobs.into_iter().map(|(kind, args, defaults, opts)| prepare(&kind, args, &defaults, opts))).await
    }

    /// Writes jobs in chunks of [`BULK_CHUNK`], one round trip per chunk; stops at the
    /// first job that does not prepare (earlier chunks are already written).
    async fn write_all(&self, jobs: impl Iterator<Item = Result<Prepared>>) -> Result<Vec<Enqueued>> {
        let mut ids = Vec::new();
        let mut chunk: Vec<Prepared> = Vec::with_capacity(BULK_CHUNK);
        for job in jobs {
            let mut job = job?;
            self.place(&mut job);
            chunk.push(job);
            if chunk.len() == BULK_CHUNK {
                ids.extend(self.write_grouped(std::mem::take(&mut chunk)).await?);
            }
        }
        if !chunk.is_empty() {
            ids.extend(self.write_grouped(chunk).await?);
        }
        Ok(ids)
    }

    /// [`Client::write_chunk`], with a chunk that spans partitions first grouped by
    /// partition (keeping each partition's jobs in order), so it costs one call per
    /// partition rather than one per change of partition; ids come back in the
    /// caller's order. Without partitioned queues, exactly `write_chunk`.
    async fn write_grouped(&self, chunk: Vec<Prepared>) -> Result<Vec<Enqueued>> {
        if self.partitions.is_empty() || !chunk.iter().any(|j| j.queue != j.logical) {
            return self.write_chunk(&chunk).await;
        }
        let mut order: Vec<usize> = (0..chunk.len()).collect();
        order.sort_by(|a, b| chunk[*a].queue.cmp(&chunk[*b].queue)); // stable
        let mut slots: Vec<Option<Prepared>> = chunk.into_iter().map(Some).collect();
        let sorted: Vec<Prepared> = order.iter().map(|i| slots[*i].take().expect("each index once")).collect();
        let written = self.write_chunk(&sorted).await?;
        let mut ids = vec![None; written.len()];
        for (pos, e) in order.into_iter().zip(written) {
            ids[pos] = Some(e);
        }
        Ok(ids.into_iter().flatten().collect())
    }

    /// Writes jobs (grouped by queue, one script call per group) and returns the id
    /// holding each: its own, or an existing job's for a duplicate.
    async fn write_chunk(&self, jobs: &[Prepared]) -> Result<Vec<Enqueued>> {
        let mut holders = Vec::with_capacity(jobs.len());
        let mut start = 0;
        while start < jobs.len() {
            let queue = &jobs[start].queue;
            let end = jobs[start..].iter().position(|j| &j.queue != queue).map_or(jobs.len(), |n| start + n);
            let k = self.keys(queue);
            let mut inv = k.invoke(&scripts::ENQUEUE);
            for j in &jobs[start..end] {
                let (ukey, window) = match &j.unique {
                    Some(u) => (u.key.as_str(), u.window.as_millis() as u64),
                    None => ("", 0),
                };
                inv.arg(j.id.as_str())
                    .arg(&j.envelope)
                    .arg(j.priority)
                    .arg(j.delay_ms)
                    .arg(j.at_ms)
                    .arg(ukey)
                    .arg(window)
                    .arg(j.tenant.as_deref().unwrap_or(""));
                match &j.dedup {
                    Some(d) => {
                        let max_wait = match d.mode {
                            DedupMode::Debounce { max_wait, .. } => max_wait.as_millis() as u64,
                            _ => 0,
                        };
                        inv.arg(d.mode.letter()).arg(&d.key).arg(max_wait)
                    }
                    None => inv.arg("").arg("").arg(0),
                };
            }
            // The strongest durability any job of the group asks for.
            let wait = jobs[start..end]
                .iter()
                .filter_map(|j| match j.durability.unwrap_or_else(|| self.queue_durability(&j.logical)) {
                    Durability::Replicated { replicas, timeout } => Some((replicas, timeout)),
                    Durability::Primary => None,
                })
                .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)));
            let reply: Vec<redis::Value> = match wait {
                None => inv.invoke_async(&mut self.conn.clone()).await?,
                Some((replicas, timeout)) => {
                    let (reply, acked): (Vec<redis::Value>, i64) =
                        inv.invoke_then_wait(&mut self.conn.clone(), replicas, timeout).await?;
                    let refused = reply.first().cloned().map(value_text).is_some_and(|t| t == "!quota");
                    if !refused && acked < i64::from(replicas) {
                        return Err(Error::NotReplicated {
                            queue: queue.clone(),
                            replicas: acked.max(0) as u32,
                            wanted: replicas,
                        });
                    }
                    reply
                }
            };
            if reply.first().cloned().map(value_text).is_some_and(|t| t == "!quota") {
                let texts: Vec<String> = reply.into_iter().map(value_text).collect();
                let num = |i: usize| texts.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
                return Err(Error::QuotaExceeded {
                    tenant: texts.get(1).cloned().unwrap_or_default(),
                    queue: queue.clone(),
                    open: num(2),
                    quota: num(3),
                });
            }
            holders.extend(reply.into_iter().map(enqueued_of));
            start = end;
        }
        Ok(holders)
    }

    /// Cancels a job that has not finished (queued, scheduled, retrying or running).
    pub async fn cancel(&self, queue: &str, id: &str) -> Result<CancelOutcome> {
        let outcome = self.cancel_quietly(queue, id).await?;
        // A workflow step's end goes on to its workflow at once, worker or not.
        if matches!(outcome, CancelOutcome::Cancelled(_)) && id.starts_with("wf:") {
            self.pump_workflows(queue).await?;
        }
        Ok(outcome)
    }

    /// [`Client::cancel`] without applying a workflow step's end to its workflow (left
    /// to the workers' pump).
    pub(crate) async fn cancel_quietly(&self, queue: &str, id: &str) -> Result<CancelOutcome> {
        if self.partitions.contains_key(queue) {
            for p in self.partitions(queue) {
                match self.cancel_in(&p, id).await? {
                    CancelOutcome::NotFound => continue,
                    found => return Ok(found),
                }
            }
            return Ok(CancelOutcome::NotFound);
        }
        self.cancel_in(queue, id).await
    }

    /// [`Client::cancel`] on one physical queue.
    async fn cancel_in(&self, queue: &str, id: &str) -> Result<CancelOutcome> {
        let k = self.keys(queue);
        let (code, prev): (i64, Vec<u8>) =
            k.invoke(&scripts::CANCEL).arg(id).arg(24 * 3600 * 1000).invoke_async(&mut self.conn.clone()).await?;
        let prev = String::from_utf8_lossy(&prev);
        let state = || {
            JobState::parse(&prev).map(|(s, _)| s).ok_or_else(|| Error::Corrupt(format!("job {id} has state {prev:?}")))
        };
        Ok(match code {
            1 => CancelOutcome::Cancelled(state()?),
            2 => CancelOutcome::AlreadyFinished(state()?),
            _ => CancelOutcome::NotFound,
        })
    }

    /// Counters of `queue`, in one round trip (one per partition on a partitioned
    /// queue: the sums over its partitions).
    pub async fn stats(&self, queue: &str) -> Result<QueueStats> {
        if self.partitions.contains_key(queue) {
            let mut sum: HashMap<String, i64> = HashMap::new();
            for p in self.partitions(queue) {
                for (k, v) in self.stats_map(&p).await? {
                    *sum.entry(k).or_default() += v;
                }
            }
            return Ok(QueueStats::from_map(&sum));
        }
        Ok(QueueStats::from_map(&self.stats_map(queue).await?))
    }

    /// Counters of each physical queue of `queue` (its partitions, or itself alone).
    pub async fn partition_stats(&self, queue: &str) -> Result<Vec<(String, QueueStats)>> {
        let mut out = Vec::new();
        for p in self.partitions(queue) {
            let s = QueueStats::from_map(&self.stats_map(&p).await?);
            out.push((p, s));
        }
        Ok(out)
    }

    async fn stats_map(&self, queue: &str) -> Result<HashMap<String, i64>> {
        Ok(redis::cmd("HGETALL").arg(self.keys(queue).stats).query_async(&mut self.conn.clone()).await?)
    }

    /// Everything held about one job, or `None` if it is unknown (or its record expired).
    /// Read as bytes: a record Fleet did not write (an envelope that is not UTF-8 or not
    /// JSON, a garbage state or history) is returned with what did not decode said in it,
    /// never as an error (see [`JobInfo`]).
    /// On a partitioned queue, each partition is asked in turn.
    pub async fn job(&self, queue: &str, id: &str) -> Result<Option<JobInfo>> {
        if self.partitions.contains_key(queue) {
            for p in self.partitions(queue) {
                if let Some(info) = Box::pin(self.job(&p, id)).await? {
                    return Ok(Some(info));
                }
            }
            return Ok(None);
        }
        let k = self.keys(queue);
        type Bytes = Option<Vec<u8>>;
        let (env, state, att, hist, progress, result): (Bytes, Bytes, Bytes, Bytes, Bytes, Bytes) = redis::pipe()
            .hget(&k.jobs, id)
            .hget(&k.state, id)
            .hget(&k.att, id)
            .hget(&k.hist, id)
            .hget(&k.progress, id)
            .hget(&k.results, id)
            .query_async(&mut self.conn.clone())
            .await?;
        let (Some(env), Some(state)) = (env, state) else {
            return Ok(None);
        };
        let mut info = JobInfo::from_bytes(env, state, att, hist);
        (info.progress, info.result) = crate::progress::decode(progress, result);
        Ok(Some(info))
    }

    /// The state of one job, or `None` if unknown.
    pub async fn job_state(&self, queue: &str, id: &str) -> Result<Option<JobState>> {
        if self.partitions.contains_key(queue) {
            for p in self.partitions(queue) {
                if let Some(s) = Box::pin(self.job_state(&p, id)).await? {
                    return Ok(Some(s));
                }
            }
            return Ok(None);
        }
        let raw: Option<Vec<u8>> =
            redis::cmd("HGET").arg(self.keys(queue).state).arg(id).query_async(&mut self.conn.clone()).await?;
        Ok(raw.and_then(|s| JobState::parse(&String::from_utf8_lossy(&s))).map(|(s, _)| s))
    }

    /// Dead letters of `queue`, newest first, `limit` from `offset`.
    /// On a partitioned queue, the partitions' dead letters merged by time of death.
    pub async fn dead_letters(&self, queue: &str, offset: usize, limit: usize) -> Result<Vec<DeadLetter>> {
        if self.partitions.contains_key(queue) {
            let mut all = Vec::new();
            for p in self.partitions(queue) {
                all.extend(Box::pin(self.dead_letters(&p, 0, offset + limit)).await?);
            }
            all.sort_by_key(|d| std::cmp::Reverse(d.died_at));
            return Ok(all.into_iter().skip(offset).take(limit).collect());
        }
        let k = self.keys(queue);
        let stop = offset as isize + limit as isize - 1;
        let entries: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(&k.dead)
            .arg(offset)
            .arg(stop)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for (id, died_at) in entries {
            // Ids are Fleet's or a caller's (UTF-8); a foreign one is read by its bytes.
            let record = redis::pipe()
                .hget(&k.jobs, &id)
                .hget(&k.state, &id)
                .hget(&k.att, &id)
                .hget(&k.hist, &id)
                .query_async::<RecordBytes>(&mut self.conn.clone())
                .await?;
            let id = String::from_utf8_lossy(&id).into_owned();
            // An entry whose record is gone is skipped; one whose state field is missing
            // or garbage is shown with its state `unknown`.
            let (env, state, att, hist) = record;
            let Some(env) = env else { continue };
            let job = JobInfo::from_bytes(env, state.unwrap_or_default(), att, hist);
            let reason = job.last_error();
            out.push(DeadLetter { id, died_at: died_at as u64, reason, job });
        }
        Ok(out)
    }

    /// Stops workers from starting jobs of `queue` (running jobs finish).
    pub async fn pause(&self, queue: &str) -> Result<()> {
        for p in self.partitions(queue) {
            self.pause_one(&p).await?;
        }
        Ok(())
    }

    async fn pause_one(&self, queue: &str) -> Result<()> {
        let k = self.keys(queue);
        let _: () = redis::cmd("HSET").arg(&k.conf).arg("paused").arg("1").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Lets workers start jobs of `queue` again and wakes an idle one.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        for p in self.partitions(queue) {
            self.resume_one(&p).await?;
        }
        Ok(())
    }

    async fn resume_one(&self, queue: &str) -> Result<()> {
        let k = self.keys(queue);
        let _: () = redis::pipe()
            .hdel(&k.conf, "paused")
            .ignore()
            .rpush(&k.wake, "1")
            .ignore()
            .ltrim(&k.wake, 0, 0)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

/// A job record's stored fields as bytes: envelope, state, attempts, history.
type RecordBytes = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// A script reply element as text (ids, markers and numbers alike).
fn value_text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// One element of the enqueue script's reply: an id, or `{ id, outcome, replaced, running }`.
fn enqueued_of(v: redis::Value) -> Enqueued {
    match v {
        redis::Value::Array(items) => {
            let mut t = items.into_iter().map(value_text);
            let id = JobId(t.next().unwrap_or_default());
            let outcome = t.next().unwrap_or_default();
            let replaced = t.next().unwrap_or_default();
            let running = t.next().unwrap_or_default();
            Enqueued { id, deduplicated: Deduplicated::from_reply(&outcome, replaced, running) }
        }
        other => Enqueued { id: JobId(value_text(other)), deduplicated: None },
    }
}

fn encode_args<A: JobArgs>(kind: &str, args: &A) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(args).map_err(|source| Error::Encode { kind: kind.to_owned(), source })
}

fn prepare(kind: &str, args: Box<RawValue>, defaults: &KindOptions, opts: EnqueueOptions) -> Result<Prepared> {
    let queue = opts.queue.unwrap_or_else(|| defaults.queue.clone());
    validate_queue_name(&queue).map_err(Error::Invalid)?;
    let max_attempts = opts.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        return Err(Error::Invalid("max_attempts must be at least 1".into()));
    }
    let priority = opts.priority.unwrap_or(defaults.priority);
    let now = now_ms();
    let at_ms =
        opts.run_at.map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)).unwrap_or(0);
    if let Some(d) = &opts.dedup {
        crate::dedup::check(d).map_err(Error::Invalid)?;
        if opts.batch.is_some() {
            return Err(Error::Invalid("a job of a batch cannot have a dedup key".into()));
        }
        if matches!(d.mode, DedupMode::Debounce { .. }) && (opts.delay.is_some() || opts.run_at.is_some()) {
            return Err(Error::Invalid(
                "a debounced job starts after its debounce delay: it takes no delay or run_at".into(),
            ));
        }
        if opts.id.as_ref().is_some_and(|id| !crate::dedup::plain_id(id.as_str())) {
            return Err(Error::Invalid(
                "the id of a job with a dedup key may hold only letters, digits, '-', '_', '.' and ':'".into(),
            ));
        }
    }
    let debounce = match opts.dedup.as_ref().map(|d| d.mode) {
        Some(DedupMode::Debounce { delay, .. }) => Some(delay),
        _ => None,
    };
    let delay_ms = debounce.or(opts.delay).map(|d| d.as_millis() as u64).unwrap_or(0);
    let run_at = if at_ms > 0 { at_ms } else { now + delay_ms };
    let caller_id = opts.id.is_some();
    let id = opts.id.unwrap_or_default();
    if let Some(u) = &opts.unique
        && (u.key.is_empty() || u.window.is_zero())
    {
        return Err(Error::Invalid("a unique key must be non-empty with a non-zero window".into()));
    }
    if let Some(t) = &opts.tenant {
        crate::tenant::validate_tenant(t).map_err(Error::Invalid)?;
    }
    if let Some(d) = opts.durability {
        d.validate()?;
    }
    let batch_key = opts.batch.clone();
    let epoch_ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let env = Envelope {
        id: id.clone(),
        kind: kind.to_owned(),
        queue: queue.clone(),
        args,
        max_attempts,
        enqueued_at: now,
        run_at,
        priority,
        trace: opts.trace,
        timeout_ms: opts.timeout.or(defaults.timeout).map(|t| t.as_millis() as u64),
        deadline: opts.deadline.map(epoch_ms),
        tenant: opts.tenant.clone(),
        batch: opts.batch,
        dedup: match (&opts.dedup, &opts.unique) {
            (Some(d), _) => Some(DedupTag { mode: d.mode.name().to_owned(), key: d.key.clone() }),
            (None, Some(u)) => Some(DedupTag { mode: "throttle".to_owned(), key: u.key.clone() }),
            (None, None) => None,
        },
    };
    let envelope = serde_json::to_string(&env).map_err(|source| Error::Encode { kind: kind.to_owned(), source })?;
    let partition_key = opts
        .partition_key
        .or(batch_key)
        .or_else(|| opts.tenant.clone())
        .or_else(|| opts.dedup.as_ref().map(|d| d.key.clone()))
        .or_else(|| opts.unique.as_ref().map(|u| u.key.clone()))
        .or_else(|| caller_id.then(|| id.0.clone()));
    Ok(Prepared {
        logical: queue.clone(),
        partition_key,
        queue,
        id,
        envelope,
        priority: priority.digit(),
        delay_ms,
        at_ms,
        unique: opts.unique,
        dedup: opts.dedup,
        tenant: opts.tenant,
        durability: opts.durability,
    })
}

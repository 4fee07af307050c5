//! Workflows: a DAG of jobs across queues, submitted in one call and stored durably.
//!
//! Each step is a job (kind, args, queue) or a workflow of its own (nesting), and names
//! the steps it depends on, each edge with a failure policy ([`OnFailure`]): when a
//! dependency fails (dead letter, expiry, cancel, or failed by its own dependencies) the
//! dependant fails (`fail`, the default), is skipped (`skip`), or runs anyway (`run`).
//! A step starts when every dependency has resolved; its handler reads their results by
//! step name ([`StepHandle::result`]) and may add steps at run time
//! ([`StepHandle::add_steps`]), which the adder's dependants then also wait for.
//!
//! ## How it stays consistent on a cluster
//!
//! A workflow's state lives under its own hash tag (`{wf:<id>}`), apart from every
//! queue, and is changed only by `scripts/workflow.lua`, one atomic call per change.
//! A step's job has the id `wf:<workflow>:<step>`. Every script that ends a job in its
//! queue's slot (the acknowledgement, the lease reaper, the cancel) also writes, in the
//! same call, an entry to that queue's outbox (`wfout`). A pump ([`Client::pump_workflows`],
//! run by workers after their acknowledgements and on every heartbeat, and by
//! [`Client::cancel`]) applies each entry to its workflow, enqueues the steps that became
//! ready (with their deterministic ids and a unique key each, so a second run enqueues
//! nothing twice), confirms them, and removes the entry last. Every step of the pump can
//! run again after a crash with the same result, so no step's end is lost and no
//! workflow waits forever on a job that ended.

use crate::client::{Client, EnqueueOptions, Unique};
use crate::envelope::{JobId, Priority, now_ms};
use crate::error::{Error, Result};
use crate::events::TenantEvent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Most steps one workflow may hold (its submission and the steps added at run time).
pub const MAX_STEPS: usize = 50_000;
/// Deepest nesting of workflows inside workflows.
pub const MAX_DEPTH: u32 = 4;
/// How long a finished (or cancelled) workflow's state is kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Steps and dependency edges stored per script call of a submission.
pub const SUBMIT_PART: usize = 1_000;
/// Enqueued steps a status looks up to show which run now.
pub const RUNNING_LOOKUPS: usize = 1_000;
/// Outbox entries read per round trip of the pump.
const PUMP_BATCH: usize = 500;

/// The pumps running in this process, by prefix and queue, each with whether it was
/// asked to look again.
fn lock_pumps() -> std::sync::MutexGuard<'static, HashMap<String, bool>> {
    static PUMPS: std::sync::OnceLock<std::sync::Mutex<HashMap<String, bool>>> = std::sync::OnceLock::new();
    PUMPS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// What a dependant does when this dependency fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The dependant fails without running (and so do its own `fail` dependants).
    #[default]
    Fail,
    /// The dependant is skipped without running; a skip reaches its dependants as a skip.
    Skip,
    /// The dependant runs anyway.
    Run,
}

impl OnFailure {
    fn code(self) -> &'static str {
        match self {
            OnFailure::Fail => "fail",
            OnFailure::Skip => "skip",
            OnFailure::Run => "run",
        }
    }
}

/// One dependency edge: a step name, or `{"step": .., "on_failure": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dependency {
    /// The step, with the default policy (`fail`).
    Name(String),
    /// The step with its policy.
    With {
        /// The step depended on.
        step: String,
        /// What happens when it fails.
        #[serde(default)]
        on_failure: OnFailure,
    },
}

impl Dependency {
    /// The step depended on.
    pub fn step(&self) -> &str {
        match self {
            Dependency::Name(s) | Dependency::With { step: s, .. } => s,
        }
    }

    /// Its policy.
    pub fn on_failure(&self) -> OnFailure {
        match self {
            Dependency::Name(_) => OnFailure::Fail,
            Dependency::With { on_failure, .. } => *on_failure,
        }
    }

    /// A dependency on `step` with `policy`.
    pub fn on(step: impl Into<String>, policy: OnFailure) -> Self {
        Dependency::With { step: step.into(), on_failure: policy }
    }
}

/// One step: a job (`kind` + `args`) or a nested workflow (`workflow`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSpec {
    /// Its name, unique in the workflow: 1 to 100 of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// The job kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The job's arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Box<RawValue>>,
    /// Queue (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Attempts (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt, ms (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A nested workflow: the step resolves when it finishes (succeeded, or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowSpec>,
    /// The steps it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

impl StepSpec {
    /// A job step of `kind` with `args`.
    pub fn job(name: impl Into<String>, kind: impl Into<String>, args: &impl Serialize) -> Result<Self> {
        let args = serde_json::value::to_raw_value(args).map_err(|e| Error::Invalid(format!("step args: {e}")))?;
        Ok(StepSpec {
            name: name.into(),
            kind: Some(kind.into()),
            args: Some(args),
            queue: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
            workflow: None,
            depends_on: Vec::new(),
        })
    }

    /// A step that is a workflow of its own.
    pub fn nested(name: impl Into<String>, workflow: WorkflowSpec) -> Self {
        StepSpec {
            name: name.into(),
            kind: None,
            args: None,
            queue: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
            workflow: Some(workflow),
            depends_on: Vec::new(),
        }
    }

    /// Adds dependencies with the default policy.
    pub fn after<S: Into<String>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.depends_on.extend(steps.into_iter().map(|s| Dependency::Name(s.into())));
        self
    }

    /// Adds one dependency with `policy`.
    pub fn after_with(mut self, step: impl Into<String>, policy: OnFailure) -> Self {
        self.depends_on.push(Dependency::on(step, policy));
        self
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
}

/// A workflow: its steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkflowSpec {
    /// The steps, in any order.
    pub steps: Vec<StepSpec>,
}

/// Checks step names: 1 to 100 of `A-Z a-z 0-9 _ - .`.
pub fn validate_step_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(Error::Invalid(format!("step name {name:?} must be 1 to 100 of A-Z a-z 0-9 _ - .")));
    }
    Ok(())
}

fn validate_step(s: &StepSpec, depth: u32) -> Result<()> {
    validate_step_name(&s.name)?;
    match (&s.kind, &s.workflow) {
        (Some(kind), None) => {
            if kind.is_empty() || kind.len() > 128 {
                return Err(Error::Invalid(format!("step {:?}: kind must be 1 to 128 characters", s.name)));
            }
            if let Some(q) = &s.queue {
                crate::keys::validate_queue_name(q).map_err(|e| Error::Invalid(format!("step {:?}: {e}", s.name)))?;
            }
            if s.max_attempts == Some(0) {
                return Err(Error::Invalid(format!("step {:?}: max_attempts must be at least 1", s.name)));
            }
        }
        (None, Some(w)) => {
            if depth + 1 > MAX_DEPTH {
                return Err(Error::Invalid(format!("workflows nest at most {MAX_DEPTH} deep")));
            }
            w.validate_at(depth + 1)?;
        }
        _ => return Err(Error::Invalid(format!("step {:?} needs either a kind or a workflow", s.name))),
    }
    Ok(())
}

impl WorkflowSpec {
    /// Checks names, kinds, dependencies (each known, no cycle) and size.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(0)
    }

    fn validate_at(&self, depth: u32) -> Result<()> {
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(Error::Invalid(format!("a workflow holds 1 to {MAX_STEPS} steps")));
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            validate_step(s, depth)?;
            if index.insert(&s.name, i).is_some() {
                return Err(Error::Invalid(format!("step {:?} is named twice", s.name)));
            }
        }
        topo_order(&self.steps, &index, false)?;
        Ok(())
    }
}

/// The steps in an order where each comes after its dependencies among them (Kahn's
/// algorithm), or an error for a cycle, a dependency named twice, or (unless
/// `outside`: steps added to a workflow may name its existing steps) an unknown one.
fn topo_order(steps: &[StepSpec], index: &HashMap<&str, usize>, outside: bool) -> Result<Vec<usize>> {
    let mut indegree = vec![0usize; steps.len()];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in &s.depends_on {
            if !seen.insert(d.step()) {
                return Err(Error::Invalid(format!("step {:?} names {:?} twice", s.name, d.step())));
            }
            match index.get(d.step()) {
                Some(&j) => {
                    indegree[i] += 1;
                    out[j].push(i);
                }
                None if outside => {}
                None => {
                    return Err(Error::Invalid(format!("step {:?} depends on unknown step {:?}", s.name, d.step())));
                }
            }
        }
    }
    let mut queue: VecDeque<usize> = (0..steps.len()).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &j in &out[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                queue.push_back(j);
            }
        }
    }
    if order.len() != steps.len() {
        return Err(Error::Invalid("the steps' dependencies form a cycle".into()));
    }
    Ok(order)
}

/// A workflow's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowState {
    /// Some step has not ended.
    Running,
    /// Every step ended and none failed or was cancelled.
    Succeeded,
    /// Every step ended and at least one failed or was cancelled.
    Failed,
    /// Cancelled as a whole.
    Cancelled,
}

impl WorkflowState {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => WorkflowState::Running,
            "succeeded" => WorkflowState::Succeeded,
            "failed" => WorkflowState::Failed,
            "cancelled" => WorkflowState::Cancelled,
            _ => return None,
        })
    }

    /// Whether it has ended.
    pub fn is_final(self) -> bool {
        self != WorkflowState::Running
    }
}

/// A step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for its dependencies.
    Waiting,
    /// Its job is enqueued (ready, scheduled or retrying), or its nested workflow runs.
    Enqueued,
    /// Its job is running now (a status reads it from the job; see [`Client::workflow`]).
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed: dead-lettered, expired, or failed by a dependency.
    Failed,
    /// Cancelled (its job, or the workflow).
    Cancelled,
    /// Skipped by a dependency's failure.
    Skipped,
}

impl StepState {
    fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "w" => StepState::Waiting,
            "q" => StepState::Enqueued,
            "k" => StepState::Succeeded,
            "f" => StepState::Failed,
            "c" => StepState::Cancelled,
            "s" => StepState::Skipped,
            _ => return None,
        })
    }

    /// The `workflow.step.<state>` event name part.
    fn word(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Enqueued => "enqueued",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::Skipped => "skipped",
        }
    }
}

/// One step as a status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStatus {
    /// The step's name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Its job's queue (job steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its job's id (job steps) or nested workflow's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Its nested workflow's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Why it failed, was cancelled or skipped (`dead`, `expire`, `cancel`, `a dependency failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its result, as its handler recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
}

/// A workflow's state, with its steps'.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowStatus {
    /// Its id.
    pub id: String,
    /// Its overall state.
    pub state: WorkflowState,
    /// The tenant it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The workflow it is a step of, if nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Steps in total (including those added at run time).
    pub total: u64,
    /// Steps not ended yet.
    pub open: u64,
    /// Steps that failed or were cancelled.
    pub failed: u64,
    /// When it was submitted (ms since the epoch).
    pub created_at: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Its steps, by name.
    pub steps: Vec<StepStatus>,
}

/// Key names of one workflow, under its own hash tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkflowKey {
    Meta,
    Spec,
    St,
    Rem,
    Out,
    Verdict,
    Res,
    Err,
    Rel,
    Relby,
    Ready,
}

impl WorkflowKey {
    /// The key's name in `workflow.lua`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            WorkflowKey::Meta => "meta",
            WorkflowKey::Spec => "spec",
            WorkflowKey::St => "st",
            WorkflowKey::Rem => "rem",
            WorkflowKey::Out => "out",
            WorkflowKey::Verdict => "verdict",
            WorkflowKey::Res => "res",
            WorkflowKey::Err => "err",
            WorkflowKey::Rel => "rel",
            WorkflowKey::Relby => "relby",
            WorkflowKey::Ready => "ready",
        }
    }
}

/// The key of a tenant's workflow step quota (`scripts/wfquota.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaKey {
    Steps,
}

impl QuotaKey {
    /// The key's name in `wfquota.lua` (what the scripts' drift test reads).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) const fn name(self) -> &'static str {
        match self {
            QuotaKey::Steps => "steps",
        }
    }
}

fn quota_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}:wfquota:{tenant}")
}

/// Workflows whose submission has not finished enqueueing its first steps: id -> when
/// it began (ms). An entry older than [`RESUME_AFTER`] is resumed by
/// [`Client::resume_submissions`].
fn submits_key(prefix: &str) -> String {
    format!("{prefix}:wfsubmits")
}

/// How long a submission may take before another process finishes it.
pub const RESUME_AFTER: Duration = Duration::from_secs(30);
/// How often one process looks for submissions to finish.
const RESUME_EVERY: Duration = Duration::from_secs(5);

/// When this process last looked for submissions to finish, by prefix.
fn lock_resumed() -> std::sync::MutexGuard<'static, HashMap<String, u64>> {
    static LAST: std::sync::OnceLock<std::sync::Mutex<HashMap<String, u64>>> = std::sync::OnceLock::new();
    LAST.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Steps a spec holds, nested workflows' included.
fn count_steps(steps: &[StepSpec]) -> u64 {
    steps.iter().map(|s| 1 + s.workflow.as_ref().map_or(0, |w| count_steps(&w.steps))).sum()
}

/// The workflow a (possibly nested) workflow id belongs to at the top.
fn root_of(id: &str) -> &str {
    id.split('~').next().unwrap_or(id)
}

fn wf_key(prefix: &str, id: &str, k: WorkflowKey) -> String {
    format!("{prefix}:{{wf:{id}}}:{}", k.name())
}

/// The job id of step `step` of workflow `workflow`.
pub fn step_job_id(workflow: &str, step: &str) -> JobId {
    JobId(format!("wf:{workflow}:{step}"))
}

/// The workflow and step of a step's job id, or `None` for any other job.
pub fn parse_step_job_id(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix("wf:")?.rsplit_once(':')
}

/// The id of the nested workflow that step `step` of `workflow` runs.
pub fn child_workflow_id(workflow: &str, step: &str) -> String {
    format!("{workflow}~{step}")
}

fn validate_workflow_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 600 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.~".contains(&b)) {
        return Err(Error::Invalid(format!("workflow id {id:?} must be 1 to 600 of A-Z a-z 0-9 _ - . ~")));
    }
    Ok(())
}

/// The stored form of a step (what the pump needs to enqueue it).
#[derive(Debug, Serialize, Deserialize)]
struct StoredStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workflow: Option<WorkflowSpec>,
}

impl StoredStep {
    fn of(s: &StepSpec) -> Self {
        StoredStep {
            kind: s.kind.clone(),
            args: s.args.clone(),
            queue: s.queue.clone(),
            priority: s.priority,
            max_attempts: s.max_attempts,
            timeout_ms: s.timeout_ms,
            workflow: s.workflow.clone(),
        }
    }

    /// The queue its job goes to.
    fn queue(&self) -> String {
        self.queue.clone().unwrap_or_else(|| {
            self.kind
                .as_deref()
                .and_then(crate::catalogue::lookup)
                .map(|k| (k.options)().queue)
                .unwrap_or_else(|| "default".to_owned())
        })
    }
}

/// A script reply: the workflow's state, tenant, parent, and the steps handed back.
#[derive(Debug, Default)]
struct Reply {
    state: String,
    tenant: String,
    parent: String,
    pstep: String,
    steps: Vec<(String, String)>,
}

fn text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn encode_steps(steps: &[StepSpec]) -> Result<Vec<String>> {
    let mut args = Vec::with_capacity(steps.len() * 3);
    for s in steps {
        let deps: Vec<(&str, &str)> = s.depends_on.iter().map(|d| (d.step(), d.on_failure().code())).collect();
        args.push(s.name.clone());
        args.push(serde_json::to_string(&StoredStep::of(s)).map_err(|e| Error::Corrupt(e.to_string()))?);
        args.push(serde_json::to_string(&deps).map_err(|e| Error::Corrupt(e.to_string()))?);
    }
    Ok(args)
}

/// Who submits a workflow: its tenant, and its parent when nested.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The workflow's id (default: a new one). Submitting an id again creates nothing
    /// new and enqueues what a first submission left unenqueued.
    pub id: Option<String>,
    /// The tenant every step runs as (the HTTP API sets it from the credential).
    pub tenant: Option<String>,
    /// Most steps of the tenant's workflows that may be open at once, this one's
    /// included (nested and run-time steps count too); `None` or 0: no quota. Over it
    /// the submission fails with [`Error::WorkflowQuotaExceeded`] and stores nothing.
    /// Steps added at run time obey the quota the tenant's last submission named.
    pub step_quota: Option<u64>,
}

impl Client {
    async fn workflow_call(&self, id: &str, op: &str, args: &[String]) -> Result<Reply> {
        let mut inv = crate::scripts::WORKFLOW.call();
        for k in crate::scripts::WORKFLOW.keys {
            inv.key(wf_key(self.prefix(), id, *k));
        }
        inv.arg(op).arg(KEEP.as_millis() as u64);
        for a in args {
            inv.arg(a.as_str());
        }
        let reply: Vec<redis::Value> = inv.invoke_async(&mut self.connection()).await?;
        let mut texts = reply.into_iter().map(text);
        let first = texts.next().unwrap_or_default();
        if let Some(reason) = first.strip_prefix('!') {
            let detail = texts.next().unwrap_or_default();
            return Err(match reason {
                // The workflow is gone (expired) or is not the job's tenant's: nothing to apply.
                "gone" | "tenant" => return Ok(Reply::default()),
                "dependency" => Error::Invalid(format!("added steps depend on unknown step {detail:?}")),
                "adder" => Error::Invalid(format!("step {detail:?} is not running, so it cannot add steps")),
                "finished" => Error::Invalid(format!("workflow {id} has ended: no steps can be added")),
                other => Error::Corrupt(format!("workflow {id}: {other} {detail}")),
            });
        }
        let mut r = Reply {
            state: first,
            tenant: texts.next().unwrap_or_default(),
            parent: texts.next().unwrap_or_default(),
            pstep: texts.next().unwrap_or_default(),
            steps: Vec::new(),
        };
        while let (Some(name), Some(spec)) = (texts.next(), texts.next()) {
            r.steps.push((name, spec));
        }
        Ok(r)
    }

    /// Submits a workflow: stores it (one script call), then enqueues the steps that
    /// depend on nothing. Returns its id.
    pub async fn submit_workflow(&self, spec: &WorkflowSpec, opts: SubmitOptions) -> Result<String> {
        spec.validate()?;
        if let Some(t) = &opts.tenant {
            crate::tenant::validate_tenant(t).map_err(Error::Invalid)?;
        }
        let id = opts.id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        validate_workflow_id(&id)?;
        if id.contains('~') {
            return Err(Error::Invalid(format!("workflow id {id:?}: `~` is kept for nested workflows")));
        }
        let tenant = opts.tenant.as_deref().unwrap_or("");
        let reply = self.store_workflow(&id, spec, tenant, opts.step_quota).await?;
        // A re-submission of a workflow that had ended was charged again: given back.
        // (One that ends while its first steps are enqueued gives its steps back itself.)
        let ended = WorkflowState::parse(&reply.state).is_some_and(|s| s.is_final());
        self.release_from(&id, reply, true).await?;
        let submits = submits_key(self.prefix());
        redis::cmd("ZREM").arg(&submits).arg(&id).query_async::<()>(&mut self.connection()).await?;
        if ended {
            self.release_steps(tenant, &id).await?;
        }
        Ok(id)
    }

    async fn quota_call(&self, tenant: &str, args: &[&str]) -> Result<(bool, u64, u64)> {
        let mut inv = crate::scripts::WORKFLOW_QUOTA.call();
        inv.key(quota_key(self.prefix(), tenant));
        for a in args {
            inv.arg(*a);
        }
        let (ok, total, limit): (i64, i64, i64) = inv.invoke_async(&mut self.connection()).await?;
        Ok((ok == 1, total.max(0) as u64, limit.max(0) as u64))
    }

    /// Charges `n` steps of root workflow `id` to `tenant`'s quota (`op`: submit | add).
    /// When refused, workflows that ended without giving theirs back (a process stopped
    /// in between, or their state expired) are released first, at most once a minute per
    /// tenant, and the charge is tried again.
    async fn charge_steps(&self, tenant: &str, op: &str, id: &str, n: u64, limit: u64) -> Result<()> {
        let (n_s, l_s) = (n.to_string(), limit.to_string());
        let args = [op, id, n_s.as_str(), l_s.as_str()];
        let (mut ok, mut total, mut quota) = self.quota_call(tenant, &args).await?;
        if !ok && self.sweep_quota(tenant).await? {
            (ok, total, quota) = self.quota_call(tenant, &args).await?;
        }
        if ok {
            return Ok(());
        }
        Err(Error::WorkflowQuotaExceeded { tenant: tenant.to_owned(), open: total, asked: n, quota })
    }

    /// Gives back the steps of workflows of `tenant` that are gone or ended. Returns
    /// whether it looked (it does at most once a minute per tenant).
    async fn sweep_quota(&self, tenant: &str) -> Result<bool> {
        let key = quota_key(self.prefix(), tenant);
        let mut conn = self.connection();
        let first: bool = redis::cmd("SET")
            .arg(format!("{key}:swept"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        if !first {
            return Ok(false);
        }
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
        let ids: Vec<&str> = fields.iter().filter_map(|f| f.strip_prefix("w:")).collect();
        let submits = submits_key(self.prefix());
        // One round trip per few hundred workflows: whether each is being submitted (it is
        // charged before it is stored) and its state.
        for chunk in ids.chunks(PUMP_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.zscore(&submits, *id).hget(wf_key(self.prefix(), id, WorkflowKey::Meta), "state");
            }
            let found: Vec<(Option<f64>, Option<String>)> = pipe.query_async(&mut conn).await?;
            for (id, (submitting, state)) in chunk.iter().zip(found) {
                let ended = state.as_deref().and_then(WorkflowState::parse).is_none_or(|s| s.is_final());
                if submitting.is_none() && ended {
                    self.release_steps(tenant, id).await?;
                }
            }
        }
        Ok(true)
    }

    /// Gives a root workflow's steps back to its tenant's quota (it ended).
    async fn release_steps(&self, tenant: &str, id: &str) -> Result<()> {
        if !tenant.is_empty() {
            self.quota_call(tenant, &["release", root_of(id)]).await?;
        }
        Ok(())
    }

    /// Steps of `tenant`'s workflows not yet ended, and the quota in force (0: none).
    pub async fn workflow_steps_used(&self, tenant: &str) -> Result<(u64, u64)> {
        let (total, limit): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(quota_key(self.prefix(), tenant))
            .arg("_total")
            .arg("_limit")
            .query_async(&mut self.connection())
            .await?;
        Ok((total.unwrap_or(0).max(0) as u64, limit.unwrap_or(0).max(0) as u64))
    }

    /// Finishes submissions that stopped half way: a workflow stored more than
    /// [`RESUME_AFTER`] ago whose first steps may not all be enqueued gets them enqueued
    /// (deterministic ids: what was enqueued already is not enqueued twice). Workers run
    /// it with their heartbeats. Returns the workflows looked at.
    pub async fn resume_submissions(&self) -> Result<usize> {
        // Every queue's heartbeat calls this; one look per process every few seconds does.
        {
            let mut last = lock_resumed();
            let now = now_ms();
            if last.get(self.prefix()).is_some_and(|at| now.saturating_sub(*at) < RESUME_EVERY.as_millis() as u64) {
                return Ok(0);
            }
            last.insert(self.prefix().to_owned(), now);
        }
        let submits = submits_key(self.prefix());
        let before = now_ms().saturating_sub(RESUME_AFTER.as_millis() as u64);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&submits)
            .arg("-inf")
            .arg(before)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut self.connection())
            .await?;
        for id in &ids {
            // `gone` (never stored: its submitter got an error) reads as an empty reply.
            let reply = self.workflow_call(id, "resume", &[]).await?;
            if !reply.state.is_empty() {
                tracing::info!(workflow = %id, steps = reply.steps.len(), "finishing a submission that stopped half way");
                self.release_from(id, reply, true).await?;
            }
            redis::cmd("ZREM").arg(&submits).arg(id).query_async::<()>(&mut self.connection()).await?;
        }
        Ok(ids.len())
    }

    /// Charges the quota, marks the submission and stores the workflow; returns the
    /// steps to enqueue first.
    async fn store_workflow(&self, id: &str, spec: &WorkflowSpec, tenant: &str, quota: Option<u64>) -> Result<Reply> {
        if !tenant.is_empty() {
            self.charge_steps(tenant, "submit", id, count_steps(&spec.steps), quota.unwrap_or(0)).await?;
        }
        // Marked first, so a submission that stops half way (its process killed between
        // storing the workflow and enqueueing its first steps) is finished by another.
        let submits = submits_key(self.prefix());
        redis::cmd("ZADD").arg(&submits).arg(now_ms()).arg(id).query_async::<()>(&mut self.connection()).await?;
        self.submit_parts(id, [tenant, "", "", "0"], &spec.steps).await
    }

    /// Stores a workflow's steps in parts of [`SUBMIT_PART`] steps, one script call each
    /// (so a large workflow never holds Redis for long), the last of which starts it.
    /// `head`: tenant, parent, parent step, depth.
    async fn submit_parts(&self, id: &str, head: [&str; 4], steps: &[StepSpec]) -> Result<Reply> {
        // Parts of at most SUBMIT_PART steps and dependency edges together (a step with
        // more edges than that is a part of its own).
        let mut parts: Vec<&[StepSpec]> = Vec::new();
        let (mut from, mut weight) = (0, 0);
        for (i, s) in steps.iter().enumerate() {
            let w = 1 + s.depends_on.len();
            if weight > 0 && weight + w > SUBMIT_PART {
                parts.push(&steps[from..i]);
                (from, weight) = (i, 0);
            }
            weight += w;
        }
        parts.push(&steps[from..]);
        let last = parts.len().saturating_sub(1);
        let mut reply = Reply::default();
        for (i, part) in parts.into_iter().enumerate() {
            let mut args: Vec<String> = head.iter().map(|h| (*h).to_owned()).collect();
            args.extend(encode_steps(part)?);
            reply = self.workflow_call(id, if i == last { "submit" } else { "stage" }, &args).await?;
        }
        Ok(reply)
    }

    /// What a submitter killed right after storing its workflow leaves behind: the
    /// workflow stored and marked, its first steps not enqueued. For tests of
    /// [`Client::resume_submissions`].
    #[doc(hidden)]
    pub async fn store_workflow_only(&self, spec: &WorkflowSpec, opts: SubmitOptions) -> Result<String> {
        spec.validate()?;
        let id = opts.id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        validate_workflow_id(&id)?;
        self.store_workflow(&id, spec, opts.tenant.as_deref().unwrap_or(""), opts.step_quota).await?;
        Ok(id)
    }

    /// Enqueues the steps a script handed back (jobs, or nested workflows), confirms
    /// them, and cancels any the workflow cancelled meanwhile.
    async fn release(&self, id: &str, reply: Reply) -> Result<()> {
        self.release_from(id, reply, false).await
    }

    /// As [`Client::release`]; `submitted`: `id` was just submitted (or resumed), so the
    /// steps ready at once are handed out in parts, each asked for once the one before
    /// is enqueued (nested workflows submitted on the way are treated the same).
    async fn release_from(&self, id: &str, reply: Reply, submitted: bool) -> Result<()> {
        let mut pending = vec![(id.to_owned(), reply)];
        let mut starts: Vec<String> = if submitted { vec![id.to_owned()] } else { Vec::new() };
        loop {
            let Some((wf, reply)) = pending.pop() else {
                // Every part handed out so far is enqueued: the next part of a submission.
                let Some(wf) = starts.pop() else { break };
                let r = self.workflow_call(&wf, "start", &[]).await?;
                if !r.steps.is_empty() {
                    pending.push((wf.clone(), r));
                    starts.push(wf);
                }
                continue;
            };
            if reply.steps.is_empty() {
                continue;
            }
            let tenant = (!reply.tenant.is_empty()).then(|| reply.tenant.clone());
            let mut jobs = Vec::new();
            let mut names = Vec::with_capacity(reply.steps.len());
            for (name, spec) in &reply.steps {
                let stored: StoredStep =
                    serde_json::from_str(spec).map_err(|e| Error::Corrupt(format!("step {name} of {wf}: {e}")))?;
                names.push(name.clone());
                if let Some(child) = &stored.workflow {
                    let cid = child_workflow_id(&wf, name);
                    let depth = (self.workflow_depth(&wf).await? + 1).to_string();
                    let r = self.submit_parts(&cid, [&reply.tenant, &wf, name, &depth], &child.steps).await?;
                    starts.push(cid.clone());
                    pending.push((cid, r));
                    continue;
                }
                let kind = stored.kind.clone().unwrap_or_default();
                let defaults = crate::catalogue::lookup(&kind).map(|k| (k.options)()).unwrap_or_default();
                let jid = step_job_id(&wf, name);
                let opts = EnqueueOptions {
                    queue: Some(stored.queue()),
                    priority: stored.priority,
                    max_attempts: stored.max_attempts,
                    timeout: stored.timeout_ms.map(Duration::from_millis),
                    id: Some(jid.clone()),
                    unique: Some(Unique { key: jid.0.clone(), window: KEEP }),
                    tenant: tenant.clone(),
                    ..Default::default()
                };
                let args = stored.args.unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON"));
                jobs.push((kind, args, defaults, opts));
            }
            if !jobs.is_empty() {
                let queues: Vec<String> = jobs.iter().map(|j| j.3.queue.clone().unwrap_or_default()).collect();
                if let Err(e) = self.enqueue_many(jobs).await {
                    match e {
                        // The step can never be enqueued as it is: it fails, and the
                        // workflow goes on by its dependants' policies.
                        Error::Invalid(_) | Error::QuotaExceeded { .. } | Error::Encode { .. } => {
                            tracing::warn!(workflow = %wf, error = %e, "workflow steps could not be enqueued: failed");
                            for name in &names {
                                let r = self
                                    .workflow_call(
                                        &wf,
                                        "apply",
                                        &[name.clone(), "dead".into(), reply.tenant.clone(), String::new()],
                                    )
                                    .await?;
                                self.after_apply(&wf, r, &mut pending).await?;
                            }
                            continue;
                        }
                        other => return Err(other),
                    }
                }
                let confirm = self.workflow_call(&wf, "confirm", &names).await?;
                for (name, _) in &confirm.steps {
                    if let Some(pos) = names.iter().position(|n| n == name) {
                        self.cancel_quietly(&queues[pos], step_job_id(&wf, name).as_str()).await?;
                    }
                }
            } else {
                self.workflow_call(&wf, "confirm", &names).await?;
            }
        }
        Ok(())
    }

    /// After a step of `wf` was applied: when `wf` ended and is nested, its parent's step
    /// ends the same way (queued on `pending` with what that hands back).
    async fn after_apply(&self, wf: &str, reply: Reply, pending: &mut Vec<(String, Reply)>) -> Result<()> {
        let mut cur = (wf.to_owned(), reply);
        loop {
            let (id, reply) = cur;
            let state = WorkflowState::parse(&reply.state);
            let parent = (reply.parent.clone(), reply.pstep.clone(), reply.tenant.clone());
            if state.is_some_and(|s| s.is_final()) {
                self.workflow_finished_event(&id, &reply.tenant, state.unwrap_or(WorkflowState::Failed)).await;
                if parent.0.is_empty() {
                    self.release_steps(&reply.tenant, &id).await?;
                }
            }
            pending.push((id, reply));
            match state {
                Some(s) if s.is_final() && !parent.0.is_empty() => {
                    let outcome = match s {
                        WorkflowState::Succeeded => "ok",
                        WorkflowState::Cancelled => "cancel",
                        _ => "dead",
                    };
                    let r = self
                        .workflow_call(&parent.0, "apply", &[parent.1, outcome.into(), parent.2, String::new()])
                        .await?;
                    cur = (parent.0, r);
                }
                _ => return Ok(()),
            }
        }
    }

    async fn workflow_depth(&self, id: &str) -> Result<u32> {
        let d: Option<u32> = redis::cmd("HGET")
            .arg(wf_key(self.prefix(), id, WorkflowKey::Meta))
            .arg("depth")
            .query_async(&mut self.connection())
            .await?;
        Ok(d.unwrap_or(0))
    }

    async fn workflow_finished_event(&self, id: &str, tenant: &str, state: WorkflowState) {
        if tenant.is_empty() {
            return;
        }
        let ev =
            TenantEvent::domain("workflow.finished", id, now_ms(), serde_json::json!({"workflow": id, "state": state}));
        if let Err(e) = crate::events::append(&mut self.connection(), self.prefix(), &[(tenant.to_owned(), ev)]).await {
            tracing::warn!(workflow = %id, error = %e, "workflow.finished event not appended");
        }
    }

    /// Applies the ended steps in `queue`'s workflow outbox (every partition): each to
    /// its workflow (one script call per workflow and few hundred entries), enqueues what
    /// became ready, then removes the entries. Safe to run anywhere, any number of times,
    /// at once; within one process one pump per queue runs at a time (a call while one
    /// runs asks it to look again). Returns entries applied.
    pub async fn pump_workflows(&self, queue: &str) -> Result<usize> {
        let mark = format!("{}\n{queue}", self.prefix());
        {
            let mut running = lock_pumps();
            match running.get_mut(&mark) {
                Some(again) => {
                    *again = true;
                    return Ok(0);
                }
                None => {
                    running.insert(mark.clone(), false);
                }
            }
        }
        let mut applied = 0;
        let result = loop {
            match self.pump_round(queue).await {
                Ok(n) => applied += n,
                Err(e) => break Err(e),
            }
            let mut running = lock_pumps();
            let again = running.get_mut(&mark).map(std::mem::take).unwrap_or(false);
            if !again {
                running.remove(&mark);
                break Ok(applied);
            }
        };
        if result.is_err() {
            lock_pumps().remove(&mark);
        }
        result
    }

    /// Drains the outbox of each partition of `queue` (bounded rounds).
    async fn pump_round(&self, queue: &str) -> Result<usize> {
        let mut applied = 0;
        for p in self.partitions(queue) {
            let outbox = format!("{}:{{{p}}}:wfout", self.prefix());
            for _ in 0..1000 {
                let n = self.pump_batch(&outbox).await?;
                applied += n;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(applied)
    }

    async fn pump_batch(&self, outbox: &str) -> Result<usize> {
        let (_, flat): (String, Vec<String>) = redis::cmd("HSCAN")
            .arg(outbox)
            .arg(0)
            .arg("COUNT")
            .arg(PUMP_BATCH)
            .query_async(&mut self.connection())
            .await?;
        if flat.is_empty() {
            return Ok(0);
        }
        #[derive(Deserialize)]
        struct Entry {
            o: String,
            #[serde(default)]
            t: String,
            #[serde(default)]
            r: String,
        }
        let mut by_workflow: Vec<(String, Vec<String>)> = Vec::new();
        let mut events = Vec::new();
        let mut done = Vec::new();
        for pair in flat.chunks(2) {
            let [job, entry] = pair else { continue };
            done.push(job.clone());
            let Some((wf, step)) = parse_step_job_id(job) else { continue };
            let e = match serde_json::from_str::<Entry>(entry) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(job = %job, error = %e, "unreadable workflow outbox entry dropped");
                    continue;
                }
            };
            if !e.t.is_empty() {
                let state = match e.o.as_str() {
                    "ok" => StepState::Succeeded,
                    "cancel" => StepState::Cancelled,
                    _ => StepState::Failed,
                };
                events.push((
                    job.clone(),
                    (
                        e.t.clone(),
                        TenantEvent::domain(
                            format!("workflow.step.{}", state.word()),
                            format!("{wf}:{step}"),
                            now_ms(),
                            serde_json::json!({"workflow": wf, "step": step, "state": state, "outcome": e.o}),
                        ),
                    ),
                ));
            }
            let args = [step.to_owned(), e.o, e.t, e.r];
            match by_workflow.iter_mut().find(|(w, _)| w == wf) {
                Some((_, list)) => list.extend(args),
                None => by_workflow.push((wf.to_owned(), args.to_vec())),
            }
        }
        // Each workflow on its own: one that cannot be applied now (its error is logged)
        // keeps its entries for the next pump and holds up no other workflow's steps.
        let mut held: HashSet<String> = HashSet::new();
        for (wf, args) in by_workflow {
            if let Err(e) = self.apply_ends(&wf, &args).await {
                tracing::warn!(workflow = %wf, error = %e, "workflow step ends not applied yet: kept for the next pump");
                held.insert(wf);
            }
        }
        let kept = |job: &String| parse_step_job_id(job).is_some_and(|(wf, _)| held.contains(wf));
        done.retain(|job| !kept(job));
        events.retain(|(job, _)| !kept(job));
        if done.is_empty() {
            return Ok(0);
        }
        // Last: an entry goes only once its end was applied and what it released enqueued.
        let _: () = redis::cmd("HDEL").arg(outbox).arg(&done).query_async(&mut self.connection()).await?;
        let events: Vec<(String, TenantEvent)> = events.into_iter().map(|(_, e)| e).collect();
        if let Err(e) = crate::events::append(&mut self.connection(), self.prefix(), &events).await {
            tracing::warn!(error = %e, "workflow step events not appended");
        }
        Ok(done.len())
    }

    /// Applies the step ends `args` (quadruples) to workflow `wf` and enqueues what they
    /// released.
    async fn apply_ends(&self, wf: &str, args: &[String]) -> Result<()> {
        let r = self.workflow_call(wf, "apply", args).await?;
        let mut pending = Vec::new();
        self.after_apply(wf, r, &mut pending).await?;
        for (id, reply) in pending {
            self.release(&id, reply).await?;
        }
        Ok(())
    }

    /// A workflow's overall state alone (one small read), or `None` when unknown.
    pub async fn workflow_state(&self, id: &str) -> Result<Option<WorkflowState>> {
        if validate_workflow_id(id).is_err() {
            return Ok(None);
        }
        let s: Option<String> = redis::cmd("HGET")
            .arg(wf_key(self.prefix(), id, WorkflowKey::Meta))
            .arg("state")
            .query_async(&mut self.connection())
            .await?;
        Ok(s.and_then(|s| WorkflowState::parse(&s)))
    }

    /// A workflow's state and its steps', or `None` when unknown (or expired).
    pub async fn workflow(&self, id: &str) -> Result<Option<WorkflowStatus>> {
        if validate_workflow_id(id).is_err() {
            return Ok(None);
        }
        let k = |w| wf_key(self.prefix(), id, w);
        type Hash = HashMap<String, String>;
        let (meta, st, err, res, spec): (Hash, Hash, Hash, Hash, Hash) = redis::pipe()
            .hgetall(k(WorkflowKey::Meta))
            .hgetall(k(WorkflowKey::St))
            .hgetall(k(WorkflowKey::Err))
            .hgetall(k(WorkflowKey::Res))
            .hgetall(k(WorkflowKey::Spec))
            .query_async(&mut self.connection())
            .await?;
        let Some(state) = meta.get("state").and_then(|s| WorkflowState::parse(s)) else { return Ok(None) };
        let num = |f: &str| meta.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
        let mut steps: Vec<StepStatus> = st
            .into_iter()
            .filter_map(|(name, code)| {
                let state = StepState::parse(&code)?;
                let stored: Option<StoredStep> = spec.get(&name).and_then(|s| serde_json::from_str(s).ok());
                let nested = stored.as_ref().is_some_and(|s| s.workflow.is_some());
                Some(StepStatus {
                    queue: stored.as_ref().filter(|_| !nested).map(|s| s.queue()),
                    job_id: (!nested).then(|| step_job_id(id, &name).0),
                    workflow_id: nested.then(|| child_workflow_id(id, &name)),
                    error: err.get(&name).cloned(),
                    result: res.get(&name).and_then(|r| RawValue::from_string(r.clone()).ok()),
                    state,
                    name,
                })
            })
            .collect();
        steps.sort_by(|a, b| a.name.cmp(&b.name));
        self.mark_running(&mut steps).await?;
        let opt = |f: &str| meta.get(f).filter(|v| !v.is_empty()).cloned();
        Ok(Some(WorkflowStatus {
            id: id.to_owned(),
            state,
            tenant: opt("tenant"),
            parent: opt("parent"),
            total: num("total"),
            open: num("open"),
            failed: num("failed"),
            created_at: num("created"),
            finished_at: meta.get("finished").and_then(|v| v.parse().ok()),
            steps,
        }))
    }

    /// Shows the enqueued job steps whose job runs now as `running` (the first
    /// [`RUNNING_LOOKUPS`] enqueued ones; a status of a wider fan-out shows the rest as
    /// `enqueued`).
    async fn mark_running(&self, steps: &mut [StepStatus]) -> Result<()> {
        let mut plain = Vec::new();
        let mut pipe = redis::pipe();
        let mut looked = 0;
        for (i, s) in steps.iter().enumerate() {
            let (StepState::Enqueued, Some(queue), Some(job)) = (s.state, &s.queue, &s.job_id) else { continue };
            if looked == RUNNING_LOOKUPS {
                break;
            }
            looked += 1;
            if self.partitions.contains_key(queue) {
                continue;
            }
            pipe.hget(self.keys(queue).state, job);
            plain.push(i);
        }
        let states: Vec<Option<Vec<u8>>> =
            if plain.is_empty() { Vec::new() } else { pipe.query_async(&mut self.connection()).await? };
        for (i, raw) in plain.into_iter().zip(states) {
            if raw.is_some_and(|r| r.first() == Some(&b'r')) {
                steps[i].state = StepState::Running;
            }
        }
        // Steps on partitioned queues: each asked on its own (its partition is unknown).
        let mut looked = 0;
        for s in steps.iter_mut() {
            let (StepState::Enqueued, Some(queue), Some(job)) = (s.state, &s.queue, &s.job_id) else { continue };
            if !self.partitions.contains_key(queue) {
                continue;
            }
            looked += 1;
            if looked > RUNNING_LOOKUPS / 10 {
                break;
            }
            if self.job_state(queue, job).await? == Some(crate::state::JobState::Running) {
                s.state = StepState::Running;
            }
        }
        Ok(())
    }

    /// The tenant a workflow belongs to (`Some("")` for none), or `None` when unknown.
    pub async fn workflow_tenant(&self, id: &str) -> Result<Option<String>> {
        if validate_workflow_id(id).is_err() {
            return Ok(None);
        }
        let t: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(wf_key(self.prefix(), id, WorkflowKey::Meta))
            .arg("state")
            .arg("tenant")
            .query_async(&mut self.connection())
            .await?;
        Ok(t.0.map(|_| t.1.unwrap_or_default()))
    }

    /// Cancels a workflow as a whole: every step not ended is cancelled (jobs queued or
    /// running, nested workflows), and so the workflow ends `cancelled`. Returns its
    /// state after the call, or `None` when unknown.
    pub async fn cancel_workflow(&self, id: &str) -> Result<Option<WorkflowState>> {
        if self.workflow_tenant(id).await?.is_none() {
            return Ok(None);
        }
        let mut todo = vec![id.to_owned()];
        let mut first = None;
        while let Some(wf) = todo.pop() {
            let reply = self.workflow_call(&wf, "cancel", &[]).await?;
            if first.is_none() {
                first = WorkflowState::parse(&reply.state);
                // A nested workflow cancelled by itself ends its parent's step.
                if !reply.parent.is_empty() {
                    let r = self
                        .workflow_call(
                            &reply.parent,
                            "apply",
                            &[reply.pstep.clone(), "cancel".into(), reply.tenant.clone(), String::new()],
                        )
                        .await?;
                    let mut pending = Vec::new();
                    self.after_apply(&reply.parent, r, &mut pending).await?;
                    for (pid, pr) in pending {
                        self.release(&pid, pr).await?;
                    }
                }
                if first == Some(WorkflowState::Cancelled) {
                    self.workflow_finished_event(&wf, &reply.tenant, WorkflowState::Cancelled).await;
                }
                if first.is_some_and(|s| s.is_final()) && reply.parent.is_empty() {
                    self.release_steps(&reply.tenant, &wf).await?;
                }
            }
            for (name, spec) in &reply.steps {
                let stored: StoredStep =
                    serde_json::from_str(spec).map_err(|e| Error::Corrupt(format!("step {name} of {wf}: {e}")))?;
                if stored.workflow.is_some() {
                    todo.push(child_workflow_id(&wf, name));
                } else {
                    self.cancel_quietly(&stored.queue(), step_job_id(&wf, name).as_str()).await?;
                }
            }
        }
        Ok(first)
    }

    /// The handle of step `step` of workflow `workflow` (what a running step's handler
    /// uses: see [`StepHandle`]).
    pub fn step_handle(&self, workflow: &str, step: &str) -> StepHandle {
        StepHandle { client: self.clone(), workflow: workflow.to_owned(), step: step.to_owned() }
    }
}

/// What a running step can do with its workflow: read results, add steps.
#[derive(Debug, Clone)]
pub struct StepHandle {
    client: Client,
    workflow: String,
    step: String,
}

impl StepHandle {
    /// The workflow's id.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// This step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The result recorded by step `name` (typically a dependency), if any.
    pub async fn result(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(wf_key(self.client.prefix(), &self.workflow, WorkflowKey::Res))
            .arg(name)
            .query_async(&mut self.client.connection())
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| Error::Corrupt(format!("result of step {name}: {e}"))))
            .transpose()
    }

    /// Results of every step that recorded one, by name.
    pub async fn results(&self) -> Result<HashMap<String, serde_json::Value>> {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(wf_key(self.client.prefix(), &self.workflow, WorkflowKey::Res))
            .query_async(&mut self.client.connection())
            .await?;
        Ok(raw.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v))).collect())
    }

    /// Adds steps at run time (fan-out): they may depend on each other and on existing
    /// steps; every dependant of this step also waits for each of them (a fan-in after
    /// this step sees them all). Steps whose names exist already are left as they are,
    /// so an attempt that runs again adds nothing twice. Only a running step may add.
    pub async fn add_steps(&self, steps: &[StepSpec]) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let depth = self.client.workflow_depth(&self.workflow).await?;
        let mut index = HashMap::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            validate_step(s, depth)?;
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(Error::Invalid(format!("step {:?} is named twice", s.name)));
            }
        }
        // In dependency order, so each part names only steps stored before it (and a
        // cycle among the added steps, which would wait for ever, is refused).
        let ordered: Vec<StepSpec> = topo_order(steps, &index, true)?.into_iter().map(|i| steps[i].clone()).collect();
        let steps = ordered.as_slice();
        let tenant = self.client.workflow_tenant(&self.workflow).await?.unwrap_or_default();
        if !tenant.is_empty() {
            // Charged before the add (a retried add that adds nothing new is charged
            // again, until the workflow ends).
            self.client.charge_steps(&tenant, "add", root_of(&self.workflow), count_steps(steps), 0).await?;
        }
        for chunk in steps.chunks(SUBMIT_PART) {
            let mut args = vec![self.step.clone()];
            args.extend(encode_steps(chunk)?);
            let reply = self.client.workflow_call(&self.workflow, "add", &args).await?;
            self.client.release(&self.workflow, reply).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, deps: &[&str]) -> StepSpec {
        StepSpec::job(name, "probe", &serde_json::json!({})).unwrap().after(deps.iter().copied())
    }

    #[test]
    fn cycles_unknown_steps_and_bad_names_are_refused() {
        let ok = WorkflowSpec { steps: vec![step("a", &[]), step("b", &["a"])] };
        assert!(ok.validate().is_ok());
        let cycle = WorkflowSpec { steps: vec![step("a", &["b"]), step("b", &["a"])] };
        assert!(cycle.validate().unwrap_err().to_string().contains("cycle"));
        let unknown = WorkflowSpec { steps: vec![step("a", &["zz"])] };
        assert!(unknown.validate().unwrap_err().to_string().contains("unknown step"));
        let bad = WorkflowSpec { steps: vec![step("a:b", &[])] };
        assert!(bad.validate().is_err());
        assert!(WorkflowSpec::default().validate().is_err());
    }

    #[test]
    fn added_steps_are_ordered_after_their_dependencies_and_cycles_among_them_refused() {
        let steps = vec![step("c", &["b", "existing"]), step("b", &["a"]), step("a", &[])];
        let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let order: Vec<&str> =
            topo_order(&steps, &index, true).unwrap().into_iter().map(|i| steps[i].name.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert!(topo_order(&steps, &index, false).unwrap_err().to_string().contains("unknown step"));
        let cycle = vec![step("x", &["y"]), step("y", &["x"])];
        let index: HashMap<&str, usize> = cycle.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        assert!(topo_order(&cycle, &index, true).unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn step_job_ids_round_trip() {
        let id = step_job_id(&child_workflow_id("0123", "inner"), "photo-1.jpg");
        assert_eq!(parse_step_job_id(id.as_str()), Some(("0123~inner", "photo-1.jpg")));
        assert_eq!(parse_step_job_id("0190abc"), None);
    }

    #[test]
    fn dependencies_read_as_names_or_objects() {
        let s: StepSpec = serde_json::from_value(serde_json::json!({
            "name": "c", "kind": "probe", "args": {},
            "depends_on": ["a", {"step": "b", "on_failure": "skip"}]
        }))
        .unwrap();
        assert_eq!(s.depends_on[0].on_failure(), OnFailure::Fail);
        assert_eq!(s.depends_on[1].on_failure(), OnFailure::Skip);
        assert_eq!(s.depends_on[1].step(), "b");
    }
}

//! Fleet's Lua scripts, each prefixed with the shared helpers.
//!
//! Every script declares the keys it is called with, once, here: its [`ScriptSpec`]
//! lists them in `KEYS` order, and the calls build `KEYS` from that list
//! ([`crate::keys::QueueKeys::invoke`], the limiter's call). The script's own header
//! (`-- KEYS: ...`) and its `K` table name the same keys in the same order; a unit test
//! reads both from every script and compares them with the declaration, so the three
//! cannot drift apart. Every script does bounded work per call.

use crate::keys::QueueKey as Q;
use crate::limits::LimitKey as L;
use crate::workflows::WorkflowKey as W;
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};
use std::sync::OnceLock;

const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// A script's full text (prelude included) and its SHA1.
pub(crate) struct Loaded {
    code: String,
    hash: String,
}

fn with_prelude(body: &str) -> Loaded {
    let code = format!("{PRELUDE}\n{body}");
    let hash = Script::new(&code).get_hash().to_owned();
    Loaded { code, hash }
}

/// One script: its name (`scripts/<name>.lua`), its source, and its `KEYS`, in order.
pub(crate) struct ScriptSpec<K: 'static> {
    /// The file's name without `.lua` (the drift test reads the file by it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: &'static str,
    /// The script's text (without the prelude).
    pub(crate) source: &'static str,
    /// The keys it is called with, in `KEYS` order.
    pub(crate) keys: &'static [K],
    script: OnceLock<Loaded>,
}

impl<K> ScriptSpec<K> {
    const fn new(name: &'static str, source: &'static str, keys: &'static [K]) -> Self {
        ScriptSpec { name, source, keys, script: OnceLock::new() }
    }

    /// The script with the prelude, hashed once.
    fn loaded(&self) -> &Loaded {
        self.script.get_or_init(|| with_prelude(self.source))
    }

    /// A call of this script; add its keys (all of them, in declared order) then its
    /// arguments.
    pub(crate) fn call(&self) -> ScriptCall<'_> {
        ScriptCall { script: self.loaded(), keys: Vec::with_capacity(self.keys.len()), args: Vec::new() }
    }
}

/// One call of a script: `EVALSHA`, and when the server does not know the SHA (a
/// replica promoted by a failover, a restarted or flushed server), `EVAL` of the body to
/// that same server, which also caches it there. Never `SCRIPT LOAD`, which a cluster
/// client sends to every node and which fails while any node is down.
pub(crate) struct ScriptCall<'a> {
    script: &'a Loaded,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall<'_> {
    /// Adds a key (`KEYS[n]`).
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn cmd(&self, verb: &str, script: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len());
        for a in self.keys.iter().chain(&self.args) {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    /// Runs the call, then `WAIT replicas timeout` in the same pipeline, so on a cluster
    /// both go to the primary that took the write; returns the script's reply and the
    /// number of replicas that confirmed every write of the connection so far.
    pub(crate) async fn invoke_then_wait<T: FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> RedisResult<(T, i64)> {
        let pipe = |verb: &str, script: &str| {
            let mut p = redis::pipe();
            p.add_command(self.cmd(verb, script)).cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64);
            p
        };
        match pipe("EVALSHA", &self.script.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                pipe("EVAL", &self.script.code).query_async(conn).await
            }
            other => other,
        }
    }

    /// Runs the call on `conn` (routed by its first key on a cluster).
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd("EVALSHA", &self.script.hash).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.cmd("EVAL", &self.script.code).query_async(conn).await
            }
            other => other,
        }
    }
}

/// Enqueues a chunk of jobs.
pub(crate) static ENQUEUE: ScriptSpec<Q> = ScriptSpec::new(
    "enqueue",
    include_str!("scripts/enqueue.lua"),
    &[Q::Jobs, Q::State, Q::R0, Q::R1, Q::R2, Q::Sched, Q::Stats, Q::Wake, Q::Uniq, Q::Uniqexp],
);

/// Promotes due jobs and leases ready ones (suspects alone).
pub(crate) static FETCH: ScriptSpec<Q> = ScriptSpec::new(
    "fetch",
    include_str!("scripts/fetch.lua"),
    &[
        Q::Jobs,
        Q::State,
        Q::Att,
        Q::R0,
        Q::R1,
        Q::R2,
        Q::Sched,
        Q::Leases,
        Q::Stats,
        Q::Wake,
        Q::Conf,
        Q::Suspects,
        Q::Drain,
    ],
);

/// Applies completions.
pub(crate) static ACK: ScriptSpec<Q> = ScriptSpec::new(
    "ack",
    include_str!("scripts/ack.lua"),
    &[
        Q::Jobs,
        Q::State,
        Q::Att,
        Q::R0,
        Q::R1,
        Q::R2,
        Q::Sched,
        Q::Leases,
        Q::Stats,
        Q::Dead,
        Q::Done,
        Q::Hist,
        Q::Wake,
        Q::Batches,
        Q::Batchdone,
    ],
);

/// Renews leases, records the worker, reaps expired leases into the suspects.
pub(crate) static HEARTBEAT: ScriptSpec<Q> = ScriptSpec::new(
    "heartbeat",
    include_str!("scripts/heartbeat.lua"),
    &[
        Q::Jobs,
        Q::State,
        Q::Att,
        Q::R0,
        Q::R1,
        Q::R2,
        Q::Leases,
        Q::Stats,
        Q::Dead,
        Q::Hist,
        Q::Workers,
        Q::Wake,
        Q::Batches,
        Q::Batchdone,
        Q::Workerjobs,
        Q::Crashes,
        Q::Suspects,
        Q::Conf,
    ],
);

/// Cancels a job that has not finished.
pub(crate) static CANCEL: ScriptSpec<Q> = ScriptSpec::new(
    "cancel",
    include_str!("scripts/cancel.lua"),
    &[Q::State, Q::Sched, Q::Leases, Q::Stats, Q::Done, Q::Jobs, Q::Batches, Q::Batchdone],
);

/// Protects an outside service: rate, concurrency, breaker, slow-down.
pub(crate) static LIMIT: ScriptSpec<L> =
    ScriptSpec::new("limit", include_str!("scripts/limit.lua"), &[L::Tat, L::Cap, L::Brk, L::Resv, L::Log, L::Conf]);

/// Replays or purges dead letters.
pub(crate) static DEAD_LETTERS: ScriptSpec<Q> = ScriptSpec::new(
    "deadletters",
    include_str!("scripts/deadletters.lua"),
    &[Q::Jobs, Q::State, Q::Att, Q::R0, Q::R1, Q::R2, Q::Stats, Q::Dead, Q::Hist, Q::Wake],
);

/// Time-based expiry of one queue.
pub(crate) static JANITOR: ScriptSpec<Q> = ScriptSpec::new(
    "janitor",
    include_str!("scripts/janitor.lua"),
    &[Q::Jobs, Q::State, Q::Att, Q::Stats, Q::Dead, Q::Done, Q::Hist, Q::Uniq, Q::Uniqexp, Q::Batches, Q::Batchfin],
);

/// Every change of one workflow's state, in the workflow's own slot.
pub(crate) static WORKFLOW: ScriptSpec<crate::workflows::WorkflowKey> = ScriptSpec::new(
    "workflow",
    include_str!("scripts/workflow.lua"),
    &[W::Meta, W::Spec, W::St, W::Rem, W::Out, W::Verdict, W::Res, W::Err, W::Rel, W::Relby, W::Ready],
);

/// A tenant's quota of workflow steps not yet ended.
pub(crate) static WORKFLOW_QUOTA: ScriptSpec<crate::workflows::QuotaKey> =
    ScriptSpec::new("wfquota", include_str!("scripts/wfquota.lua"), &[crate::workflows::QuotaKey::Steps]);

/// Records a running job's progress or result, under its lease.
pub(crate) static RECORD: ScriptSpec<Q> =
    ScriptSpec::new("record", include_str!("scripts/record.lua"), &[Q::State, Q::Progress, Q::Results]);

/// Drops the archive entries the scheduler copied into PostgreSQL, if still at the head.
pub(crate) static ARCHIVED: ScriptSpec<Q> =
    ScriptSpec::new("archived", include_str!("scripts/archived.lua"), &[Q::Archive]);

/// Makes a scheduled or retrying job due now.
pub(crate) static NUDGE: ScriptSpec<Q> =
    ScriptSpec::new("nudge", include_str!("scripts/nudge.lua"), &[Q::State, Q::Sched, Q::Wake]);

/// Deletes a finished job's record.
pub(crate) static FORGET: ScriptSpec<Q> =
    ScriptSpec::new("forget", include_str!("scripts/forget.lua"), &[Q::Jobs, Q::State, Q::Att, Q::Hist, Q::Done]);

#[cfg(test)]
mod tests {
    use super::*;

    /// A key a script is called with: a queue's ([`Q`]) or a limit key's ([`L`]).
    trait ScriptKey: Copy + std::fmt::Debug + 'static {
        /// The key's name in the script's `KEYS` header and `K` table.
        fn name(self) -> &'static str;
    }

    impl ScriptKey for Q {
        fn name(self) -> &'static str {
            Q::name(self)
        }
    }

    impl ScriptKey for L {
        fn name(self) -> &'static str {
            L::name(self)
        }
    }

    impl ScriptKey for W {
        fn name(self) -> &'static str {
            W::name(self)
        }
    }

    impl ScriptKey for crate::workflows::QuotaKey {
        fn name(self) -> &'static str {
            crate::workflows::QuotaKey::name(self)
        }
    }

    /// Every script: its name, source and declared key names.
    fn all() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
        fn row<K: ScriptKey>(s: &'static ScriptSpec<K>) -> (&'static str, &'static str, Vec<&'static str>) {
            (s.name, s.source, s.keys.iter().map(|k| k.name()).collect())
        }
        vec![
            row(&ENQUEUE),
            row(&FETCH),
            row(&ACK),
            row(&HEARTBEAT),
            row(&CANCEL),
            row(&LIMIT),
            row(&DEAD_LETTERS),
            row(&JANITOR),
            row(&RECORD),
            row(&ARCHIVED),
            row(&NUDGE),
            row(&FORGET),
            row(&WORKFLOW),
            row(&WORKFLOW_QUOTA),
        ]
    }

    /// The key names of a script's header contract: the text after `-- KEYS:` and on
    /// the comment lines that continue it (indented past `--`), up to the next
    /// `-- ARGV:`-style line; names are separated by spaces or commas, and a
    /// parenthesised note after a name (`tat (string), ...`) is not a name.
    fn header_keys(source: &str) -> Result<Vec<String>, String> {
        let mut lines = source.lines();
        let first = lines.by_ref().find_map(|l| l.strip_prefix("-- KEYS:")).ok_or("no `-- KEYS:` line")?;
        let mut text = first.to_owned();
        for line in lines {
            match line.strip_prefix("--") {
                Some(rest) if rest.starts_with("  ") => {
                    text.push(' ');
                    text.push_str(rest);
                }
                _ => break,
            }
        }
        let mut plain = String::new();
        let mut depth = 0u32;
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1).ok_or("unbalanced `)` in the KEYS header")?,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        if depth != 0 {
            return Err("unbalanced `(` in the KEYS header".into());
        }
        Ok(plain.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }

    /// The `KEYS[i]` index in `KEYS[i]`.
    fn keys_index(v: &str) -> Result<usize, String> {
        v.trim()
            .strip_prefix("KEYS[")
            .and_then(|v| v.strip_suffix(']'))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("expected KEYS[<n>], found {:?}", v.trim()))
    }

    /// The names the script's `local K = { name = KEYS[i], ready = { KEYS[a], KEYS[b],
    /// KEYS[c] }, ... }` table gives `KEYS[1]`, `KEYS[2]`, ... (the ready lists as `r0`,
    /// `r1`, `r2`), in `KEYS` order; every index from 1 up must be bound exactly once.
    fn k_table(source: &str) -> Result<Vec<String>, String> {
        let open = source.find("local K = {").ok_or("no `local K = {` table")? + "local K = ".len();
        let mut depth = 0;
        let mut end = None;
        for (i, c) in source[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &source[open + 1..end.ok_or("the K table is not closed")?];
        // Entries, split at the commas outside inner tables.
        let (mut entries, mut cur, mut inner) = (Vec::new(), String::new(), 0);
        for c in body.chars() {
            match c {
                '{' => inner += 1,
                '}' => inner -= 1,
                ',' if inner == 0 => {
                    entries.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        entries.push(cur);
        let mut bound: Vec<(usize, String)> = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once('=').ok_or_else(|| format!("K table entry {entry:?}"))?;
            let (name, value) = (name.trim(), value.trim());
            match value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                Some(list) if name == "ready" => {
                    for (p, v) in list.split(',').enumerate() {
                        bound.push((keys_index(v)?, format!("r{p}")));
                    }
                }
                Some(_) => return Err(format!("K.{name}: only `ready` may be a list of keys")),
                None => bound.push((keys_index(value)?, name.to_owned())),
            }
        }
        bound.sort();
        for (want, (i, name)) in bound.iter().enumerate() {
            if *i != want + 1 {
                return Err(format!(
                    "K.{name} is KEYS[{i}], expected KEYS[{}] (each index bound once, from 1)",
                    want + 1
                ));
            }
        }
        Ok(bound.into_iter().map(|(_, name)| name).collect())
    }

    #[test]
    fn every_script_s_header_and_k_table_name_its_declared_keys_in_order() {
        for (name, source, declared) in all() {
            let header = header_keys(source).unwrap_or_else(|e| panic!("{name}.lua: {e}"));
            assert_eq!(header, declared, "{name}.lua: the `-- KEYS:` header is not the Rust declaration");
            let table = k_table(source).unwrap_or_else(|e| panic!("{name}.lua: {e}"));
            assert_eq!(table, declared, "{name}.lua: the `K` table does not bind KEYS as declared");
        }
    }

    #[test]
    fn every_script_file_is_declared_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scripts");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|f| f.strip_suffix(".lua").map(str::to_owned))
            .filter(|f| f != "prelude")
            .collect();
        files.sort();
        let mut declared: Vec<String> = all().into_iter().map(|(name, _, _)| name.to_owned()).collect();
        declared.sort();
        assert_eq!(files, declared);
        for (name, source, _) in all() {
            let file = std::fs::read_to_string(dir.join(format!("{name}.lua"))).unwrap();
            assert_eq!(source, file, "{name}: the declaration includes another file");
        }
    }

    #[test]
    fn the_header_reader_reads_continuations_and_skips_notes() {
        let src = "-- x\n-- KEYS: a b,\n--       c (note, with (nested) parens) d\n-- ARGV: e f\nlocal K = {}\n";
        assert_eq!(header_keys(src).unwrap(), ["a", "b", "c", "d"]);
        assert!(header_keys("-- ARGV: a").is_err());
        assert!(header_keys("-- KEYS: a (b").is_err());
        let table = "local K = { jobs = KEYS[1], ready = { KEYS[2], KEYS[3], KEYS[4] },\n  wake = KEYS[5] }";
        assert_eq!(k_table(table).unwrap(), ["jobs", "r0", "r1", "r2", "wake"]);
        assert!(k_table("local K = { jobs = KEYS[1], wake = KEYS[3] }").is_err(), "a gap");
        assert!(k_table("local K = { jobs = KEYS[1], wake = KEYS[1] }").is_err(), "bound twice");
        assert!(k_table("local K = { jobs = KEYS[1], x = { KEYS[2] } }").is_err());
    }

    #[test]
    fn a_drifted_declaration_is_caught() {
        // The same reading that passes for the real scripts fails for a swapped order.
        let (_, source, mut declared) = all().into_iter().find(|(n, _, _)| *n == "cancel").unwrap();
        declared.swap(0, 1);
        assert_ne!(header_keys(source).unwrap(), declared);
        assert_ne!(k_table(source).unwrap(), declared);
    }
}

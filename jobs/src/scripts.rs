//! Fleet's Lua scripts, each prefixed with the shared helpers.
//!
//! Every script declares all the keys it touches (the fixed keys of one queue)
//! and does bounded work per call.

use redis::Script;
use std::sync::LazyLock;

const PRELUDE: &str = include_str!("scripts/prelude.lua");

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(crate) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/enqueue.lua")));
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/fetch.lua")));
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/ack.lua")));
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/heartbeat.lua")));
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/cancel.lua")));
pub(crate) static LIMIT: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/limit.lua")));
pub(crate) static DEAD_LETTERS: LazyLock<Script> =
    LazyLock::new(|| with_prelude(include_str!("scripts/deadletters.lua")));
pub(crate) static JANITOR: LazyLock<Script> = LazyLock::new(|| with_prelude(include_str!("scripts/janitor.lua")));

//! Per-queue dead-letter caps, settable at run time.
//!
//! Every worker bounds a queue's dead letters by its own settings (`dead_max_count`,
//! `dead_max_age_secs`, from the config file or `FLEET_DEAD_MAX_COUNT` /
//! `FLEET_DEAD_MAX_AGE_SECS`). An operator can override them for one queue, fleet-wide,
//! without a restart: the override lives in the queue's `conf` hash (`dead_max_count`,
//! `dead_max_age_ms`) and the scripts that trim dead letters read it on every call, so
//! it takes effect at the next janitor pass (within one heartbeat interval).

use crate::client::Client;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A queue's own dead-letter caps; `None` = the workers' setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadCaps {
    /// Most dead letters kept (oldest evicted first).
    #[serde(default)]
    pub max_count: Option<u64>,
    /// Oldest dead letter kept, in seconds; 0 keeps them regardless of age.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

impl Client {
    /// The dead-letter caps set on `queue` itself (fields left `None` follow the workers).
    pub async fn dead_caps(&self, queue: &str) -> Result<DeadCaps> {
        crate::keys::validate_queue_name(queue).map_err(Error::Invalid)?;
        let k = self.keys(queue);
        let (count, age): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&k.conf)
            .arg("dead_max_count")
            .arg("dead_max_age_ms")
            .query_async(&mut self.connection())
            .await?;
        Ok(DeadCaps { max_count: count, max_age_secs: age.map(|ms| ms / 1000) })
    }

    /// Sets (or, for a `None` field, clears) the dead-letter caps of `queue`, fleet-wide.
    /// Lowering them evicts the excess at the next janitor passes (bounded per call, and
    /// counted in `stats.evicted`).
    pub async fn set_dead_caps(&self, queue: &str, caps: DeadCaps) -> Result<()> {
        crate::keys::validate_queue_name(queue).map_err(Error::Invalid)?;
        let k = self.keys(queue);
        let mut pipe = redis::pipe();
        match caps.max_count {
            Some(n) => pipe.hset(&k.conf, "dead_max_count", n).ignore(),
            None => pipe.hdel(&k.conf, "dead_max_count").ignore(),
        };
        match caps.max_age_secs {
            Some(s) => pipe.hset(&k.conf, "dead_max_age_ms", s.saturating_mul(1000)).ignore(),
            None => pipe.hdel(&k.conf, "dead_max_age_ms").ignore(),
        };
        let _: () = pipe.query_async(&mut self.connection()).await?;
        Ok(())
    }
}

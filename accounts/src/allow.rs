//! The address ranges a tenant's servers may be at besides public ones.

/// Settings of a kind that calls servers its sources name (`[calendar]` and `[comms]` in the
/// worker's config, `FLEET_CALENDAR_ALLOW` and `FLEET_COMMS_ALLOW`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// Address ranges the servers may be at besides public ones, e.g. `["127.0.0.0/8"]` for
    /// a CalDAV or IMAP server on the worker's host. Everything else private or reserved is
    /// refused (the SSRF guard): a source's URL or host is a tenant's input.
    pub allow: Vec<String>,
}

impl SourceSettings {
    /// The allow-list, parsed.
    pub fn ranges(&self) -> Result<Vec<fleet_net::Cidr>, String> {
        self.allow.iter().map(|c| c.parse()).collect()
    }
}

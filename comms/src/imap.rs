//! Exact incremental IMAP sync (RFC 3501, CONDSTORE RFC 7162) with per-folder cursors.
//!
//! Per (source, folder) a [`FolderCursor`] holds UIDVALIDITY, UIDNEXT, the last UID
//! fetched and HIGHESTMODSEQ. A run, per selectable folder:
//!
//! 1. `SELECT` (with `CONDSTORE` when offered). Same UIDVALIDITY, same UIDNEXT and same
//!    HIGHESTMODSEQ as the cursor: nothing changed, nothing more is sent (an idle
//!    incremental run costs one `SELECT` per folder).
//! 2. `UID SEARCH UID 1:<last> UNDELETED`: the UIDs still there and not `\Deleted`.
//!    Known UIDs missing from it left the server (expunged or flagged): their entries
//!    leave the timeline unless another copy remains elsewhere.
//! 3. `UID FETCH <last+1>:* (UID FLAGS INTERNALDATE RFC822.SIZE)`, then bodies in chunks
//!    (`BODY.PEEK[]`, so nothing is marked seen). A message over the size cap is not
//!    downloaded: its header is quarantined instead. Each chunk is parsed on the blocking
//!    pool (panic-isolated) and committed to the store **with the cursor that covers
//!    it**, so a sync killed midway resumes after the last committed chunk.
//! 4. The last commit stores the UIDNEXT and HIGHESTMODSEQ seen at `SELECT` and drops
//!    locations left from an older UIDVALIDITY.
//!
//! A changed UIDVALIDITY re-reads the folder; content identity (see
//! [`crate::timeline`]) maps the new UIDs onto the existing entries, so nothing is
//! doubled. No date windows anywhere: downtime of any length loses nothing.
//!
//! Connections ([`connect`]): implicit TLS (`tls`, port 993) or `STARTTLS` (`starttls`,
//! refused rather than downgraded when the server does not offer it), with rustls,
//! Mozilla's roots and an optional extra CA file; plain IMAP only to loopback servers.
//! Authentication by `LOGIN` (password) or SASL `XOAUTH2` (an OAuth2 access token).

use crate::contacts::ContactBook;
use crate::entry::{NewEntry, entry_from_mail};
use crate::parse::{ParseFailure, ParseLimits, parse_mail};
use crate::timeline::{Ingested, Location, Quarantined, Timeline, quarantine_record};
use async_imap::types::{Fetch, NameAttribute};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// How to reach one IMAP mailbox.
#[derive(Clone, Serialize, Deserialize)]
pub struct ImapAccount {
    /// Server host name or address.
    pub host: String,
    /// Server port (993 is the usual implicit-TLS port, 143 plain or STARTTLS).
    pub port: u16,
    /// `true` for implicit TLS (IMAPS).
    #[serde(default)]
    pub tls: bool,
    /// `true` to upgrade a plain connection with `STARTTLS` before logging in
    /// (ignored with `tls`).
    #[serde(default)]
    pub starttls: bool,
    /// A PEM file of extra CA certificates trusted besides Mozilla's roots (a private
    /// CA, or a test server's self-signed certificate).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How to authenticate: `login` (password) or `xoauth2` (OAuth2 bearer token).
    #[serde(default)]
    pub auth: AuthMethod,
    /// Login name.
    pub user: String,
    /// Password, or the OAuth2 access token with [`AuthMethod::Xoauth2`] (never logged
    /// or shown in errors).
    pub password: String,
    /// Folders to read; `None` reads every selectable folder.
    #[serde(default)]
    pub folders: Option<Vec<String>>,
}

impl ImapAccount {
    /// A plain-IMAP account with password login (loopback servers only).
    pub fn plain(host: impl Into<String>, port: u16, user: impl Into<String>, password: impl Into<String>) -> Self {
        ImapAccount {
            host: host.into(),
            port,
            tls: false,
            starttls: false,
            ca_file: None,
            auth: AuthMethod::Login,
            user: user.into(),
            password: password.into(),
            folders: None,
        }
    }

    /// True when the connection is encrypted (implicit TLS or STARTTLS).
    pub fn encrypted(&self) -> bool {
        self.tls || self.starttls
    }
}

pub use crate::account::AuthMethod;

impl std::fmt::Debug for ImapAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapAccount")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("auth", &self.auth)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("folders", &self.folders)
            .finish()
    }
}

/// Where a folder's sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCursor {
    /// UIDVALIDITY the UIDs below belong to.
    pub uidvalidity: u32,
    /// UIDNEXT at the last complete pass (0 before the first).
    pub uidnext: u32,
    /// Every UID up to this one has been fetched.
    pub last_uid: u32,
    /// HIGHESTMODSEQ at the last complete pass, when the server has CONDSTORE.
    pub highestmodseq: Option<u64>,
}

/// One message fetched from a folder, parsed or quarantined.
#[derive(Debug, Clone)]
pub struct FetchedItem {
    /// Where it is.
    pub location: Location,
    /// The entry, or why it was quarantined.
    pub outcome: Result<NewEntry, Quarantined>,
    /// The raw bytes (the header only for a message over the size cap).
    pub raw: Vec<u8>,
}

/// What one commit writes, atomically.
#[derive(Debug, Clone)]
pub struct FolderBatch {
    /// Source id.
    pub source: String,
    /// Folder.
    pub folder: String,
    /// The cursor that covers `items` and `removed`.
    pub cursor: FolderCursor,
    /// New messages.
    pub items: Vec<FetchedItem>,
    /// Locations that left the server.
    pub removed: Vec<Location>,
    /// Drop locations of this folder under any other UIDVALIDITY (end of a full pass).
    pub drop_stale_validity: bool,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// New entries.
    pub new: usize,
    /// Copies of existing entries.
    pub duplicates: usize,
    /// Entries that left the timeline.
    pub removed: usize,
    /// Messages quarantined.
    pub quarantined: usize,
}

/// A store failure (the store's own message).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Where a sync keeps cursors, entries and quarantined messages. A commit must be
/// atomic: the cursor is written with the items it covers, or not at all.
pub trait SyncStore: Send {
    /// The cursor of (source, folder).
    fn cursor(
        &mut self,
        source: &str,
        folder: &str,
    ) -> impl Future<Output = Result<Option<FolderCursor>, StoreError>> + Send;
    /// UIDs of (source, folder) under `uidvalidity` that are stored or quarantined.
    fn known_uids(
        &mut self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> impl Future<Output = Result<BTreeSet<u32>, StoreError>> + Send;
    /// Writes `batch` atomically.
    fn commit(&mut self, batch: FolderBatch) -> impl Future<Output = Result<CommitCounts, StoreError>> + Send;
}

/// A [`SyncStore`] in memory, over a [`Timeline`] (tests, benchmarks, tools).
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// The timeline.
    pub timeline: Timeline,
    /// Cursors by (source, folder).
    pub cursors: HashMap<(String, String), FolderCursor>,
}

impl SyncStore for MemoryStore {
    async fn cursor(&mut self, source: &str, folder: &str) -> Result<Option<FolderCursor>, StoreError> {
        Ok(self.cursors.get(&(source.to_owned(), folder.to_owned())).copied())
    }

    async fn known_uids(&mut self, source: &str, folder: &str, uidvalidity: u32) -> Result<BTreeSet<u32>, StoreError> {
        let mut set: BTreeSet<u32> = self.timeline.uids(source, folder, uidvalidity).into_iter().collect();
        set.extend(
            self.timeline
                .quarantine()
                .iter()
                .filter(|q| {
                    q.location.source == source && q.location.folder == folder && q.location.uidvalidity == uidvalidity
                })
                .map(|q| q.location.uid),
        );
        Ok(set)
    }

    async fn commit(&mut self, batch: FolderBatch) -> Result<CommitCounts, StoreError> {
        Ok(apply_batch(&mut self.timeline, &mut self.cursors, batch))
    }
}

/// Applies `batch` to an in-memory timeline and cursor map.
pub fn apply_batch(
    timeline: &mut Timeline,
    cursors: &mut HashMap<(String, String), FolderCursor>,
    batch: FolderBatch,
) -> CommitCounts {
    let mut counts = CommitCounts::default();
    for loc in &batch.removed {
        if timeline.remove_location(loc).is_some() {
            counts.removed += 1;
        }
    }
    for item in batch.items {
        match item.outcome {
            Ok(entry) => {
                timeline.keep_raw(&entry.content_hash.clone(), &item.raw);
                match timeline.ingest(entry, item.location) {
                    Ingested::New(_) => counts.new += 1,
                    Ingested::Duplicate(_) => counts.duplicates += 1,
                }
            }
            Err(q) => {
                timeline.add_quarantined(q, &item.raw);
                counts.quarantined += 1;
            }
        }
    }
    if batch.drop_stale_validity {
        counts.removed += timeline.drop_stale_validity(&batch.source, &batch.folder, batch.cursor.uidvalidity);
    }
    cursors.insert((batch.source, batch.folder), batch.cursor);
    counts
}

/// Knobs of a sync run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Parse limits per message (the size cap also decides what is downloaded).
    pub limits: ParseLimits,
    /// Messages per body fetch and per commit.
    pub chunk: usize,
    /// Bytes per body fetch and per commit, at most (one message may exceed it).
    pub chunk_bytes: usize,
    /// Time allowed for connecting and for each command.
    pub timeout: Duration,
    /// The SSRF guard the server's addresses must pass (`None`: any address; the worker's
    /// handler always sets one, since a source's host is a tenant's input).
    pub guard: Option<Arc<fleet_net::Guard>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            limits: ParseLimits::default(),
            chunk: 500,
            chunk_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            guard: None,
        }
    }
}

/// Why a sync (or one folder of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server could not be reached.
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The server refused the login (wrong user or password).
    #[error("login refused for user {user}: {reason}")]
    Auth {
        /// Login name.
        user: String,
        /// The server's words.
        reason: String,
    },
    /// A setting this build cannot honour.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The server broke the protocol or answered NO/BAD.
    #[error("imap: {0}")]
    Protocol(String),
    /// A command took longer than the timeout.
    #[error("imap command timed out: {0}")]
    Timeout(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    /// True when trying again later can help (network, timeouts, the store).
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Connect { .. } | SyncError::Timeout(_) | SyncError::Protocol(_) | SyncError::Store(_))
    }
}

fn proto(e: async_imap::error::Error) -> SyncError {
    SyncError::Protocol(e.to_string())
}

/// What happened in one folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolderReport {
    /// Folder name.
    pub folder: String,
    /// The folder's UIDVALIDITY changed since the last run.
    pub uidvalidity_changed: bool,
    /// Nothing changed since the last run (CONDSTORE), nothing fetched.
    pub unchanged: bool,
    /// Messages whose bodies were downloaded.
    pub fetched: usize,
    /// Body bytes downloaded.
    pub fetched_bytes: usize,
    /// New entries.
    pub new: usize,
    /// Copies of existing entries.
    pub duplicates: usize,
    /// Entries that left the timeline.
    pub removed: usize,
    /// Messages quarantined.
    pub quarantined: usize,
    /// The folder's error, if it failed (the other folders still synced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Per folder.
    pub folders: Vec<FolderReport>,
    /// The server offered CONDSTORE.
    pub condstore: bool,
}

impl SyncReport {
    /// Sum over folders of `f`.
    pub fn total(&self, f: impl Fn(&FolderReport) -> usize) -> usize {
        self.folders.iter().map(f).sum()
    }
}

/// A connection to the server: plain TCP (loopback only) or TLS.
#[derive(Debug)]
pub enum ImapStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (implicit TLS or after STARTTLS).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for ImapStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ImapStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl ImapStream {
    /// True over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ImapStream::Tls(_))
    }
}

/// A logged-in IMAP session.
pub type Session = async_imap::Session<ImapStream>;

/// The TLS settings of `account`: Fleet's one TLS configuration ([`fleet_net::tls`]:
/// ring, Mozilla's roots) plus the CA certificates of `account.ca_file`, if any. A bad
/// CA file is [`SyncError::Unsupported`]: retrying will not fix it.
pub fn tls_config(account: &ImapAccount) -> Result<Arc<ClientConfig>, SyncError> {
    let unsupported = |e: fleet_net::tls::TlsError| SyncError::Unsupported(e.to_string());
    let extra = match &account.ca_file {
        Some(path) => fleet_net::tls::read_ca_file(path).map_err(unsupported)?,
        None => Vec::new(),
    };
    Ok(Arc::new(fleet_net::tls::client_config(&extra).map_err(unsupported)?))
}

/// The SASL `XOAUTH2` initial response (before base64): `user=…^Aauth=Bearer …^A^A`.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// `AUTHENTICATE XOAUTH2`: the token first; an empty answer to the server's error
/// challenge (a JSON status) so it finishes with its `NO`.
struct XOauth2 {
    response: Option<String>,
}

impl async_imap::Authenticator for XOauth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        self.response.take().unwrap_or_default()
    }
}

/// Connects, secures the connection as configured and authenticates.
pub async fn connect(account: &ImapAccount, timeout: Duration) -> Result<Session, SyncError> {
    connect_with(account, &SyncOptions { timeout, ..SyncOptions::default() }).await
}

/// [`connect`] with `options`' timeout and SSRF guard.
pub async fn connect_with(account: &ImapAccount, options: &SyncOptions) -> Result<Session, SyncError> {
    let timeout = options.timeout;
    let connect_err = |reason: String| SyncError::Connect { host: account.host.clone(), port: account.port, reason };
    let tls = if account.encrypted() { Some(tls_config(account)?) } else { None };
    let addrs: Vec<std::net::SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((account.host.as_str(), account.port)))
            .await
            .map_err(|_| connect_err("resolving timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?
            .collect();
    // Checked on the addresses connected to: one refused address refuses the host.
    if let Some(guard) = &options.guard
        && let Some(refused) = addrs.iter().find(|a| !guard.permits(a.ip()))
    {
        return Err(SyncError::Unsupported(format!(
            "refused by the SSRF guard: {} resolves to a private or reserved address ({})",
            account.host,
            refused.ip()
        )));
    }
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let peer = tcp.peer_addr().map_err(|e| connect_err(e.to_string()))?;
    if tls.is_none() && !peer.ip().is_loopback() {
        return Err(SyncError::Unsupported(format!(
            "plain IMAP sends the password in clear; only loopback servers may use it ({peer} is not): set tls or starttls"
        )));
    }
    tcp.set_nodelay(true).ok();
    let handshake = |tcp: TcpStream, config: Arc<ClientConfig>| async move {
        let name = ServerName::try_from(account.host.clone())
            .map_err(|e| SyncError::Unsupported(format!("TLS server name {}: {e}", account.host)))?;
        let tls = tokio::time::timeout(timeout, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| SyncError::Timeout("TLS handshake"))?
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        Ok::<_, SyncError>(ImapStream::Tls(Box::new(tls)))
    };
    let stream = match &tls {
        Some(config) if account.tls => handshake(tcp, Arc::clone(config)).await?,
        _ => ImapStream::Plain(tcp),
    };
    let mut client = async_imap::Client::new(stream);
    let greeting = tokio::time::timeout(timeout, client.read_response())
        .await
        .map_err(|_| SyncError::Timeout("greeting"))?
        .map_err(|e| connect_err(e.to_string()))?;
    if greeting.is_none() {
        return Err(connect_err("closed before greeting".into()));
    }
    if let Some(config) = tls.filter(|_| !account.tls) {
        // STARTTLS: the server must agree, or nothing (least of all the password) is sent.
        match tokio::time::timeout(timeout, client.run_command_and_check_ok("STARTTLS", None)).await {
            Err(_) => return Err(SyncError::Timeout("STARTTLS")),
            Ok(Err(e)) => return Err(connect_err(format!("STARTTLS refused: {}", short_error(&e)))),
            Ok(Ok(())) => {}
        }
        let ImapStream::Plain(tcp) = client.into_inner() else {
            return Err(connect_err("STARTTLS on a TLS connection".into()));
        };
        client = async_imap::Client::new(handshake(tcp, config).await?);
    }
    let auth = async {
        match account.auth {
            AuthMethod::Login => client.login(&account.user, &account.password).await,
            AuthMethod::Xoauth2 => {
                let response = Some(xoauth2_response(&account.user, &account.password));
                client.authenticate("XOAUTH2", XOauth2 { response }).await
            }
        }
    };
    match tokio::time::timeout(timeout, auth).await {
        Err(_) => Err(SyncError::Timeout("login")),
        Ok(Ok(session)) => Ok(session),
        // Only the server's words: never the command, which holds the password.
        Ok(Err((async_imap::error::Error::No(reason) | async_imap::error::Error::Bad(reason), _))) => {
            Err(SyncError::Auth { user: account.user.clone(), reason })
        }
        Ok(Err((e, _))) => Err(SyncError::Auth { user: account.user.clone(), reason: short_error(&e) }),
    }
}

fn short_error(e: &async_imap::error::Error) -> String {
    match e {
        async_imap::error::Error::Io(io) => format!("io: {io}"),
        async_imap::error::Error::ConnectionLost => "connection lost".into(),
        async_imap::error::Error::Validate(_) => "the user name or password holds characters IMAP cannot send".into(),
        _ => "unexpected response".into(),
    }
}

/// Syncs every configured folder of `account` (source id `source`) into `store`.
/// A folder that fails is reported and the others go on; a connection or login
/// failure fails the run.
pub async fn sync_account<S: SyncStore>(
    account: &ImapAccount,
    source: &str,
    book: &Arc<ContactBook>,
    store: &mut S,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let mut session = connect_with(account, options).await?;
    let caps = timed(options, "CAPABILITY", session.capabilities()).await?.map_err(proto)?;
    let condstore = caps.has_str("CONDSTORE") || caps.has_str("QRESYNC");
    let folders = list_folders(&mut session, options).await?;
    let wanted: Vec<String> = match &account.folders {
        Some(only) => folders.into_iter().filter(|f| only.contains(f)).collect(),
        None => folders,
    };
    let mut report = SyncReport { folders: Vec::new(), condstore };
    for folder in wanted {
        let mut fr = FolderReport { folder: folder.clone(), ..FolderReport::default() };
        match sync_folder(&mut session, &folder, source, book, store, options, condstore, &mut fr).await {
            Ok(()) => {}
            Err(e @ (SyncError::Store(_) | SyncError::Timeout(_))) => {
                // The connection or the store is in an unknown state: stop here.
                fr.error = Some(e.to_string());
                report.folders.push(fr);
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(source, folder = %folder, error = %e, "folder sync failed; other folders go on");
                fr.error = Some(e.to_string());
            }
        }
        report.folders.push(fr);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
    Ok(report)
}

async fn timed<F: Future>(options: &SyncOptions, what: &'static str, f: F) -> Result<F::Output, SyncError> {
    tokio::time::timeout(options.timeout, f).await.map_err(|_| SyncError::Timeout(what))
}

/// Selectable folders (`\Noselect` and `\NonExistent` skipped), INBOX first.
async fn list_folders(session: &mut Session, options: &SyncOptions) -> Result<Vec<String>, SyncError> {
    let names = timed(options, "LIST", async {
        let stream = session.list(Some(""), Some("*")).await?;
        stream.try_collect::<Vec<_>>().await
    })
    .await?
    .map_err(proto)?;
    let mut folders: Vec<String> = names
        .iter()
        .filter(|n| {
            !n.attributes().iter().any(|a| {
                matches!(a, NameAttribute::NoSelect)
                    || matches!(a, NameAttribute::Extension(x) if x.eq_ignore_ascii_case("\\NonExistent"))
            })
        })
        .map(|n| n.name().to_owned())
        .collect();
    folders.sort_by_key(|f| (!f.eq_ignore_ascii_case("INBOX"), f.clone()));
    Ok(folders)
}

#[allow(clippy::too_many_arguments)]
async fn sync_folder<S: SyncStore>(
    session: &mut Session,
    folder: &str,
    source: &str,
    book: &Arc<ContactBook>,
    store: &mut S,
    options: &SyncOptions,
    condstore: bool,
    fr: &mut FolderReport,
) -> Result<(), SyncError> {
    let mailbox = if condstore {
        timed(options, "SELECT", session.select_condstore(folder)).await?
    } else {
        timed(options, "SELECT", session.select(folder)).await?
    }
    .map_err(proto)?;
    let uidvalidity = mailbox.uid_validity.ok_or_else(|| SyncError::Protocol(format!("{folder}: no UIDVALIDITY")))?;
    let server_uidnext = mailbox.uid_next;
    let server_modseq = if condstore { mailbox.highest_modseq } else { None };

    let stored = store.cursor(source, folder).await?;
    let mut cursor = match stored {
        Some(c) if c.uidvalidity == uidvalidity => c,
        Some(_) => {
            fr.uidvalidity_changed = true;
            tracing::info!(source, folder, "UIDVALIDITY changed; re-reading the folder by content identity");
            FolderCursor { uidvalidity, uidnext: 0, last_uid: 0, highestmodseq: None }
        }
        None => FolderCursor { uidvalidity, uidnext: 0, last_uid: 0, highestmodseq: None },
    };
    // Nothing changed at all since the last complete pass.
    if server_modseq.is_some()
        && cursor.highestmodseq == server_modseq
        && server_uidnext.is_some_and(|n| n == cursor.uidnext)
    {
        fr.unchanged = true;
        return Ok(());
    }
    let loc = |uid: u32| Location { source: source.to_owned(), folder: folder.to_owned(), uidvalidity, uid };

    // Which known messages left, and which present ones were never fetched.
    let mut removed = Vec::new();
    let mut missing: BTreeSet<u32> = BTreeSet::new();
    if cursor.last_uid > 0 && mailbox.exists > 0 {
        let live = timed(options, "UID SEARCH", session.uid_search(format!("UID 1:{} UNDELETED", cursor.last_uid)))
            .await?
            .map_err(proto)?;
        let known = store.known_uids(source, folder, uidvalidity).await?;
        removed.extend(known.iter().filter(|u| !live.contains(u)).map(|u| loc(*u)));
        missing.extend(live.iter().filter(|u| !known.contains(u) && **u <= cursor.last_uid));
    } else if cursor.last_uid > 0 {
        let known = store.known_uids(source, folder, uidvalidity).await?;
        removed.extend(known.iter().map(|u| loc(*u)));
    }

    // New messages: sizes and flags first, bodies in chunks.
    let mut metas: Vec<Meta> = Vec::new();
    let may_have_new = server_uidnext.is_none_or(|n| n > cursor.last_uid + 1);
    if mailbox.exists > 0 && (may_have_new || !missing.is_empty()) {
        let mut sets = Vec::new();
        if may_have_new {
            sets.push(format!("{}:*", cursor.last_uid + 1));
        }
        if !missing.is_empty() {
            sets.push(uid_set(missing.iter().copied()));
        }
        for set in sets {
            let fetched = timed(options, "UID FETCH (meta)", async {
                let stream = session.uid_fetch(&set, "(UID FLAGS INTERNALDATE RFC822.SIZE)").await?;
                stream.try_collect::<Vec<Fetch>>().await
            })
            .await?
            .map_err(proto)?;
            for f in fetched {
                let Some(uid) = f.uid else { continue };
                // `n:*` always returns the last message, even when its UID is below n.
                if uid <= cursor.last_uid && !missing.contains(&uid) {
                    continue;
                }
                let deleted = f.flags().any(|fl| matches!(fl, async_imap::types::Flag::Deleted));
                metas.push(Meta {
                    uid,
                    size: f.size.unwrap_or(0) as usize,
                    internal: f.internal_date().map(|d| d.with_timezone(&Utc)),
                    deleted,
                });
            }
        }
        metas.sort_by_key(|m| m.uid);
        metas.dedup_by_key(|m| m.uid);
    }

    // Chunks: fetch, parse, commit with the cursor that covers them.
    let mut pending_removed = removed;
    let mut chunks: Vec<Vec<Meta>> = Vec::new();
    let mut current: Vec<Meta> = Vec::new();
    let mut bytes = 0;
    for m in metas {
        if !current.is_empty() && (current.len() >= options.chunk || bytes + m.size > options.chunk_bytes) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += m.size.min(options.limits.max_bytes);
        current.push(m);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    // Pipelined: chunk n+1 is fetched and parsed (on the blocking pool) while chunk n
    // commits. Commits stay one at a time and in UID order, each with the cursor that
    // covers it, so a kill still leaves the folder at the last committed chunk; a fetch
    // that fails while a commit succeeds is reported after that commit.
    let mut chunks = chunks.into_iter();
    let mut next = match chunks.next() {
        Some(c) => Some((fetch_chunk(session, &c, source, folder, uidvalidity, book, options, fr).await?, c)),
        None => None,
    };
    while let Some((items, chunk)) = next.take() {
        if let Some(max) = chunk.iter().map(|m| m.uid).max() {
            cursor.last_uid = cursor.last_uid.max(max);
        }
        let commit = store.commit(FolderBatch {
            source: source.to_owned(),
            folder: folder.to_owned(),
            cursor,
            items,
            removed: std::mem::take(&mut pending_removed),
            drop_stale_validity: false,
        });
        match chunks.next() {
            Some(following) => {
                let mut ahead = FolderReport::default();
                let fetch = fetch_chunk(session, &following, source, folder, uidvalidity, book, options, &mut ahead);
                let (committed, fetched) = tokio::join!(commit, fetch);
                add_counts(fr, committed?);
                let fetched = fetched?;
                fr.fetched += ahead.fetched;
                fr.fetched_bytes += ahead.fetched_bytes;
                next = Some((fetched, following));
            }
            None => add_counts(fr, commit.await?),
        }
    }
    // The pass is complete: record where the server stood at SELECT.
    cursor.uidnext = server_uidnext.unwrap_or(cursor.last_uid + 1).max(cursor.last_uid + 1);
    cursor.highestmodseq = server_modseq;
    let counts = store
        .commit(FolderBatch {
            source: source.to_owned(),
            folder: folder.to_owned(),
            cursor,
            items: Vec::new(),
            removed: pending_removed,
            drop_stale_validity: true,
        })
        .await?;
    add_counts(fr, counts);
    Ok(())
}

fn add_counts(fr: &mut FolderReport, c: CommitCounts) {
    fr.new += c.new;
    fr.duplicates += c.duplicates;
    fr.removed += c.removed;
    fr.quarantined += c.quarantined;
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    uid: u32,
    size: usize,
    internal: Option<DateTime<Utc>>,
    deleted: bool,
}

/// `1:3,7,9:10` from sorted UIDs.
fn uid_set(uids: impl Iterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, (a, b): (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&format!("{a}:{b}"));
        }
    };
    for u in uids {
        run = match run {
            Some((a, b)) if u == b + 1 => Some((a, u)),
            Some(r) => {
                flush(&mut out, r);
                Some((u, u))
            }
            None => Some((u, u)),
        };
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn fetch_chunk(
    session: &mut Session,
    chunk: &[Meta],
    source: &str,
    folder: &str,
    uidvalidity: u32,
    book: &Arc<ContactBook>,
    options: &SyncOptions,
    fr: &mut FolderReport,
) -> Result<Vec<FetchedItem>, SyncError> {
    let live: Vec<&Meta> = chunk.iter().filter(|m| !m.deleted).collect();
    let (small, huge): (Vec<&Meta>, Vec<&Meta>) = live.into_iter().partition(|m| m.size <= options.limits.max_bytes);
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    if !small.is_empty() {
        let set = uid_set(small.iter().map(|m| m.uid));
        let fetched = timed(options, "UID FETCH (bodies)", async {
            let stream = session.uid_fetch(&set, "(UID BODY.PEEK[])").await?;
            stream.try_collect::<Vec<Fetch>>().await
        })
        .await?
        .map_err(proto)?;
        for f in fetched {
            if let (Some(uid), Some(body)) = (f.uid, f.body()) {
                fr.fetched += 1;
                fr.fetched_bytes += body.len();
                bodies.insert(uid, body.to_vec());
            }
        }
    }
    let mut headers: HashMap<u32, Vec<u8>> = HashMap::new();
    if !huge.is_empty() {
        let set = uid_set(huge.iter().map(|m| m.uid));
        let fetched = timed(options, "UID FETCH (headers)", async {
            let stream = session.uid_fetch(&set, "(UID BODY.PEEK[HEADER])").await?;
            stream.try_collect::<Vec<Fetch>>().await
        })
        .await?
        .map_err(proto)?;
        for f in fetched {
            if let (Some(uid), Some(h)) = (f.uid, f.header()) {
                headers.insert(uid, h.to_vec());
            }
        }
    }
    let loc = |uid: u32| Location { source: source.to_owned(), folder: folder.to_owned(), uidvalidity, uid };
    let mut items: Vec<FetchedItem> = huge
        .iter()
        .map(|m| {
            let raw = headers.remove(&m.uid).unwrap_or_default();
            let failure = ParseFailure::TooLarge { bytes: m.size, limit: options.limits.max_bytes };
            FetchedItem {
                location: loc(m.uid),
                outcome: Err(quarantine_record(loc(m.uid), failure, &raw, m.size)),
                raw,
            }
        })
        .collect();
    // Parse on the blocking pool: parsing is CPU work, and a parser panic is caught there.
    /// Location, INTERNALDATE, size on the server, raw bytes.
    type ToParse = (Location, Option<DateTime<Utc>>, usize, Vec<u8>);
    let work: Vec<ToParse> =
        small.iter().filter_map(|m| bodies.remove(&m.uid).map(|b| (loc(m.uid), m.internal, m.size, b))).collect();
    let limits = options.limits;
    let book = Arc::clone(book);
    let source_owned = source.to_owned();
    let parsed = tokio::task::spawn_blocking(move || {
        work.into_iter()
            .map(|(location, internal, size, raw)| {
                let outcome = match parse_mail(&raw, &limits, internal) {
                    Ok(mail) => Ok(entry_from_mail(&mail, &source_owned, &book)),
                    Err(failure) => Err(quarantine_record(location.clone(), failure, &raw, size)),
                };
                FetchedItem { location, outcome, raw }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("parser task failed: {e}")))?;
    items.extend(parsed);
    items.sort_by_key(|i| i.location.uid);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set([1, 2, 3, 7, 9, 10].into_iter()), "1:3,7,9:10");
        assert_eq!(uid_set([5].into_iter()), "5");
        assert_eq!(uid_set(std::iter::empty()), "");
    }

    #[test]
    fn the_password_is_never_printed() {
        let a = ImapAccount::plain("h", 1, "u", "hunter2");
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn xoauth2_initial_response_is_rfc_shaped() {
        // Google's documented example: user=someuser@example.com^Aauth=Bearer ya29...^A^A
        let r = xoauth2_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
        assert_eq!(
            r,
            "user=someuser@example.com\u{1}auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\u{1}\u{1}"
        );
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&r),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        let mut a = XOauth2 { response: Some(r) };
        use async_imap::Authenticator;
        assert!(a.process(b"").starts_with("user="));
        assert_eq!(a.process(b"{\"status\":\"401\"}"), "", "the error challenge gets an empty answer");
    }

    #[test]
    fn tls_config_reads_an_extra_ca_and_refuses_a_bad_path() {
        let mut a = ImapAccount::plain("h", 993, "u", "p");
        a.tls = true;
        assert!(tls_config(&a).is_ok());
        a.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(tls_config(&a), Err(SyncError::Unsupported(_))));
    }
}

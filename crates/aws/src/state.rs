//! The S3 state backend: an environment's lock, journal and audit log in a
//! bucket a team shares.
//!
//! Layout under `s3://<bucket>/<prefix>/<name>/<environment>/`:
//!
//! - `lock.json`: the [`Lease`]. Taken with `PutObject` and
//!   `If-None-Match: *`, which S3 refuses (412) when the object exists, so
//!   two runs cannot both create it. A refused run reads the lease and is
//!   told who holds it since when. An expired lease (or one of this machine
//!   whose process is gone, as in the local backend) is taken over by
//!   replacing exactly the version read: `PutObject` with
//!   `If-Match: <its etag>`. Of runs taking over at once, one write matches
//!   and the others are refused and shown the winner; the lock is never
//!   absent in between. Renew and release read the lease, check it is still ours (same
//!   run and holder) and write or delete it with `If-Match` on the etag they
//!   read, so they never touch a lease that replaced ours in between.
//! - `journal/<seq>.json` and `audit/<seq>.json`: S3 has no append, so each
//!   entry is one object, `<seq>` a zero-padded 20-digit sequence number (so
//!   key order is append order), created with `If-None-Match: *`: an entry
//!   is never overwritten. A writer keeps the next number in memory; when
//!   another writer took that number (412) it lists what follows and goes on
//!   after it. Reading lists the keys in order (every page) and fetches the
//!   objects a bounded number at a time ([`DEFAULT_READ_CONCURRENCY`]).
//!
//! The objects hold what the local backend's files hold: leases, journal
//! entries and audit entries, never a secret value. Expiry is judged by the
//! reading machine's clock against the holder's `expires_at`: the machines
//! of a team need synchronised clocks (NTP), as with any lease.

use crate::call_log::CallLog;
use crate::error::{AwsError, ErrorKind};
use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskctl_core::journal::JournalEntry;
use taskctl_core::state::{Acquired, AuditEntry, Lease, StateError, StateStore};
use tokio::sync::Mutex;

/// Objects of a log fetched at once when reading it. Measured with
/// `bench/state-s3.sh`.
pub const DEFAULT_READ_CONCURRENCY: usize = 32;

/// Conditional writes that lose a race are retried this many times before
/// the store gives up (each retry follows a competitor's success).
const MAX_RACES: usize = 16;

/// The same for appends: every lost race is another writer's entry landing,
/// so a busy log may take many rounds; a pause after each loss spreads the
/// writers out.
const MAX_APPEND_RACES: usize = 1000;

/// Where the state of one environment lives in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix of every environment's state (no leading or trailing `/`
    /// needed); may be empty.
    pub prefix: String,
    /// `<name>/<environment>`.
    pub environment: String,
}

impl S3Location {
    /// `prefix/name/environment/`, the folder of this environment's objects.
    fn base(&self) -> String {
        let mut base = String::new();
        for part in [self.prefix.as_str(), self.environment.as_str()] {
            let part = part.trim_matches('/');
            if !part.is_empty() {
                base.push_str(part);
                base.push('/');
            }
        }
        base
    }
}

/// One append-only log: a folder of numbered objects.
struct Log {
    /// `…/journal/` or `…/audit/`.
    folder: String,
    /// The number the next entry will try; `None` until known.
    next: Mutex<Option<u64>>,
}

impl Log {
    fn new(folder: String) -> Self {
        Log {
            folder,
            next: Mutex::new(None),
        }
    }

    fn key(&self, seq: u64) -> String {
        format!("{}{seq:020}.json", self.folder)
    }

    fn seq_of(&self, key: &str) -> Option<u64> {
        let name = key.strip_prefix(&self.folder)?.strip_suffix(".json")?;
        (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
            .then(|| name.parse().ok())
            .flatten()
    }
}

/// An environment's state in an S3 bucket.
pub struct S3Store {
    client: aws_sdk_s3::Client,
    location: S3Location,
    /// The client's region, for messages.
    region: String,
    lock_key: String,
    journal: Log,
    audit: Log,
    read_concurrency: usize,
    calls: CallLog,
}

/// A lease as read, with the etag that conditional writes compare against.
struct Held {
    lease: Lease,
    etag: String,
}

/// What a conditional write's refusal means.
enum Refusal {
    /// 412: the condition did not hold (the object exists, or changed).
    Precondition,
    /// 409: another conditional write to the key was in flight; try again.
    Conflict,
}

fn refusal<E>(err: &SdkError<E, HttpResponse>) -> Option<Refusal>
where
    E: ProvideErrorMetadata,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    };
    match (status, code) {
        (Some(412), _) | (_, Some("PreconditionFailed")) => Some(Refusal::Precondition),
        (Some(409), _) | (_, Some("ConditionalRequestConflict")) => Some(Refusal::Conflict),
        _ => None,
    }
}

fn is_missing_key<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(e) => {
            e.err().code() == Some("NoSuchKey")
                || (e.err().code().is_none() && e.raw().status().as_u16() == 404)
        }
        _ => false,
    }
}

impl S3Store {
    /// The store of `location`, with a client from the SDK's standard
    /// environment (credential chain, `AWS_ENDPOINT_URL`), in `region` or
    /// else the environment's. Fails with what to do when there is no
    /// region or no credentials.
    pub async fn from_env(location: S3Location, region: Option<&str>) -> Result<Self, StateError> {
        let config = crate::client::sdk_config(region.filter(|r| !r.trim().is_empty())).await;
        let place = format!("s3://{}/{}", location.bucket, location.base());
        if config.region().is_none() {
            return Err(StateError::Backend(format!(
                "no AWS region for the state bucket {place}: set `state.s3.region` in the profile (or AWS_REGION)"
            )));
        }
        let Some(credentials) = config.credentials_provider() else {
            return Err(no_credentials(
                &place,
                "no credentials provider is configured",
            ));
        };
        if let Err(e) = credentials.provide_credentials().await {
            return Err(no_credentials(&place, &e.to_string()));
        }
        let mut builder = aws_sdk_s3::config::Builder::from(&config);
        // An endpoint of one's own (moto, MinIO, LocalStack) serves buckets
        // as paths: `http://host:port/bucket/key`. AWS's own endpoints keep
        // virtual-hosted addressing, the only one new S3 features get.
        let custom_endpoint = config.endpoint_url().is_some()
            || std::env::var("AWS_ENDPOINT_URL_S3").is_ok_and(|v| !v.is_empty());
        if custom_endpoint {
            builder = builder.force_path_style(true);
        }
        let calls = CallLog::new();
        let client = aws_sdk_s3::Client::from_conf(builder.interceptor(calls.clone()).build());
        Ok(S3Store::new(client, location, calls))
    }

    fn new(client: aws_sdk_s3::Client, location: S3Location, calls: CallLog) -> Self {
        let base = location.base();
        let region = client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        S3Store {
            client,
            region,
            lock_key: format!("{base}lock.json"),
            journal: Log::new(format!("{base}journal/")),
            audit: Log::new(format!("{base}audit/")),
            location,
            read_concurrency: DEFAULT_READ_CONCURRENCY,
            calls,
        }
    }

    /// Another handle on the same state through the same client, knowing
    /// nothing of this one's appends: what a second process sees.
    pub fn handle(&self) -> S3Store {
        S3Store::new(
            self.client.clone(),
            self.location.clone(),
            self.calls.clone(),
        )
        .with_read_concurrency(self.read_concurrency)
    }

    /// How many objects of a log are fetched at once when reading it (at
    /// least one).
    pub fn with_read_concurrency(mut self, n: usize) -> Self {
        self.read_concurrency = n.max(1);
        self
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn location_of(&self) -> &S3Location {
        &self.location
    }

    /// Every call made through this store's client (shared by its handles).
    pub fn call_log(&self) -> &CallLog {
        &self.calls
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.location.bucket)
    }

    /// A one-line error that says what was expected and how to fix it.
    fn error<E>(&self, operation: &str, key: &str, err: SdkError<E, HttpResponse>) -> StateError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket = &self.location.bucket;
        let url = self.url(key);
        if matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) {
            return StateError::Backend(format!(
                "cannot reach S3 for {url} ({operation}): {}; check the network, or AWS_ENDPOINT_URL if one is set",
                error_chain(&err)
            ));
        }
        let err = AwsError::from_sdk(operation, err);
        let message = match (err.code.as_deref(), err.kind) {
            (Some("NoSuchBucket"), _) => format!(
                "the state bucket `{bucket}` does not exist (region {}): create it (`aws s3 mb s3://{bucket}`) or set `state.s3.bucket` to an existing bucket",
                self.region
            ),
            (
                Some(
                    "PermanentRedirect"
                    | "AuthorizationHeaderMalformed"
                    | "IllegalLocationConstraintException",
                ),
                _,
            ) => format!(
                "the state bucket `{bucket}` is not in region {}: set `state.s3.region` to the bucket's region ({operation} {url}: {})",
                self.region, err.message
            ),
            (_, ErrorKind::Denied) => format!(
                "access denied to {url} ({operation}{}): the credentials in use need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on s3://{bucket}/{}; check AWS_PROFILE or AWS_ACCESS_KEY_ID",
                err.code
                    .as_deref()
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default(),
                self.location.base()
            ),
            _ => format!("{operation} {url}: {err}"),
        };
        StateError::Backend(message)
    }

    fn corrupt(&self, key: &str, message: impl ToString) -> StateError {
        StateError::Corrupt {
            location: self.url(key),
            message: message.to_string(),
        }
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec_pretty(value).map_err(|e| self.corrupt(key, e))
    }

    /// The object's body and etag, `None` if there is no such key.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_missing_key(&e) => return Ok(None),
            Err(e) => return Err(self.error("GetObject", key, e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let body = out.body.collect().await.map_err(|e| {
            StateError::Backend(format!(
                "GetObject {}: reading the body: {e}",
                self.url(key)
            ))
        })?;
        Ok(Some((body.to_vec(), etag)))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, String)>, StateError> {
        match self.get(key).await? {
            Some((body, etag)) => serde_json::from_slice(&body)
                .map(|v| Some((v, etag)))
                .map_err(|e| self.corrupt(key, e)),
            None => Ok(None),
        }
    }

    async fn read_lock(&self) -> Result<Option<Held>, StateError> {
        Ok(self
            .get_json(&self.lock_key)
            .await?
            .map(|(lease, etag)| Held { lease, etag }))
    }

    /// Writes `body` at `key` on a condition: `If-None-Match: *` (create
    /// only) or `If-Match: etag` (replace exactly that version). `Ok(None)`
    /// when the condition did not hold.
    async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        if_match: Option<&str>,
    ) -> Result<Option<()>, StateError> {
        for _ in 0..MAX_RACES {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.location.bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(body.clone()));
            put = match if_match {
                Some(etag) => put.if_match(etag),
                None => put.if_none_match("*"),
            };
            match put.send().await {
                Ok(_) => return Ok(Some(())),
                // `If-Match` on a key deleted meanwhile.
                Err(e) if is_missing_key(&e) => return Ok(None),
                Err(e) => match refusal(&e) {
                    Some(Refusal::Precondition) => return Ok(None),
                    Some(Refusal::Conflict) => conflict_pause().await,
                    None => return Err(self.error("PutObject", key, e)),
                },
            }
        }
        Err(self.contended(key))
    }

    /// Deletes the version `etag` of `key`; `false` when it changed or is
    /// gone.
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, StateError> {
        for _ in 0..MAX_RACES {
            match self
                .client
                .delete_object()
                .bucket(&self.location.bucket)
                .key(key)
                .if_match(etag)
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if is_missing_key(&e) => return Ok(false),
                Err(e) => match refusal(&e) {
                    Some(Refusal::Precondition) => return Ok(false),
                    Some(Refusal::Conflict) => conflict_pause().await,
                    None => return Err(self.error("DeleteObject", key, e)),
                },
            }
        }
        Err(self.contended(key))
    }

    fn contended(&self, key: &str) -> StateError {
        StateError::Backend(format!(
            "{} keeps changing under this run ({MAX_RACES} conditional writes lost in a row); try again",
            self.url(key)
        ))
    }

    /// Every key of `log` after `start_after` (all of them if `None`), in
    /// order, every page.
    async fn list(
        &self,
        log: &Log,
        start_after: Option<String>,
    ) -> Result<Vec<(u64, String)>, StateError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(&log.folder)
            .set_start_after(start_after)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", &log.folder, e))?;
            for object in page.contents() {
                let key = object.key().unwrap_or_default();
                let seq = log.seq_of(key).ok_or_else(|| {
                    self.corrupt(
                        key,
                        "not an entry taskctl writes (expected <20 digits>.json)",
                    )
                })?;
                keys.push((seq, key.to_owned()));
            }
        }
        Ok(keys)
    }

    async fn append<T: Serialize>(&self, log: &Log, value: &T) -> Result<(), StateError> {
        // Held through the write: this process's entries land in the order
        // their appends were called.
        let mut next = log.next.lock().await;
        let mut seq = match *next {
            Some(n) => n,
            None => self.list(log, None).await?.last().map_or(0, |(s, _)| s + 1),
        };
        let body = serde_json::to_vec(value).map_err(|e| self.corrupt(&log.key(seq), e))?;
        for lost in 0..MAX_APPEND_RACES {
            let key = log.key(seq);
            if self.put_if(&key, body.clone(), None).await?.is_some() {
                *next = Some(seq + 1);
                return Ok(());
            }
            if lost > 0 {
                jittered_pause(0, 10).await;
            }
            // Another writer has `seq`: go on after the last entry.
            let after = self.list(log, Some(key)).await?;
            seq = after.last().map_or(seq, |(s, _)| *s) + 1;
        }
        Err(self.contended(&log.folder))
    }

    async fn read<T: DeserializeOwned>(&self, log: &Log) -> Result<Vec<T>, StateError> {
        let keys = self.list(log, None).await?;
        // What follows the last entry is where this store's next append
        // tries first (unless an append is under way).
        if let (Some((last, _)), Ok(mut next)) = (keys.last(), log.next.try_lock()) {
            *next = Some(next.unwrap_or(0).max(last + 1));
        }
        futures_util::stream::iter(keys)
            .map(|(_, key)| async move {
                match self.get_json::<T>(&key).await? {
                    Some((value, _)) => Ok(Some(value)),
                    // Entries are never deleted by taskctl; one removed by
                    // hand between the listing and the read is skipped.
                    None => Ok(None),
                }
            })
            .buffered(self.read_concurrency)
            .try_filter_map(|v| async move { Ok(v) })
            .try_collect()
            .await
    }
}

/// A short pause before retrying a write that collided with another one in
/// flight (409).
async fn conflict_pause() {
    jittered_pause(25, 50).await;
}

/// `base_ms` plus up to `spread_ms` of jitter, so writers that collided do
/// not collide again in step.
async fn jittered_pause(base_ms: u64, spread_ms: u32) {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % (spread_ms * 1_000_000))
        .unwrap_or_default();
    let pause = std::time::Duration::from_millis(base_ms)
        + std::time::Duration::from_nanos(u64::from(jitter));
    tokio::time::sleep(pause).await;
}

/// An error and its sources on one line, each said once.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = e.source();
    }
    line
}

fn no_credentials(place: &str, cause: &str) -> StateError {
    StateError::Backend(format!(
        "no AWS credentials for the state bucket {place} ({cause}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance or SSO role is available"
    ))
}

#[async_trait]
impl StateStore for S3Store {
    fn location(&self) -> String {
        self.url(&self.location.base())
    }

    async fn acquire(&self, lease: &Lease) -> Result<Acquired, StateError> {
        let body = self.encode(&self.lock_key, lease)?;
        for _ in 0..MAX_RACES {
            if self
                .put_if(&self.lock_key, body.clone(), None)
                .await?
                .is_some()
            {
                return Ok(Acquired::Yes { replaced: None });
            }
            // None: released between our put and our read; try again.
            let Some(held) = self.read_lock().await? else {
                continue;
            };
            if !(held.lease.is_expired() || held.lease.is_orphaned()) {
                return Ok(Acquired::HeldBy(held.lease));
            }
            // Replace exactly the version judged expired: of runs taking
            // over at once, one write matches the etag, and the others see
            // the winner's lease next round.
            if self
                .put_if(&self.lock_key, body.clone(), Some(&held.etag))
                .await?
                .is_some()
            {
                return Ok(Acquired::Yes {
                    replaced: Some(held.lease),
                });
            }
        }
        Err(self.contended(&self.lock_key))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, StateError> {
        let body = self.encode(&self.lock_key, lease)?;
        match self.read_lock().await? {
            Some(held)
                if held.lease.run_id == lease.run_id && held.lease.holder == lease.holder =>
            {
                // A refusal means the lease was broken or taken over since
                // the read: it is not ours any more, and stays as it is.
                Ok(self
                    .put_if(&self.lock_key, body, Some(&held.etag))
                    .await?
                    .is_some())
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StateError> {
        match self.read_lock().await? {
            Some(held)
                if held.lease.run_id == lease.run_id && held.lease.holder == lease.holder =>
            {
                self.delete_if(&self.lock_key, &held.etag).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn current_lock(&self) -> Result<Option<Lease>, StateError> {
        Ok(self.read_lock().await?.map(|h| h.lease))
    }

    async fn break_lock(&self) -> Result<Option<Lease>, StateError> {
        for _ in 0..MAX_RACES {
            let Some(held) = self.read_lock().await? else {
                return Ok(None);
            };
            // Returns the lease actually removed, not one read before a
            // takeover replaced it.
            if self.delete_if(&self.lock_key, &held.etag).await? {
                return Ok(Some(held.lease));
            }
        }
        Err(self.contended(&self.lock_key))
    }

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StateError> {
        self.append(&self.journal, entry).await
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StateError> {
        self.read(&self.journal).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StateError> {
        self.append(&self.audit, entry).await
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StateError> {
        self.read(&self.audit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_append_order_and_parse_back() {
        let loc = S3Location {
            bucket: "b".into(),
            prefix: "/teams/ops/".into(),
            environment: "task/production".into(),
        };
        assert_eq!(loc.base(), "teams/ops/task/production/");
        let no_prefix = S3Location {
            prefix: String::new(),
            ..loc.clone()
        };
        assert_eq!(no_prefix.base(), "task/production/");
        let log = Log::new(format!("{}journal/", loc.base()));
        let keys: Vec<String> = [9, 10, 11, 999, 1000, u64::MAX]
            .iter()
            .map(|n| log.key(*n))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys, "lexical order is numeric order");
        assert_eq!(log.seq_of(&keys[3]), Some(999));
        assert_eq!(log.seq_of(&keys[5]), Some(u64::MAX));
        assert_eq!(log.seq_of("teams/ops/task/production/journal/README"), None);
        assert_eq!(
            log.seq_of("teams/ops/task/production/journal/12.json"),
            None
        );
    }
}

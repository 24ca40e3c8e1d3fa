//! The changelog of replicated partitions (feature `replication`): every committed write of a
//! partition is also appended to a NATS JetStream stream, one subject per partition, so that a
//! standby keeps a warm copy, a new owner takes over with the whole window, and a cold node
//! restores it (latest snapshot plus tail).
//!
//! Owns: the stream (created if missing, `replicas` copies), the message encoding (spec:
//! "Changelog messages" in `engine/FORMAT.md`), the committer task of each owned partition
//! ([`ReplicatedPartition`]), standbys ([`Standby`]) and catch-up ([`Changelog::catch_up`]).
//!
//! The stream is the source of truth; a partition's store is a copy of its subject up to the
//! stream sequence kept in the store as the position of [`CHANGELOG_SOURCE`] (atomic with the
//! records it covers). Invariants:
//! - **Publish, then commit, then answer.** A committer decides a group of writes against its
//!   store, publishes them as one message with `Nats-Expected-Last-Subject-Sequence` set to the
//!   last sequence it knows, and only on the stream's ack commits them locally (one
//!   transaction, with the new changelog position and the epoch; fsynced in `Sync`), then
//!   answers. So no caller is told `Inserted` or `Duplicate` for a record the stream may not
//!   have, and every record of the store is in the stream (nothing to re-publish on reopen: a
//!   store behind the stream catches up).
//! - **One writer per subject.** Every publish carries the expected last subject sequence, so
//!   of two owners only one can append: a new owner publishes an epoch marker, and from then on
//!   the old owner's publishes are refused by the stream ([`Error::Fenced`], nothing written).
//! - **A failed publish gives no answer.** A timed-out or failed publish may or may not be in
//!   the stream: its callers get [`Error::Replication`] and the committer catches up from the
//!   stream before its next group (if the message landed, it is applied like any other; if a
//!   newer epoch appears, the partition is fenced).
//! - **Snapshots** are the store's live window (as [`Store::export`] writes it) published as
//!   chunks by the committer between groups; once the last chunk is acked, the subject's
//!   messages before the first chunk are purged, so replaying the subject from its first
//!   message (snapshot, then tail) rebuilds the partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{current_epoch, PartitionId, Partitions, EPOCH_SOURCE};
use crate::answer::{Outcome, Value};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::transaction::Transaction;

/// The position source holding the stream sequence a partition's store has applied (or
/// published) up to. Reserved, as every source starting with `"\0idem/"`.
pub const CHANGELOG_SOURCE: &[u8] = b"\0idem/changelog-seq";

const MAGIC: [u8; 4] = *b"IDCL";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 32;
const ENTRY_HEADER_LEN: usize = 16;
/// Kinds of message.
const MSG_WRITES: u8 = 1;
const MSG_EPOCH: u8 = 2;
const MSG_SNAPSHOT: u8 = 3;
/// Flag of a snapshot's last chunk.
const FLAG_LAST_CHUNK: u16 = 1;
/// Kinds of entry.
const ENTRY_INSERT: u8 = 1;
const ENTRY_STATE_PUT: u8 = 2;
const ENTRY_STATE_DELETE: u8 = 3;
const ENTRY_POSITION: u8 = 4;
/// Messages stay under NATS's default 1 MiB max payload: a group or a snapshot chunk is closed
/// once its body passes this.
const MAX_BODY_BYTES: usize = 512 << 10;
/// Messages applied in one local transaction while catching up (well under the transaction
/// limit of 10,000 records for groups of a few hundred writes).
const APPLY_BATCH_MESSAGES: usize = 16;

/// How a [`Changelog`] is set up.
#[derive(Debug, Clone)]
pub struct ChangelogConfig {
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// Subjects are `<prefix>.<partition id>`; the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    /// Stream replicas: 3 on a cluster (the changelog survives one server), 1 on one server.
    pub replicas: usize,
    /// Most writes (closures) in one group: one publish and one local commit.
    pub max_group: usize,
    /// A snapshot is published (and the subject trimmed) after this many published groups;
    /// 0: only when [`ReplicatedPartition::snapshot`] is called.
    pub snapshot_every: u64,
    /// How long [`Changelog::connect`]'s client waits for a JetStream answer (a publish ack,
    /// an API request) before the write fails with [`Error::Replication`] (and is retried by
    /// the caller). Shorter moves on faster while a cluster elects a leader; too short refuses
    /// writes a busy stream would have acked.
    pub request_timeout: Duration,
}

impl Default for ChangelogConfig {
    fn default() -> Self {
        ChangelogConfig {
            stream: "IDEM_CHANGELOG".into(),
            subject_prefix: "idem.changelog".into(),
            replicas: 1,
            max_group: 1024,
            snapshot_every: 0,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The changelog stream of a set of partitions: see the module docs.
#[derive(Clone)]
pub struct Changelog {
    js: jetstream::Context,
    stream: stream::Stream,
    config: ChangelogConfig,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("config", &self.config)
            .finish()
    }
}

fn repl(partition: PartitionId, what: impl std::fmt::Display) -> Error {
    Error::Replication {
        partition,
        reason: what.to_string(),
    }
}

/// What [`Changelog::catch_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUp {
    /// Messages applied.
    pub messages: u64,
    /// Entries (inserts, state writes, positions) in them.
    pub entries: u64,
    /// The subject's last stream sequence, now applied.
    pub last_sequence: u64,
    /// The largest epoch seen on the subject (the store's epoch is at least this).
    pub epoch: u64,
}

impl Changelog {
    /// Binds to the changelog stream, creating it (file storage, `config.replicas` copies) if
    /// it does not exist.
    pub async fn new(js: jetstream::Context, config: ChangelogConfig) -> Result<Changelog> {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| repl(0, format_args!("creating stream {}: {e}", config.stream)))?;
        Ok(Changelog { js, stream, config })
    }

    /// Connects to the NATS server(s) at `url` (`nats://host:port`, or several comma-separated)
    /// and binds to the changelog stream as [`Changelog::new`] does.
    pub async fn connect(url: &str, config: ChangelogConfig) -> Result<Changelog> {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = async_nats::connect(urls)
            .await
            .map_err(|e| repl(0, format_args!("connecting to NATS at {url}: {e}")))?;
        let mut js = jetstream::new(client);
        js.set_timeout(config.request_timeout);
        Changelog::new(js, config).await
    }

    /// The subject of partition `id`.
    pub fn subject(&self, id: PartitionId) -> String {
        format!("{}.{id}", self.config.subject_prefix)
    }

    /// The stream sequence of partition `id`'s last message (0: none).
    pub async fn last_sequence(&self, id: PartitionId) -> Result<u64> {
        use stream::LastRawMessageErrorKind as Kind;
        let mut attempt = 0;
        loop {
            match self
                .stream
                .get_last_raw_message_by_subject(&self.subject(id))
                .await
            {
                Ok(message) => return Ok(message.sequence),
                Err(e) if e.kind() == Kind::NoMessageFound => return Ok(0),
                // Transient while the cluster elects a leader: retry a few times.
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(repl(id, format_args!("reading the last sequence: {e}"))),
            }
        }
    }

    /// Applies to `store` every message of partition `id`'s subject after the store's
    /// changelog position, up to the subject's last message. A store with nothing applied yet
    /// replays the subject from its first message (the latest snapshot, then the tail): the
    /// cold restore. Idempotent: applying what the store has changes nothing.
    pub async fn catch_up(&self, store: &Store, id: PartitionId) -> Result<CatchUp> {
        let last = self.last_sequence(id).await?;
        let mut report = CatchUp {
            last_sequence: last,
            epoch: current_epoch(store)?,
            ..CatchUp::default()
        };
        let mut applied = applied_sequence(store)?;
        if applied >= last {
            return Ok(report);
        }
        let mut messages = self.read_from(id, applied + 1).await?;
        let mut batch = Vec::new();
        while applied < last {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(repl(id, format_args!("reading: {e}"))),
                Ok(None) => return Err(repl(id, "the changelog consumer ended")),
                Err(_) => return Err(repl(id, "no message from the changelog for 10 s")),
            };
            let info = message.info().map_err(|e| repl(id, e))?;
            let seq = info.stream_sequence;
            let pending = info.pending;
            batch.push((seq, message.payload.to_vec()));
            applied = seq;
            if batch.len() >= APPLY_BATCH_MESSAGES || pending == 0 || applied >= last {
                apply(store, id, &batch, &mut report).await?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            apply(store, id, &batch, &mut report).await?;
        }
        report.epoch = report.epoch.max(current_epoch(store)?);
        Ok(report)
    }

    /// An ordered consumer of partition `id`'s subject from stream sequence `start`.
    async fn read_from(&self, id: PartitionId, start: u64) -> Result<consumer::pull::Ordered> {
        // A cluster electing a new leader (a server lost) answers API requests late for a few
        // seconds, and places an ephemeral consumer on an offline peer now and then (its
        // creation times out): retry before giving up.
        let mut attempt: u64 = 0;
        let consumer = loop {
            let created = self
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: self.subject(id),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await;
            match created {
                Ok(consumer) => break consumer,
                Err(_) if attempt < 15 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis((200 * attempt).min(1000))).await;
                }
                Err(e) => return Err(repl(id, format_args!("creating a reader: {e}"))),
            }
        };
        consumer
            .messages()
            .await
            .map_err(|e| repl(id, format_args!("reading: {e}")))
    }

    /// Keeps a warm copy of partition `id` in `store`: applies the subject's messages as they
    /// come, until [`Standby::stop`].
    pub fn follow(&self, store: Arc<Store>, id: PartitionId) -> Standby {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let changelog = self.clone();
        let follower = store.clone();
        let task = tokio::spawn(async move {
            let mut report = CatchUp::default();
            let start = applied_sequence(&follower)? + 1;
            let mut messages = changelog.read_from(id, start).await?;
            let mut batch = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    next = messages.next() => {
                        let message = match next {
                            Some(Ok(message)) => message,
                            // The reader broke (a server lost, a leader elected): apply what
                            // came, then read again from there.
                            Some(Err(_)) | None => {
                                if !batch.is_empty() {
                                    apply(&follower, id, &batch, &mut report).await?;
                                    batch.clear();
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let start = applied_sequence(&follower)? + 1;
                                if let Ok(reader) = changelog.read_from(id, start).await {
                                    messages = reader;
                                }
                                continue;
                            }
                        };
                        let info = message.info().map_err(|e| repl(id, e))?;
                        let pending = info.pending;
                        batch.push((info.stream_sequence, message.payload.to_vec()));
                        if batch.len() >= APPLY_BATCH_MESSAGES || pending == 0 {
                            apply(&follower, id, &batch, &mut report).await?;
                            batch.clear();
                        }
                    }
                }
            }
            if !batch.is_empty() {
                apply(&follower, id, &batch, &mut report).await?;
            }
            Ok(())
        });
        Standby {
            id,
            store,
            stop: Some(stop),
            task,
        }
    }

    /// Takes ownership of partition `id` on this node (failover, or a first assignment):
    /// catches its store up to the end of the subject, publishes an epoch marker one above
    /// every epoch seen with the expected last subject sequence (from then on the old owner's
    /// appends are refused), commits the epoch locally through [`Partitions::assign_at`], and
    /// starts the committer. Stop the partition's [`Standby`] first, if it has one.
    pub async fn take_ownership(
        &self,
        partitions: &Partitions,
        id: PartitionId,
    ) -> Result<ReplicatedPartition> {
        let store = partitions.open_store(id)?;
        loop {
            let caught = self.catch_up(&store, id).await?;
            let epoch = caught.epoch.max(current_epoch(&store)?) + 1;
            let payload = encode_message(MSG_EPOCH, 0, epoch, 0, 0, &[]);
            match self.publish(id, payload, caught.last_sequence).await {
                Ok(seq) => {
                    let partition = partitions.assign_at(id, epoch)?;
                    let mut tx = store.transaction();
                    tx.set_position(CHANGELOG_SOURCE, seq)?;
                    tx.commit_async().await?;
                    return Ok(ReplicatedPartition::start(
                        self.clone(),
                        partition.store.clone(),
                        id,
                        epoch,
                        seq,
                    ));
                }
                // Another owner appended since the catch-up: catch up again and retry.
                Err(PublishFailure::WrongLastSequence) => continue,
                Err(PublishFailure::Other(reason)) => return Err(repl(id, reason)),
            }
        }
    }

    /// Publishes `payload` on partition `id`'s subject if its last sequence is `expected`;
    /// returns the new message's stream sequence.
    async fn publish(
        &self,
        id: PartitionId,
        payload: Vec<u8>,
        expected: u64,
    ) -> std::result::Result<u64, PublishFailure> {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(expected);
        let ack = self
            .js
            .send_publish(self.subject(id), message)
            .await
            .map_err(PublishFailure::from)?
            .await
            .map_err(PublishFailure::from)?;
        Ok(ack.sequence)
    }

    /// Purges partition `id`'s messages before stream sequence `before`.
    async fn trim(&self, id: PartitionId, before: u64) -> Result<u64> {
        let purged = self
            .stream
            .purge()
            .filter(self.subject(id))
            .sequence(before)
            .await
            .map_err(|e| repl(id, format_args!("trimming: {e}")))?;
        Ok(purged.purged)
    }
}

#[derive(Debug)]
enum PublishFailure {
    /// The subject's last sequence is not the expected one: another owner appended.
    WrongLastSequence,
    /// Anything else: the message may or may not be in the stream.
    Other(String),
}

impl From<jetstream::context::PublishError> for PublishFailure {
    fn from(e: jetstream::context::PublishError) -> Self {
        match e.kind() {
            PublishErrorKind::WrongLastSequence => PublishFailure::WrongLastSequence,
            _ => PublishFailure::Other(format!("publish failed: {e}")),
        }
    }
}

/// The stream sequence `store` has applied up to (0: nothing).
fn applied_sequence(store: &Store) -> Result<u64> {
    Ok(store.position(CHANGELOG_SOURCE)?.unwrap_or(0))
}

/// A process keeping a warm copy of a partition it does not own: see [`Changelog::follow`].
pub struct Standby {
    id: PartitionId,
    store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby").field("id", &self.id).finish()
    }
}

impl Standby {
    /// The stream sequence the copy has applied up to.
    pub fn applied(&self) -> Result<u64> {
        applied_sequence(&self.store)
    }

    /// Stops following (after the batch being applied, if any); returns the store.
    pub async fn stop(mut self) -> Result<Arc<Store>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let id = self.id;
        (&mut self.task)
            .await
            .map_err(|e| repl(id, format_args!("standby task: {e}")))??;
        Ok(self.store.clone())
    }
}

/// Applies changelog messages `(stream sequence, payload)` of partition `id` to `store` in one
/// transaction, with the changelog position moved to the last one's sequence.
async fn apply(
    store: &Store,
    id: PartitionId,
    messages: &[(u64, Vec<u8>)],
    report: &mut CatchUp,
) -> Result<()> {
    let Some(&(last, _)) = messages.last() else {
        return Ok(());
    };
    let applied = applied_sequence(store)?;
    let now = store.shared.clock.now_millis();
    let stored_epoch = current_epoch(store)?;
    let mut epoch = stored_epoch;
    let mut tx = store.transaction();
    for (seq, payload) in messages {
        let message = decode_message(payload).map_err(|reason| {
            repl(
                id,
                format_args!("message at stream sequence {seq}: {reason}"),
            )
        })?;
        if *seq <= applied {
            continue;
        }
        if message.kind == MSG_SNAPSHOT && applied != 0 && applied < message.base_seq {
            // Messages between what the copy has and the snapshot were trimmed: the snapshot
            // does not carry the state deletions among them.
            return Err(repl(
                id,
                format_args!(
                    "the copy is at stream sequence {applied}, behind the trimmed changelog \
                     (snapshot of {}): restore it cold into an empty store",
                    message.base_seq
                ),
            ));
        }
        epoch = epoch.max(message.epoch);
        report.messages += 1;
        for entry in message.entries() {
            let entry = entry.map_err(|reason| repl(id, reason))?;
            report.entries += 1;
            apply_entry(&mut tx, store, &entry, now)?;
        }
    }
    if epoch > stored_epoch {
        tx.set_position(EPOCH_SOURCE, epoch)?;
    }
    if last > applied {
        tx.set_position(CHANGELOG_SOURCE, last)?;
    }
    tx.commit_async().await?;
    report.epoch = report.epoch.max(epoch);
    Ok(())
}

fn apply_entry(tx: &mut Transaction<'_>, store: &Store, entry: &Entry<'_>, now: u64) -> Result<()> {
    match entry.kind {
        ENTRY_INSERT => {
            if entry.number > now {
                let ttl = Duration::from_millis(entry.number - now);
                tx.check_or_insert(entry.key, ttl, entry.value)?;
            }
        }
        ENTRY_STATE_PUT => tx.put_state(entry.key, entry.value)?,
        ENTRY_STATE_DELETE => tx.delete_state(entry.key)?,
        _ => {
            // Positions only move forward; an older one (from a snapshot) changes nothing.
            let stored = store.position(entry.key)?.unwrap_or(0);
            if entry.number > stored {
                match tx.set_position(entry.key, entry.number) {
                    Ok(()) | Err(Error::PositionRegressed { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// One entry of a message.
struct Entry<'a> {
    kind: u8,
    key: &'a [u8],
    value: &'a [u8],
    /// An insert's absolute deadline (ms since the Unix epoch), a position's position.
    number: u64,
}

/// A decoded message header and its body.
struct Message<'a> {
    kind: u8,
    epoch: u64,
    base_seq: u64,
    count: u32,
    body: &'a [u8],
}

impl<'a> Message<'a> {
    fn entries(&self) -> impl Iterator<Item = std::result::Result<Entry<'a>, String>> + 'a {
        let mut at = 0usize;
        let body = self.body;
        (0..self.count).map(move |_| {
            let header = body
                .get(at..at + ENTRY_HEADER_LEN)
                .ok_or("entry header past the end of the message")?;
            let kind = header[0];
            let key_len = u16::from_le_bytes([header[2], header[3]]) as usize;
            let value_len = u32::from_le_bytes(header[4..8].try_into().expect("4")) as usize;
            let number = u64::from_le_bytes(header[8..16].try_into().expect("8"));
            let key_at = at + ENTRY_HEADER_LEN;
            let key = body
                .get(key_at..key_at + key_len)
                .ok_or("entry key past the end of the message")?;
            let value = body
                .get(key_at + key_len..key_at + key_len + value_len)
                .ok_or("entry value past the end of the message")?;
            if !(ENTRY_INSERT..=ENTRY_POSITION).contains(&kind) {
                return Err(format!("unknown entry kind {kind}"));
            }
            at = key_at + key_len + value_len;
            Ok(Entry {
                kind,
                key,
                value,
                number,
            })
        })
    }
}

fn decode_message(bytes: &[u8]) -> std::result::Result<Message<'_>, String> {
    if bytes.len() < HEADER_LEN || bytes[0..4] != MAGIC {
        return Err("not an idem changelog message (bad magic)".into());
    }
    if bytes[4] != VERSION {
        return Err(format!(
            "changelog message version {}, this build reads {VERSION}",
            bytes[4]
        ));
    }
    let crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4"));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..28]);
    hasher.update(&bytes[HEADER_LEN..]);
    if hasher.finalize() != crc {
        return Err("changelog message checksum mismatch".into());
    }
    let kind = bytes[5];
    if !(MSG_WRITES..=MSG_SNAPSHOT).contains(&kind) {
        return Err(format!("unknown message kind {kind}"));
    }
    Ok(Message {
        kind,
        epoch: u64::from_le_bytes(bytes[8..16].try_into().expect("8")),
        base_seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8")),
        count: u32::from_le_bytes(bytes[24..28].try_into().expect("4")),
        body: &bytes[HEADER_LEN..],
    })
}

/// A message: header (see FORMAT.md) then `body`, the entries back to back.
fn encode_message(
    kind: u8,
    flags: u16,
    epoch: u64,
    base_seq: u64,
    count: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&base_seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[..28]);
    hasher.update(body);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn encode_entry(body: &mut Vec<u8>, kind: u8, key: &[u8], value: &[u8], number: u64) {
    body.push(kind);
    body.push(0);
    body.extend_from_slice(&(key.len() as u16).to_le_bytes());
    body.extend_from_slice(&(value.len() as u32).to_le_bytes());
    body.extend_from_slice(&number.to_le_bytes());
    body.extend_from_slice(key);
    body.extend_from_slice(value);
}

/// The writes of one group as they are decided: the local transaction and the entries for the
/// changelog, kept in step.
pub struct GroupTx<'g, 's> {
    tx: &'g mut Transaction<'s>,
    body: &'g mut Vec<u8>,
    count: &'g mut u32,
    /// Keys inserted earlier in the group, with their value: a second check of one is its
    /// `Duplicate`.
    inserted: &'g mut HashMap<Vec<u8>, Vec<u8>>,
    now: u64,
}

impl std::fmt::Debug for GroupTx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTx")
            .field("entries", &self.count)
            .finish()
    }
}

impl GroupTx<'_, '_> {
    /// As [`Transaction::check_or_insert`]; an `Inserted` key is replicated with its absolute
    /// deadline.
    pub fn check_or_insert(&mut self, key: &[u8], ttl: Duration, value: &[u8]) -> Result<Outcome> {
        if let Some(first) = self.inserted.get(key) {
            return Ok(Outcome::Duplicate(Value::from(&first[..])));
        }
        let outcome = self.tx.check_or_insert(key, ttl, value)?;
        if outcome == Outcome::Inserted {
            let deadline = self.now + ttl.as_millis() as u64;
            encode_entry(self.body, ENTRY_INSERT, key, value, deadline);
            *self.count += 1;
            self.inserted.insert(key.to_vec(), value.to_vec());
        }
        Ok(outcome)
    }

    /// As [`Transaction::get_state`]: sees the group's earlier writes.
    pub fn get_state(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.tx.get_state(key)
    }

    /// As [`Transaction::put_state`], replicated.
    pub fn put_state(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.put_state(key, value)?;
        encode_entry(self.body, ENTRY_STATE_PUT, key, value, 0);
        *self.count += 1;
        Ok(())
    }

    /// As [`Transaction::delete_state`], replicated.
    pub fn delete_state(&mut self, key: &[u8]) -> Result<()> {
        self.tx.delete_state(key)?;
        encode_entry(self.body, ENTRY_STATE_DELETE, key, &[], 0);
        *self.count += 1;
        Ok(())
    }

    /// As [`Transaction::set_position`], replicated. Reserved sources are refused
    /// ([`Error::PositionRegressed`] is not it: [`Error::Conflict`]).
    pub fn set_position(&mut self, source: &[u8], position: u64) -> Result<()> {
        if source.starts_with(b"\0idem/") {
            return Err(Error::Conflict {
                reason: "sources starting with \"\\0idem/\" are reserved".into(),
            });
        }
        self.tx.set_position(source, position)?;
        encode_entry(self.body, ENTRY_POSITION, source, &[], position);
        *self.count += 1;
        Ok(())
    }
}

/// A write waiting in a committer's queue: it runs in its group, and its value is sent back
/// once the group is published and committed (or the group's error instead).
struct Pending {
    run: Box<dyn for<'g, 's> FnOnce(&mut GroupTx<'g, 's>) -> Answer + Send>,
    reply: oneshot::Sender<Result<Answer>>,
}
type Answer = Box<dyn std::any::Any + Send>;

enum Request {
    Write(Pending),
    Snapshot(oneshot::Sender<Result<SnapshotReport>>),
    Stats(oneshot::Sender<ReplicationStats>),
}

/// What [`ReplicatedPartition::snapshot`] published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotReport {
    /// Chunks (messages) published.
    pub chunks: u64,
    /// Entries in them.
    pub entries: u64,
    /// Bytes published.
    pub bytes: u64,
    /// Messages of the subject purged before the snapshot.
    pub purged: u64,
}

/// Counters of a committer since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicationStats {
    /// Writes (closures) answered.
    pub writes: u64,
    /// Groups published (one publish and one local commit each).
    pub groups: u64,
    /// Entries published.
    pub entries: u64,
    /// Bytes published.
    pub bytes: u64,
    /// Time spent waiting for publish acks.
    pub publish_wait: Duration,
    /// Time spent committing locally.
    pub commit_wait: Duration,
    /// Snapshots published.
    pub snapshots: u64,
    /// Publishes that failed (their callers got [`Error::Replication`]).
    pub publish_failures: u64,
}

/// A partition this node owns, replicated: its writes are acknowledged only once the stream
/// has acked them and the local store has committed them (in `Sync`, fsynced): the
/// **replicated** durability level. Concurrent writes are grouped (one publish, one local
/// commit per group). Made by [`Changelog::take_ownership`].
pub struct ReplicatedPartition {
    id: PartitionId,
    epoch: u64,
    store: Arc<Store>,
    queue: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for ReplicatedPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedPartition")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl ReplicatedPartition {
    fn start(
        changelog: Changelog,
        store: Arc<Store>,
        id: PartitionId,
        epoch: u64,
        last_seq: u64,
    ) -> ReplicatedPartition {
        let (queue, requests) = mpsc::unbounded_channel();
        let committer = Committer {
            changelog,
            store: store.clone(),
            id,
            epoch,
            last_seq,
            resync: false,
            fenced: None,
            stats: ReplicationStats::default(),
            since_snapshot: 0,
        };
        tokio::spawn(committer.run(requests));
        ReplicatedPartition {
            id,
            epoch,
            store,
            queue,
        }
    }

    /// The partition id.
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// The epoch this node owns the partition at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partition's store, for reads. Writes made on it directly are neither fenced nor
    /// replicated.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `write` in the next group: what it writes through the [`GroupTx`] is published and
    /// committed with the group, and its value returned once both are done. It runs exactly
    /// once; every write it made that returned `Ok` is in the group (check before writing).
    /// Errors: [`Error::Fenced`] (another owner took the partition: nothing written),
    /// [`Error::Replication`] (the stream did not confirm: no answer, retry), local I/O.
    pub async fn transact<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'g, 's> FnOnce(&mut GroupTx<'g, 's>) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<Answer>>();
        let run = Box::new(move |group: &mut GroupTx<'_, '_>| Box::new(write(group)) as Answer);
        self.queue
            .send(Request::Write(Pending { run, reply }))
            .map_err(|_| self.gone())?;
        let value = answer.await.map_err(|_| self.gone())??;
        Ok(*value.downcast::<R>().expect("the answer of this write"))
    }

    /// [`Store::check_or_insert`], replicated.
    pub async fn check_or_insert(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
    ) -> Result<Outcome> {
        let (key, value) = (key.to_vec(), value.to_vec());
        self.transact(move |group| group.check_or_insert(&key, ttl, &value))
            .await?
    }

    /// Publishes a snapshot of the partition's live window (between two groups) and trims the
    /// subject before it.
    pub async fn snapshot(&self) -> Result<SnapshotReport> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Snapshot(reply))
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// The committer's counters.
    pub async fn stats(&self) -> Result<ReplicationStats> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Stats(reply))
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    fn gone(&self) -> Error {
        Error::Fenced {
            partition: self.id,
            epoch: self.epoch,
            current: 0,
        }
    }
}

struct Committer {
    changelog: Changelog,
    store: Arc<Store>,
    id: PartitionId,
    epoch: u64,
    /// The subject's last sequence as this owner knows it (its last publish or catch-up).
    last_seq: u64,
    /// A publish failed in a way that leaves the stream unknown: catch up before the next group.
    resync: bool,
    /// Set once another owner took the partition: everything is refused from then on.
    fenced: Option<u64>,
    stats: ReplicationStats,
    since_snapshot: u64,
}

impl Committer {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let store = self.store.clone();
        while let Some(first) = requests.recv().await {
            let mut writes = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Write(write) => writes.push(write),
                    Request::Snapshot(reply) => {
                        let report = self.snapshot().await;
                        let _ = reply.send(report);
                    }
                    Request::Stats(reply) => {
                        let _ = reply.send(self.stats);
                    }
                }
                if writes.len() < self.changelog.config.max_group {
                    next = requests.try_recv().ok();
                }
            }
            if writes.is_empty() {
                continue;
            }
            let count = writes.len() as u64;
            self.group(&store, writes).await;
            self.stats.writes += count;
            if self.changelog.config.snapshot_every > 0
                && self.since_snapshot >= self.changelog.config.snapshot_every
                && self.fenced.is_none()
            {
                // A failed periodic snapshot is retried after the next groups.
                let _ = self.snapshot().await;
            }
        }
    }

    fn fenced_error(&self) -> Error {
        Error::Fenced {
            partition: self.id,
            epoch: self.epoch,
            current: self.fenced.unwrap_or(0),
        }
    }

    /// Makes the store match the stream again after a publish of unknown outcome.
    async fn resync(&mut self) -> Result<()> {
        let caught = self.changelog.catch_up(&self.store, self.id).await?;
        self.last_seq = caught.last_sequence;
        if caught.epoch > self.epoch {
            self.fenced = Some(caught.epoch);
        }
        self.resync = false;
        Ok(())
    }

    async fn group(&mut self, store: &Store, writes: Vec<Pending>) {
        if self.fenced.is_none() && self.resync {
            if let Err(e) = self.resync().await {
                let reason = e.to_string();
                for write in writes {
                    refuse(write, repl(self.id, &reason));
                }
                return;
            }
        }
        if self.fenced.is_some() {
            for write in writes {
                refuse(write, self.fenced_error());
            }
            return;
        }
        let now = store.shared.clock.now_millis();
        let mut tx = store.transaction();
        let mut body = Vec::new();
        let mut count = 0u32;
        let mut inserted = HashMap::new();
        let mut answers = Vec::with_capacity(writes.len());
        for write in writes {
            let mut group = GroupTx {
                tx: &mut tx,
                body: &mut body,
                count: &mut count,
                inserted: &mut inserted,
                now,
            };
            answers.push(((write.run)(&mut group), write.reply));
        }
        let id = self.id;
        let finish = |answers: Vec<(Answer, oneshot::Sender<Result<Answer>>)>,
                      outcome: Result<()>| {
            match outcome {
                Ok(()) => {
                    for (answer, reply) in answers {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    for (_, reply) in answers {
                        let _ = reply.send(Err(copy_error(&error, id)));
                    }
                }
            }
        };
        if count == 0 {
            // Only duplicates and reads: each answer rests on a record already in the stream.
            drop(tx);
            finish(answers, Ok(()));
            return;
        }
        let payload = encode_message(MSG_WRITES, 0, self.epoch, 0, count, &body);
        let bytes = payload.len() as u64;
        let started = Instant::now();
        let published = self
            .changelog
            .publish(self.id, payload, self.last_seq)
            .await;
        self.stats.publish_wait += started.elapsed();
        let seq = match published {
            Ok(seq) => seq,
            Err(failure) => {
                drop(tx);
                self.stats.publish_failures += 1;
                self.resync = true;
                let error = match failure {
                    PublishFailure::WrongLastSequence => {
                        // Another owner, or our own earlier publish that landed late: the
                        // catch-up tells which.
                        match self.resync().await {
                            Ok(()) if self.fenced.is_some() => self.fenced_error(),
                            Ok(()) => repl(self.id, "the subject moved on; retry"),
                            Err(e) => e,
                        }
                    }
                    PublishFailure::Other(reason) => repl(self.id, reason),
                };
                finish(answers, Err(error));
                return;
            }
        };
        self.last_seq = seq;
        self.stats.groups += 1;
        self.stats.entries += u64::from(count);
        self.stats.bytes += bytes;
        self.since_snapshot += 1;
        let started = Instant::now();
        let committed = async {
            tx.set_position(EPOCH_SOURCE, self.epoch)?;
            tx.set_position(CHANGELOG_SOURCE, seq)?;
            tx.commit_async().await
        }
        .await;
        self.stats.commit_wait += started.elapsed();
        if let Err(e) = &committed {
            // In the stream, not here: catch up (re-apply it) before the next group.
            self.resync = true;
            if matches!(e, Error::Conflict { .. } | Error::PositionRegressed { .. }) {
                self.fenced = Some(current_epoch(store).unwrap_or(0));
            }
        }
        let committed = match committed {
            Err(Error::Conflict { .. } | Error::PositionRegressed { .. }) => {
                Err(self.fenced_error())
            }
            other => other,
        };
        finish(answers, committed);
    }

    /// Publishes the store's live window as snapshot chunks, then trims the subject before
    /// the first chunk.
    async fn snapshot(&mut self) -> Result<SnapshotReport> {
        if let Some(current) = self.fenced {
            return Err(Error::Fenced {
                partition: self.id,
                epoch: self.epoch,
                current,
            });
        }
        if self.resync {
            self.resync().await?;
        }
        let id = self.id;
        let file = std::env::temp_dir().join(format!(
            "idem-snapshot-{}-{id}-{}.idemx",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut chunks: Vec<(u32, Vec<u8>)> = vec![(0, Vec::new())];
        let read = self.store.export(&file).and_then(|_| {
            crate::export::for_each_entry(&file, |entry| {
                let (kind, number) = match entry.kind {
                    crate::export::Kind::Entry => (ENTRY_INSERT, entry.deadline_millis),
                    crate::export::Kind::State => (ENTRY_STATE_PUT, 0),
                    crate::export::Kind::Position if !entry.key.starts_with(b"\0idem/") => {
                        (ENTRY_POSITION, entry.claim_id)
                    }
                    // Claims are not replicated; reserved positions are the copy's own.
                    _ => return Ok(()),
                };
                let (count, body) = chunks.last_mut().expect("one chunk at least");
                encode_entry(body, kind, &entry.key, &entry.value, number);
                *count += 1;
                if body.len() >= MAX_BODY_BYTES {
                    chunks.push((0, Vec::new()));
                }
                Ok(())
            })
        });
        let _ = std::fs::remove_file(&file);
        read?;
        if chunks.len() > 1 && chunks.last().is_some_and(|(count, _)| *count == 0) {
            chunks.pop();
        }
        let base = self.last_seq;
        let mut report = SnapshotReport::default();
        let mut first = None;
        let last_chunk = chunks.len() - 1;
        for (i, (count, body)) in chunks.into_iter().enumerate() {
            let flags = if i == last_chunk { FLAG_LAST_CHUNK } else { 0 };
            let payload = encode_message(MSG_SNAPSHOT, flags, self.epoch, base, count, &body);
            report.bytes += payload.len() as u64;
            match self.changelog.publish(id, payload, self.last_seq).await {
                Ok(seq) => {
                    self.last_seq = seq;
                    first.get_or_insert(seq);
                }
                Err(PublishFailure::WrongLastSequence) => {
                    self.resync = true;
                    self.resync().await?;
                    return Err(if self.fenced.is_some() {
                        self.fenced_error()
                    } else {
                        repl(id, "the subject moved on during the snapshot")
                    });
                }
                Err(PublishFailure::Other(reason)) => {
                    self.resync = true;
                    return Err(repl(id, reason));
                }
            }
            report.chunks += 1;
            report.entries += u64::from(count);
        }
        let mut tx = self.store.transaction();
        tx.set_position(CHANGELOG_SOURCE, self.last_seq)?;
        tx.commit_async().await?;
        report.purged = self
            .changelog
            .trim(id, first.expect("one chunk at least"))
            .await?;
        self.stats.snapshots += 1;
        self.since_snapshot = 0;
        Ok(report)
    }
}

fn refuse(write: Pending, error: Error) {
    // Its closure never runs: nothing of it is written or published.
    let _ = write.reply.send(Err(error));
}

/// The group's error for each of its callers (errors are not `Clone`): a fence as such, every
/// other failure as [`Error::Replication`] with its text.
fn copy_error(error: &Error, id: PartitionId) -> Error {
    match error {
        Error::Fenced {
            partition,
            epoch,
            current,
        } => Error::Fenced {
            partition: *partition,
            epoch: *epoch,
            current: *current,
        },
        Error::Replication { partition, reason } => Error::Replication {
            partition: *partition,
            reason: reason.clone(),
        },
        other => repl(id, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_damage_is_refused() {
        let mut body = Vec::new();
        encode_entry(&mut body, ENTRY_INSERT, b"key", b"value", 1_700_000_000_000);
        encode_entry(&mut body, ENTRY_POSITION, b"orders/3", b"", 42);
        let bytes = encode_message(MSG_WRITES, 0, 7, 0, 2, &body);
        let message = decode_message(&bytes).unwrap();
        assert_eq!(
            (message.kind, message.epoch, message.count),
            (MSG_WRITES, 7, 2)
        );
        let entries: Vec<Entry<'_>> = message.entries().map(|e| e.unwrap()).collect();
        assert_eq!(entries[0].key, b"key");
        assert_eq!(entries[0].value, b"value");
        assert_eq!(entries[0].number, 1_700_000_000_000);
        assert_eq!((entries[1].kind, entries[1].number), (ENTRY_POSITION, 42));
        for at in [0, 5, 9, HEADER_LEN + 3, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode_message(&damaged).is_err(), "flipped byte {at}");
        }
        assert!(decode_message(&bytes[..HEADER_LEN - 1]).is_err());
    }
}

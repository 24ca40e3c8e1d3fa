//! The demo's consumer process (`idem demo-consumer`, hidden): reads batches of charge
//! deliveries on stdin, charges them into a ledger file, acknowledges each batch on stdout.
//!
//! With a store (`--store`), the consumer is exactly-once through idem; without one it is the
//! naive consumer that charges every delivery. [`Consumer::charge_batch`] is where a batch is
//! charged, in one of two ways (`--mode`):
//!
//! - `claims` (the default, [`crate::claimer`]): idem's durable claims, the protocol for side
//!   effects outside the store. Per delivery `claim` → charge into the ledger (one fsync per
//!   batch) → `complete` with the receipt; after a crash, `in_doubt()` lists the claims whose
//!   charge may or may not be in the ledger, and only those events are looked up in it.
//! - `batch`: one `check_or_insert_batch` per batch (one fsync), then the ledger append and
//!   fsync. A crash between the two leaves charges idem recorded and the ledger never got, and
//!   nothing in idem says which: so on start this consumer loads *every* event id of the ledger,
//!   and a `Duplicate` for an event missing from it is charged then, with the receipt idem kept.
//!   That check is only sound with one consumer at a time on the ledger, as here.
//! - `state` ([`crate::balances`]): no ledger; a balance per customer kept in idem, changed in one
//!   transaction with the event's dedup record and the channel position. On start the consumer
//!   reads the committed position and asks for deliveries from there.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use idem::{Config, Outcome, Store};

use crate::args::DurabilityArg;
use crate::balances::Balances;
use crate::claimer::Claimer;
use crate::cli_error::{CliError, CliResult, Context};
use crate::protocol::{self, BatchReport, Delivery, Reconciled, ToConsumer, ToProducer};
use crate::workload::parse_event_id;

/// How the consumer uses idem (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupMode {
    /// Claim, charge, complete per delivery; claims in doubt after a crash are reconciled.
    Claims,
    /// One check_or_insert_batch per batch, then the charges; the whole ledger is reloaded on
    /// start to find the charges a crash left recorded but not applied.
    Batch,
    /// Balances per customer kept in idem: per delivery one transaction of the dedup record, the
    /// balance and the channel position; a restart resumes from the committed position.
    State,
}

impl std::fmt::Display for DedupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DedupMode::Claims => "claims",
            DedupMode::Batch => "batch",
            DedupMode::State => "state",
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// The ledger file charges are appended to (created if missing).
    #[arg(long)]
    pub ledger: PathBuf,
    /// The idem store directory; without it the consumer is naive and charges every delivery.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Durability of the idem store.
    #[arg(long, default_value = "sync")]
    pub durability: DurabilityArg,
    /// TTL of each idempotency key, in milliseconds (the retry window).
    #[arg(long, default_value_t = 86_400_000)]
    pub ttl_ms: u64,
    /// How the consumer uses idem: durable claims, one check-or-insert batch per batch, or
    /// balances kept in idem by transactions.
    #[arg(long, default_value_t = DedupMode::Claims)]
    pub mode: DedupMode,
    /// Claims mode with sync durability: threads making claims and completes (each waits for an
    /// fsync; concurrent ones share it). Other durabilities claim on the main thread.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: u32,
    /// Claims mode: the lease of each claim, in seconds; it must outlast a crash and restart.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_secs: u64,
}

impl ConsumerArgs {
    /// The arguments that make a consumer process parse back into `self`.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["--ledger".into(), self.ledger.clone().into()];
        if let Some(store) = &self.store {
            argv.push("--store".into());
            argv.push(store.clone().into());
        }
        argv.push("--durability".into());
        argv.push(self.durability.to_string().into());
        argv.push("--ttl-ms".into());
        argv.push(self.ttl_ms.to_string().into());
        argv.push("--mode".into());
        argv.push(self.mode.to_string().into());
        argv.push("--threads".into());
        argv.push(self.threads.to_string().into());
        argv.push("--lease-secs".into());
        argv.push(self.lease_secs.to_string().into());
        argv
    }
}

/// One line of the ledger: an applied charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub event: u32,
    pub amount_cents: u32,
}

fn parse_ledger_line(line: &str) -> Option<LedgerEntry> {
    let mut parts = line.split(' ');
    let event = parse_event_id(parts.next()?)?;
    let amount_cents = parts.next()?.parse().ok()?;
    Some(LedgerEntry {
        event,
        amount_cents,
    })
}

/// Parses a ledger's bytes: its charges, and the length of its complete lines (a torn last
/// line, from a crash mid-write, is not a charge).
fn parse_ledger(bytes: &[u8], path: &Path) -> CliResult<(Vec<LedgerEntry>, usize)> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    let entries = text
        .lines()
        .enumerate()
        .map(|(n, line)| {
            parse_ledger_line(line).ok_or_else(|| {
                CliError::new(format!(
                    "ledger {} line {} is malformed: {line:?}",
                    path.display(),
                    n + 1
                ))
            })
        })
        .collect::<CliResult<_>>()?;
    Ok((entries, complete))
}

/// Reads a ledger's charges (none if the file does not exist).
pub fn read_ledger(path: &Path) -> CliResult<Vec<LedgerEntry>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse_ledger(&bytes, path)?.0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).context(format_args!("reading ledger {}", path.display())),
    }
}

/// The ledger: an append-only file of applied charges, `<event-id> <amount-cents> <receipt>`,
/// the system of record of the charges. Opening it reads only its tail; [`Ledger::find`] and
/// [`Ledger::charged_events`] scan it when asked.
pub struct Ledger {
    file: File,
    path: PathBuf,
    /// Length of the complete lines written so far.
    len: u64,
    /// Lines staged for the next [`Ledger::commit`].
    staged: Vec<u8>,
}

/// The length of `file`'s complete lines: up to its last newline.
fn complete_len(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut end = len;
    let mut buf = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        buf.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl Ledger {
    /// Opens the ledger, cutting a torn last line left by a crash (that charge did not happen).
    pub fn open(path: &Path) -> CliResult<Ledger> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .context(format_args!("opening ledger {}", path.display()))?;
        let len = file
            .metadata()
            .and_then(|m| complete_len(&mut file, m.len()).map(|c| (c, m.len())))
            .context(format_args!("reading ledger {}", path.display()));
        let (complete, len) = len?;
        if complete < len {
            file.set_len(complete)
                .and_then(|()| file.sync_data())
                .context(format_args!("cutting the torn tail of {}", path.display()))?;
        }
        file.seek(SeekFrom::Start(complete))
            .context(format_args!("seeking in {}", path.display()))?;
        Ok(Ledger {
            file,
            path: path.to_path_buf(),
            len: complete,
            staged: Vec::new(),
        })
    }

    /// Calls `each(line number, event id, line)` for every committed line, in order; returns the
    /// number of lines.
    fn scan(&self, mut each: impl FnMut(&str, &str)) -> CliResult<u64> {
        let file = File::open(&self.path)
            .context(format_args!("reading ledger {}", self.path.display()))?;
        let mut reader = BufReader::with_capacity(256 << 10, file.take(self.len));
        let mut line = String::new();
        let mut lines = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .context(format_args!("reading ledger {}", self.path.display()))?;
            if read == 0 {
                return Ok(lines);
            }
            lines += 1;
            let text = line.trim_end_matches('\n');
            if parse_ledger_line(text).is_none() {
                return Err(CliError::new(format!(
                    "ledger {} line {lines} is malformed: {text:?}",
                    self.path.display()
                )));
            }
            let event_id = text.split(' ').next().unwrap_or_default();
            each(event_id, text);
        }
    }

    /// Looks the given event ids up in the ledger: the receipt of each one charged (its first
    /// charge), and the number of lines read. Holds only the events asked for.
    pub fn find<'k>(
        &self,
        event_ids: impl IntoIterator<Item = &'k [u8]>,
    ) -> CliResult<(HashMap<Vec<u8>, String>, u64)> {
        let wanted: HashSet<&[u8]> = event_ids.into_iter().collect();
        let mut found: HashMap<Vec<u8>, String> = HashMap::new();
        let lines = self.scan(|event_id, line| {
            if wanted.contains(event_id.as_bytes()) && !found.contains_key(event_id.as_bytes()) {
                let receipt = line.splitn(3, ' ').nth(2).unwrap_or_default();
                found.insert(event_id.as_bytes().to_vec(), receipt.to_string());
            }
        })?;
        Ok((found, lines))
    }

    /// Every event charged in the ledger (batch mode's reload).
    pub fn charged_events(&self) -> CliResult<HashSet<u32>> {
        let mut charged = HashSet::new();
        self.scan(|event_id, _| {
            charged.extend(parse_event_id(event_id));
        })?;
        Ok(charged)
    }

    /// Stages a charge; it is applied (durable) at the next [`Ledger::commit`].
    pub fn stage(&mut self, event_id: &str, amount_cents: u32, receipt: &str) {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(48);
        let _ = writeln!(line, "{event_id} {amount_cents} {receipt}");
        self.staged.extend_from_slice(line.as_bytes());
    }

    /// Appends the staged charges and fsyncs the file.
    pub fn commit(&mut self) -> CliResult<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.staged)
            .and_then(|()| self.file.sync_data())
            .context(format_args!("appending to ledger {}", self.path.display()))?;
        self.len += self.staged.len() as u64;
        self.staged.clear();
        Ok(())
    }
}

/// The receipt idem records with an event: what the charge was, by which process, in which
/// batch. `<amount>c/pid<pid>/b<seq>`.
pub fn receipt(amount_cents: u32, pid: u32, seq: u64) -> String {
    format!("{amount_cents}c/pid{pid}/b{seq}")
}

fn receipt_amount(receipt: &str) -> Option<u32> {
    receipt.split_once("c/")?.0.parse().ok()
}

/// The event index of each delivery, or an error naming a malformed event id.
fn parse_events(items: &[Delivery]) -> CliResult<Vec<u32>> {
    items
        .iter()
        .map(|item| {
            parse_event_id(&item.event_id).ok_or_else(|| {
                CliError::new(format!(
                    "delivery with a malformed event id {:?}",
                    item.event_id
                ))
            })
        })
        .collect()
}

fn receipts(items: &[Delivery], pid: u32, seq: u64) -> Vec<String> {
    items
        .iter()
        .map(|item| receipt(item.amount_cents, pid, seq))
        .collect()
}

/// Batch mode's items for `check_or_insert_batch`: each event id with its receipt as the value.
fn batch_items<'a>(
    items: &'a [Delivery],
    receipts: &'a [String],
    ttl: Duration,
) -> Vec<(&'a [u8], Duration, &'a [u8])> {
    items
        .iter()
        .zip(receipts)
        .map(|(item, r)| (item.event_id.as_bytes(), ttl, r.as_bytes()))
        .collect()
}

/// The naive consumer: stages a charge for every delivery.
fn stage_blindly(
    ledger: &mut Ledger,
    pid: u32,
    seq: u64,
    items: &[Delivery],
    report: &mut BatchReport,
) {
    for item in items {
        let receipt = receipt(item.amount_cents, pid, seq);
        ledger.stage(&item.event_id, item.amount_cents, &receipt);
        report.charged_blindly += 1;
    }
}

/// Batch mode's decision on idem's answers for `(deliveries, their events, their receipts)`:
/// stages a charge for each `Inserted`, and for each `Duplicate` whose charge is missing from the
/// ledger (idem recorded it, a crash came before the ledger got it) with the receipt idem kept.
fn stage_outcomes(
    ledger: &mut Ledger,
    charged: &mut HashSet<u32>,
    (items, events, receipts): (&[Delivery], &[u32], &[String]),
    outcomes: Vec<Outcome>,
    report: &mut BatchReport,
) -> CliResult<()> {
    for (((item, &event), outcome), fresh) in items.iter().zip(events).zip(outcomes).zip(receipts) {
        match outcome {
            Outcome::Inserted => {
                ledger.stage(&item.event_id, item.amount_cents, fresh);
                charged.insert(event);
                report.inserted += 1;
            }
            Outcome::Duplicate(_) if charged.contains(&event) => {
                report.duplicates += 1;
            }
            Outcome::Duplicate(recorded) => {
                // Recorded by idem, never applied: a crash came between the two.
                let recorded = String::from_utf8_lossy(&recorded).into_owned();
                let amount = receipt_amount(&recorded).ok_or_else(|| {
                    CliError::new(format!(
                        "idem holds receipt {recorded:?} for {}, not one this consumer wrote",
                        item.event_id
                    ))
                })?;
                ledger.stage(&item.event_id, amount, &recorded);
                charged.insert(event);
                report.in_doubt += 1;
            }
        }
    }
    Ok(())
}

/// How a consumer decides whether to charge.
pub enum Mode {
    /// Exactly once through idem's claims.
    Claims(Box<Claimer>),
    /// Exactly once through `check_or_insert_batch`, repaired with the ledger's event ids.
    Batch {
        store: Box<Store>,
        ttl: Duration,
        /// Every event in the ledger, loaded on start and kept up to date.
        charged: HashSet<u32>,
    },
    /// Exactly once through transactions: balances, dedup records and position in idem.
    State(Box<Balances>),
    /// Charge every delivery.
    Naive,
}

pub struct Consumer {
    pub mode: Mode,
    pub ledger: Ledger,
    pid: u32,
}

impl Consumer {
    pub fn new(mode: Mode, ledger: Ledger) -> Consumer {
        Consumer {
            mode,
            ledger,
            pid: std::process::id(),
        }
    }

    /// Charges one batch of deliveries, the first at channel offset `offset`; when it returns,
    /// every charge it decided on is in the ledger and fsynced (state mode: committed in idem and
    /// flushed), so the batch may be acknowledged.
    pub fn charge_batch(
        &mut self,
        seq: u64,
        offset: u64,
        items: &[Delivery],
    ) -> CliResult<BatchReport> {
        let late = |mode: &Mode| match mode {
            Mode::Claims(claimer) => claimer.store().metrics().decisions.late_duplicates,
            Mode::Batch { store, .. } => store.metrics().decisions.late_duplicates,
            Mode::State(_) | Mode::Naive => 0,
        };
        let before = late(&self.mode);
        let mut report = self.charge_batch_inner(seq, offset, items)?;
        report.late_duplicates = late(&self.mode) - before;
        Ok(report)
    }

    fn charge_batch_inner(
        &mut self,
        seq: u64,
        offset: u64,
        items: &[Delivery],
    ) -> CliResult<BatchReport> {
        let events = parse_events(items)?;
        let mut report = BatchReport::default();
        match &mut self.mode {
            Mode::Claims(claimer) => return claimer.charge_batch(&mut self.ledger, seq, items),
            Mode::State(balances) => return balances.apply_batch(seq, offset, items),
            Mode::Naive => stage_blindly(&mut self.ledger, self.pid, seq, items, &mut report),
            Mode::Batch {
                store,
                ttl,
                charged,
            } => {
                let receipts = receipts(items, self.pid, seq);
                let batch = batch_items(items, &receipts, *ttl);
                let started = Instant::now();
                let outcomes = store
                    .check_or_insert_batch(&batch)
                    .context(format_args!("idem check_or_insert_batch of batch {seq}"))?;
                report.commit_nanos = started.elapsed().as_nanos() as u64;
                let decided = (items, &events[..], &receipts[..]);
                stage_outcomes(&mut self.ledger, charged, decided, outcomes, &mut report)?;
            }
        }
        self.ledger.commit()?;
        Ok(report)
    }

    /// [`Consumer::charge_batch`] for the batch and naive modes on an async runtime, up to the
    /// ledger's fsync: idem's commit is awaited with `check_or_insert_batch_async` (the task
    /// parks, the thread does not wait for the fsync) and the charges are staged. The caller
    /// then commits the ledger ([`Ledger::commit`], a blocking fsync it keeps off the runtime's
    /// workers) before acknowledging the batch. Used by the NATS consumer (feature `nats`).
    #[cfg(feature = "nats")]
    pub async fn stage_batch_async(
        &mut self,
        seq: u64,
        items: &[Delivery],
    ) -> CliResult<BatchReport> {
        let events = parse_events(items)?;
        let mut report = BatchReport::default();
        match &mut self.mode {
            Mode::Naive => stage_blindly(&mut self.ledger, self.pid, seq, items, &mut report),
            Mode::Batch {
                store,
                ttl,
                charged,
            } => {
                let receipts = receipts(items, self.pid, seq);
                let batch = batch_items(items, &receipts, *ttl);
                let started = Instant::now();
                let outcomes = store
                    .check_or_insert_batch_async(&batch)
                    .await
                    .context(format_args!("idem check_or_insert_batch of batch {seq}"))?;
                report.commit_nanos = started.elapsed().as_nanos() as u64;
                let decided = (items, &events[..], &receipts[..]);
                stage_outcomes(&mut self.ledger, charged, decided, outcomes, &mut report)?;
            }
            Mode::Claims(_) | Mode::State(_) => {
                return Err(CliError::new(
                    "the async consumer runs the batch and naive modes only",
                ))
            }
        }
        Ok(report)
    }

    /// Ends the run: waits for the claims' completes, closes the store and returns its final
    /// counters (fsyncs, disk bytes, live keys).
    pub fn finish(self) -> CliResult<(u64, u64, u64)> {
        let stats = |store: &Store| {
            let stats = store.stats();
            (stats.fsyncs, stats.disk_bytes, stats.live_keys)
        };
        match self.mode {
            Mode::Claims(mut claimer) => {
                claimer.drain()?;
                let counters = stats(claimer.store());
                claimer.close()?;
                Ok(counters)
            }
            Mode::Batch { store, .. } => {
                let counters = stats(&store);
                store.close().context("closing the idem store")?;
                Ok(counters)
            }
            Mode::State(balances) => balances.finish(),
            Mode::Naive => Ok((0, 0, 0)),
        }
    }
}

/// Opens the consumer's store and ledger (reconciling the claims in doubt): the consumer, and
/// the ready message that says what it recovered.
pub fn open(args: &ConsumerArgs) -> CliResult<(Consumer, ToProducer)> {
    let started = Instant::now();
    let mut ledger = Ledger::open(&args.ledger)?;
    let mut reconciled = Reconciled::default();
    let mut ledger_lines_read = 0;
    let mut reconcile_micros = 0;
    let mut position = 0;
    let (mode, records_replayed, bytes_cut) = match &args.store {
        Some(dir) => {
            // Late duplicates are remembered for an hour past each key's TTL: `idem demo --ttl`
            // shorter than the channel's retry delay shows them.
            let config = Config::default()
                .durability(args.durability.0)
                .late_duplicate_grace(Duration::from_secs(3600));
            let store = Store::open_with(dir, config)
                .context(format_args!("opening idem store {}", dir.display()))?;
            let recovery = store.recovery_report();
            let replayed = recovery.records_replayed;
            let cut = recovery.truncated_tail.as_ref().map_or(0, |t| t.bytes_cut);
            let ttl = Duration::from_millis(args.ttl_ms.max(1));
            let mode = match args.mode {
                DedupMode::Claims => {
                    let lease = Duration::from_secs(args.lease_secs.max(1));
                    let threads = args.threads as usize;
                    let durability = args.durability.0;
                    let mut claimer = Claimer::start(store, durability, ttl, lease, threads)?;
                    let reconciling = Instant::now();
                    let (found, lines) = claimer.reconcile(&mut ledger)?;
                    (reconciled, ledger_lines_read) = (found, lines);
                    reconcile_micros = reconciling.elapsed().as_micros() as u64;
                    Mode::Claims(Box::new(claimer))
                }
                DedupMode::State => {
                    let balances = Balances::new(store, ttl);
                    position = balances.position()?;
                    Mode::State(Box::new(balances))
                }
                DedupMode::Batch => {
                    let charged = ledger.charged_events()?;
                    ledger_lines_read = charged.len() as u64;
                    Mode::Batch {
                        store: Box::new(store),
                        ttl,
                        charged,
                    }
                }
            };
            (mode, replayed, cut)
        }
        None => (Mode::Naive, 0, 0),
    };
    let ready = ToProducer::Ready {
        ledger_lines_read,
        records_replayed,
        bytes_cut,
        open_micros: started.elapsed().as_micros() as u64,
        reconcile_micros,
        reconciled,
        position,
    };
    Ok((Consumer::new(mode, ledger), ready))
}

/// Opens the consumer ([`open`]), then serves batches from `input` until `E` or end of input,
/// acknowledging each on `output`.
pub fn run(
    args: &ConsumerArgs,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> CliResult<()> {
    let (mut consumer, ready) = open(args)?;
    let write = |output: &mut _, message: &ToProducer| {
        protocol::write_to_producer(output, message).context("writing to the producer")
    };
    write(output, &ready)?;
    let mut line = String::new();
    loop {
        let message =
            protocol::read_to_consumer(input, &mut line).context("reading from the producer")?;
        match message {
            Some(ToConsumer::Batch { seq, offset, items }) => {
                let report = consumer.charge_batch(seq, offset, &items)?;
                write(output, &ToProducer::Ack { seq, report })?;
            }
            Some(ToConsumer::End) => break,
            // The producer went away without saying goodbye: stop, as after a crash.
            None => return Ok(()),
        }
    }
    let (fsyncs, disk_bytes, live_keys) = consumer.finish()?;
    write(
        output,
        &ToProducer::Summary {
            fsyncs,
            disk_bytes,
            live_keys,
        },
    )
}

pub fn main(args: &ConsumerArgs) -> CliResult<ExitCode> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    run(args, &mut stdin.lock(), &mut stdout.lock())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claimer::fingerprint;
    use crate::workload::event_id;
    use idem::{Claim, Durability};

    const TTL: Duration = Duration::from_secs(3600);
    const LEASE: Duration = Duration::from_secs(300);

    fn delivery(event: u32, amount_cents: u32) -> Delivery {
        Delivery {
            event_id: event_id(event),
            amount_cents,
            customer: event % 3,
        }
    }

    fn ledger_events(path: &Path) -> Vec<u32> {
        read_ledger(path).unwrap().iter().map(|e| e.event).collect()
    }

    /// A claims consumer on `store`, after reconciling what it finds in doubt.
    fn claims_on(store: Store, durability: Durability, dir: &Path) -> (Consumer, Reconciled) {
        let mut ledger = Ledger::open(&dir.join("ledger")).unwrap();
        let mut claimer = Claimer::start(store, durability, TTL, LEASE, 4).unwrap();
        let (reconciled, _) = claimer.reconcile(&mut ledger).unwrap();
        let consumer = Consumer::new(Mode::Claims(Box::new(claimer)), ledger);
        (consumer, reconciled)
    }

    fn claims(dir: &Path, durability: Durability) -> (Consumer, Reconciled) {
        let config = Config::default().durability(durability);
        let store = Store::open_with(dir.join("store"), config).unwrap();
        claims_on(store, durability, dir)
    }

    fn batch(dir: &Path) -> Consumer {
        let store = Box::new(Store::open(dir.join("store")).unwrap());
        let ledger = Ledger::open(&dir.join("ledger")).unwrap();
        let charged = ledger.charged_events().unwrap();
        Consumer::new(
            Mode::Batch {
                store,
                ttl: TTL,
                charged,
            },
            ledger,
        )
    }

    fn counts(r: &BatchReport) -> (u64, u64, u64) {
        (r.inserted, r.duplicates, r.in_doubt)
    }

    #[test]
    fn duplicates_are_charged_once_in_every_mode() {
        for mode in ["claims-sync", "claims-periodic", "batch"] {
            let dir = tempfile::tempdir().unwrap();
            let mut consumer = match mode {
                "claims-sync" => claims(dir.path(), Durability::Sync).0,
                "claims-periodic" => {
                    let periodic = Durability::Periodic(Duration::from_secs(3600));
                    claims(dir.path(), periodic).0
                }
                _ => batch(dir.path()),
            };
            // Event 1 twice in one batch: in claims mode the second claim answers InFlight and
            // is retried once the first is completed.
            let first = consumer
                .charge_batch(
                    0,
                    0,
                    &[delivery(1, 100), delivery(2, 200), delivery(1, 100)],
                )
                .unwrap();
            assert_eq!(counts(&first), (2, 1, 0), "{mode}");
            let again = consumer
                .charge_batch(1, 0, &[delivery(2, 200), delivery(3, 300)])
                .unwrap();
            assert_eq!(counts(&again), (1, 1, 0), "{mode}");
            if mode.starts_with("claims") {
                assert_eq!(first.retried, 1, "{mode}");
            }
            assert_eq!(consumer.finish().unwrap().2, 3, "{mode}: live keys");
            assert_eq!(
                ledger_events(&dir.path().join("ledger")),
                [1, 2, 3],
                "{mode}"
            );
        }
    }

    #[test]
    fn claims_in_doubt_are_reconciled_with_the_ledger_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger_path = dir.path().join("ledger");
        {
            // A consumer that dies with: event 1 done; event 2 claimed and charged, its complete
            // lost; event 3 claimed, not charged yet.
            let store = Store::open(dir.path().join("store")).unwrap();
            let mut ledger = Ledger::open(&ledger_path).unwrap();
            for (event, amount) in [(1, 100), (2, 250), (3, 300)] {
                let key = event_id(event);
                let Claim::Acquired(token) = store
                    .claim_fingerprinted(key.as_bytes(), LEASE, fingerprint(amount).as_bytes())
                    .unwrap()
                else {
                    panic!("fresh key")
                };
                if event <= 2 {
                    ledger.stage(&key, amount, &receipt(amount, 4242, 0));
                    ledger.commit().unwrap();
                }
                if event == 1 {
                    store.complete(token, TTL, b"100c/pid4242/b0").unwrap();
                }
            }
            drop(store); // as if killed: no close
        }
        let (mut consumer, reconciled) = claims(dir.path(), Durability::Sync);
        assert_eq!(
            reconciled,
            Reconciled {
                in_doubt: 2,
                in_ledger: 1,
                charged_now: 1,
                released: 0
            }
        );
        assert_eq!(ledger_events(&ledger_path), [1, 2, 3]);
        // The producer re-sends the unacknowledged deliveries: none is charged again.
        let report = consumer
            .charge_batch(
                1,
                0,
                &[delivery(2, 250), delivery(3, 300), delivery(1, 100)],
            )
            .unwrap();
        assert_eq!(counts(&report), (0, 3, 0));
        let report = consumer.charge_batch(2, 0, &[delivery(4, 400)]).unwrap();
        assert_eq!(counts(&report), (1, 0, 0));
        consumer.finish().unwrap();
        let ledger = std::fs::read_to_string(&ledger_path).unwrap();
        assert_eq!(ledger.lines().count(), 4, "{ledger}");
        assert!(ledger.contains("evt-0000000002 250 250c/pid4242/b0\n"));
        assert!(ledger.contains("evt-0000000003 300 300c/pid"), "{ledger}");
        // Reconciled claims are settled: a restart finds nothing in doubt, and idem answers
        // each event with the receipt of its one charge.
        let (consumer, reconciled) = claims(dir.path(), Durability::Sync);
        assert_eq!(reconciled, Reconciled::default());
        let Mode::Claims(claimer) = &consumer.mode else {
            unreachable!()
        };
        let receipt2 = claimer
            .store()
            .get(event_id(2).as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(receipt2, b"250c/pid4242/b0");
    }

    /// A store that is not `Sync` loses what it had not fsynced at a power loss; the claims of a
    /// batch must still be durable before its charges (the consumer flushes), or a re-sent
    /// batch would be charged again.
    #[test]
    fn claims_survive_a_power_loss_in_periodic_mode() {
        let dir = tempfile::tempdir().unwrap();
        let storage = idem::sim::SimStorage::new(7);
        let periodic = Durability::Periodic(Duration::from_secs(3600));
        let config = Config::default()
            .durability(periodic)
            .storage(storage.clone())
            .background_maintenance(false);
        let store = Store::open_with("/sim/store", config.clone()).unwrap();
        let (mut consumer, _) = claims_on(store, periodic, dir.path());
        let items: Vec<Delivery> = (0..20).map(|e| delivery(e, 100 + e)).collect();
        let report = consumer.charge_batch(0, 0, &items).unwrap();
        assert_eq!(report.inserted, 20);
        storage.crash(); // before the batch's completes were made durable
        drop(consumer);

        let store = Store::open_with("/sim/store", config).unwrap();
        let (mut consumer, reconciled) = claims_on(store, periodic, dir.path());
        // Every claim survived (in doubt unless its complete did too), and every one in doubt
        // is found in the ledger.
        assert!(reconciled.in_doubt > 0, "{reconciled:?}");
        assert_eq!(reconciled.in_ledger, reconciled.in_doubt, "{reconciled:?}");
        let report = consumer.charge_batch(0, 0, &items).unwrap();
        assert_eq!(counts(&report), (0, 20, 0));
        assert_eq!(read_ledger(&dir.path().join("ledger")).unwrap().len(), 20);
    }

    #[test]
    fn batch_mode_recovers_a_crash_between_commit_and_ledger_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut consumer = batch(dir.path());
            consumer.charge_batch(0, 0, &[delivery(1, 100)]).unwrap();
            // The crash window: idem committed batch 1, the process died before the ledger.
            let Mode::Batch { store, .. } = &consumer.mode else {
                unreachable!()
            };
            let r = receipt(250, 4242, 1);
            let items = [
                (event_id(2).into_bytes(), TTL, r.clone().into_bytes()),
                (event_id(3).into_bytes(), TTL, r.into_bytes()),
            ];
            store.check_or_insert_batch(&items).unwrap();
        }
        // Restart: the producer re-sends batch 1 (and 1 again).
        let mut consumer = batch(dir.path());
        let report = consumer
            .charge_batch(
                1,
                0,
                &[delivery(2, 250), delivery(3, 250), delivery(1, 100)],
            )
            .unwrap();
        assert_eq!(counts(&report), (0, 1, 2));
        // And a third delivery of the same is a plain duplicate.
        let report = consumer.charge_batch(2, 0, &[delivery(2, 250)]).unwrap();
        assert_eq!(counts(&report), (0, 1, 0));
        let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
        assert_eq!(ledger.lines().count(), 3);
        assert!(
            ledger.contains("evt-0000000002 250 250c/pid4242/b1\n"),
            "{ledger}"
        );
    }

    #[test]
    fn naive_charges_every_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("naive")).unwrap();
        let mut consumer = Consumer::new(Mode::Naive, ledger);
        let report = consumer
            .charge_batch(0, 0, &[delivery(1, 100), delivery(1, 100)])
            .unwrap();
        assert_eq!(report.charged_blindly, 2);
        assert_eq!(read_ledger(&dir.path().join("naive")).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_ledger_line_is_cut_and_lookups_read_only_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        std::fs::write(&path, "evt-0000000001 100 r1\nevt-0000000002 2").unwrap();
        assert_eq!(read_ledger(&path).unwrap().len(), 1);
        let mut ledger = Ledger::open(&path).unwrap();
        ledger.stage(&event_id(2), 200, "r2");
        ledger.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "evt-0000000001 100 r1\nevt-0000000002 200 r2\n"
        );
        let wanted = [event_id(2), event_id(9)];
        let (found, lines) = ledger.find(wanted.iter().map(|k| k.as_bytes())).unwrap();
        assert_eq!(lines, 2);
        assert_eq!(found.len(), 1);
        assert_eq!(found[event_id(2).as_bytes()], "r2");
        assert_eq!(ledger.charged_events().unwrap(), HashSet::from([1, 2]));
        // A ledger with no newline at all is one torn line.
        std::fs::write(&path, "evt-00000").unwrap();
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.find([]).unwrap().1, 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(read_ledger(&path).is_err());
        assert!(Ledger::open(&path).unwrap().find([]).is_err());
    }

    #[test]
    fn serves_the_protocol() {
        for mode in [DedupMode::Claims, DedupMode::Batch, DedupMode::State] {
            let dir = tempfile::tempdir().unwrap();
            let args = ConsumerArgs {
                ledger: dir.path().join("ledger"),
                store: Some(dir.path().join("store")),
                durability: "sync".parse().unwrap(),
                ttl_ms: 60_000,
                mode,
                threads: 3,
                lease_secs: 30,
            };
            let mut wire = Vec::new();
            let mut workload = crate::workload::generate(2, 0.0, 1);
            workload.amounts = vec![10, 20];
            workload.assign_customers(2, 1);
            protocol::write_batch(&mut wire, 0, 0, &[0, 1, 0], &workload).unwrap();
            protocol::write_end(&mut wire).unwrap();
            let mut out = Vec::new();
            run(&args, &mut &wire[..], &mut out).unwrap();
            let mut replies = &out[..];
            let mut next = || protocol::read_to_producer(&mut replies).unwrap().unwrap();
            assert!(matches!(
                next(),
                ToProducer::Ready {
                    ledger_lines_read: 0,
                    ..
                }
            ));
            let ToProducer::Ack { seq: 0, report } = next() else {
                panic!("no ack")
            };
            assert_eq!((report.inserted, report.duplicates), (2, 1));
            assert!(matches!(next(), ToProducer::Summary { live_keys: 2, .. }));
            // The arguments survive the trip through a command line.
            use clap::Parser;
            #[derive(Parser)]
            struct Wrap {
                #[command(flatten)]
                args: ConsumerArgs,
            }
            let argv = std::iter::once(OsString::from("x")).chain(args.to_argv());
            let back = Wrap::try_parse_from(argv).unwrap().args;
            assert_eq!(back.store, args.store);
            assert_eq!(back.ledger, args.ledger);
            assert_eq!(back.ttl_ms, 60_000);
            assert_eq!(back.mode, mode);
            assert_eq!((back.threads, back.lease_secs), (3, 30));
        }
    }
}

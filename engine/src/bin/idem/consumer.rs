//! The demo's consumer process (`idem demo-consumer`, hidden): reads batches of charge
//! deliveries on stdin, charges them into a ledger file, acknowledges each batch on stdout.
//!
//! With a store (`--store`), the consumer is exactly-once through idem; without one it is the
//! naive consumer that charges every delivery. [`Consumer::charge_batch`] holds the whole
//! protocol, so the way a batch is charged can change in one place.
//!
//! The exactly-once protocol, per batch:
//! 1. `check_or_insert_batch(event ids, ttl, receipts)`: one commit (one fsync in `Sync` mode);
//! 2. for each `Inserted`, append the charge to the ledger; then fsync the ledger;
//! 3. acknowledge the batch to the producer.
//!
//! A crash between 1 and 2 leaves charges that idem recorded but the ledger never got: on
//! redelivery idem answers `Duplicate` for them. So on start the consumer loads the ledger's
//! event ids, and a `Duplicate` for an event missing from the ledger is *in doubt*: it was
//! recorded and never applied, so the consumer applies it then, with the receipt idem kept.
//! That check is only sound with one consumer at a time on the ledger, as here.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use idem::{Config, Outcome, Store};

use crate::args::DurabilityArg;
use crate::cli_error::{CliError, CliResult, Context};
use crate::protocol::{self, BatchReport, Delivery, ToConsumer, ToProducer};
use crate::workload::parse_event_id;

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
    /// TTL of each idempotency key, in seconds (the retry window).
    #[arg(long, default_value_t = 86_400)]
    pub ttl_secs: u64,
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
        argv.push("--ttl-secs".into());
        argv.push(self.ttl_secs.to_string().into());
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

/// The ledger: an append-only file of applied charges, `<event-id> <amount-cents> <receipt>`.
pub struct Ledger {
    file: File,
    path: PathBuf,
    /// Events charged, loaded on open and kept up to date.
    charged: HashSet<u32>,
    /// Lines staged for the next [`Ledger::commit`].
    staged: Vec<u8>,
    entries: u64,
}

impl Ledger {
    /// Opens the ledger, cutting a torn last line left by a crash, and loads its event ids.
    pub fn open(path: &Path) -> CliResult<Ledger> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .context(format_args!("opening ledger {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .context(format_args!("reading ledger {}", path.display()))?;
        let (entries, complete) = parse_ledger(&bytes, path)?;
        if complete < bytes.len() {
            file.set_len(complete as u64)
                .and_then(|()| file.sync_data())
                .context(format_args!("cutting the torn tail of {}", path.display()))?;
        }
        file.seek(SeekFrom::Start(complete as u64))
            .context(format_args!("seeking in {}", path.display()))?;
        Ok(Ledger {
            file,
            path: path.to_path_buf(),
            charged: entries.iter().map(|e| e.event).collect(),
            staged: Vec::new(),
            entries: entries.len() as u64,
        })
    }

    pub fn contains(&self, event: u32) -> bool {
        self.charged.contains(&event)
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Stages a charge; it is applied (durable) at the next [`Ledger::commit`].
    pub fn stage(&mut self, event: u32, event_id: &str, amount_cents: u32, receipt: &str) {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(48);
        let _ = writeln!(line, "{event_id} {amount_cents} {receipt}");
        self.staged.extend_from_slice(line.as_bytes());
        self.charged.insert(event);
        self.entries += 1;
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

/// How a consumer decides whether to charge.
pub enum Mode {
    /// Exactly once through idem.
    Dedup { store: Box<Store>, ttl: Duration },
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

    /// Charges one batch of deliveries; when it returns, every charge it decided on is in the
    /// ledger and fsynced, so the batch may be acknowledged.
    pub fn charge_batch(&mut self, seq: u64, items: &[Delivery]) -> CliResult<BatchReport> {
        let mut report = BatchReport::default();
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            let event = parse_event_id(&item.event_id).ok_or_else(|| {
                CliError::new(format!(
                    "delivery with a malformed event id {:?}",
                    item.event_id
                ))
            })?;
            events.push(event);
        }
        match &self.mode {
            Mode::Naive => {
                for (item, &event) in items.iter().zip(&events) {
                    let receipt = receipt(item.amount_cents, self.pid, seq);
                    self.ledger
                        .stage(event, &item.event_id, item.amount_cents, &receipt);
                    report.charged_blindly += 1;
                }
            }
            Mode::Dedup { store, ttl } => {
                let receipts: Vec<String> = items
                    .iter()
                    .map(|item| receipt(item.amount_cents, self.pid, seq))
                    .collect();
                let batch: Vec<(&[u8], Duration, &[u8])> = items
                    .iter()
                    .zip(&receipts)
                    .map(|(item, r)| (item.event_id.as_bytes(), *ttl, r.as_bytes()))
                    .collect();
                let started = Instant::now();
                let outcomes = store
                    .check_or_insert_batch(&batch)
                    .context(format_args!("idem check_or_insert_batch of batch {seq}"))?;
                report.commit_nanos = started.elapsed().as_nanos() as u64;
                for (((item, &event), outcome), fresh) in
                    items.iter().zip(&events).zip(outcomes).zip(&receipts)
                {
                    match outcome {
                        Outcome::Inserted => {
                            self.ledger
                                .stage(event, &item.event_id, item.amount_cents, fresh);
                            report.inserted += 1;
                        }
                        Outcome::Duplicate(_) if self.ledger.contains(event) => {
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
                            self.ledger.stage(event, &item.event_id, amount, &recorded);
                            report.in_doubt += 1;
                        }
                    }
                }
            }
        }
        self.ledger.commit()?;
        Ok(report)
    }
}

/// Opens the consumer's store and ledger, then serves batches from `input` until `E` or end of
/// input, acknowledging each on `output`.
pub fn run(
    args: &ConsumerArgs,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> CliResult<()> {
    let started = Instant::now();
    let ledger = Ledger::open(&args.ledger)?;
    let (mode, records_replayed, bytes_cut) = match &args.store {
        Some(dir) => {
            let config = Config::default().durability(args.durability.0);
            let store = Store::open_with(dir, config)
                .context(format_args!("opening idem store {}", dir.display()))?;
            let recovery = store.recovery_report();
            let replayed = recovery.records_replayed;
            let cut = recovery.truncated_tail.as_ref().map_or(0, |t| t.bytes_cut);
            let ttl = Duration::from_secs(args.ttl_secs.max(1));
            (
                Mode::Dedup {
                    store: Box::new(store),
                    ttl,
                },
                replayed,
                cut,
            )
        }
        None => (Mode::Naive, 0, 0),
    };
    let mut consumer = Consumer::new(mode, ledger);
    let write = |output: &mut _, message: &ToProducer| {
        protocol::write_to_producer(output, message).context("writing to the producer")
    };
    write(
        output,
        &ToProducer::Ready {
            ledger_entries: consumer.ledger.entries(),
            records_replayed,
            bytes_cut,
            open_micros: started.elapsed().as_micros() as u64,
        },
    )?;
    let mut line = String::new();
    loop {
        let message =
            protocol::read_to_consumer(input, &mut line).context("reading from the producer")?;
        match message {
            Some(ToConsumer::Batch { seq, items }) => {
                let report = consumer.charge_batch(seq, &items)?;
                write(output, &ToProducer::Ack { seq, report })?;
            }
            Some(ToConsumer::End) => break,
            // The producer went away without saying goodbye: stop, as after a crash.
            None => return Ok(()),
        }
    }
    let (fsyncs, disk_bytes, live_keys) = match consumer.mode {
        Mode::Dedup { store, .. } => {
            let stats = store.stats();
            store.close().context("closing the idem store")?;
            (stats.fsyncs, stats.disk_bytes, stats.live_keys)
        }
        Mode::Naive => (0, 0, 0),
    };
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
    use crate::workload::event_id;

    fn delivery(event: u32, amount_cents: u32) -> Delivery {
        Delivery {
            event_id: event_id(event),
            amount_cents,
        }
    }

    fn dedup(dir: &Path) -> Consumer {
        let store = Box::new(Store::open(dir.join("store")).unwrap());
        let ledger = Ledger::open(&dir.join("ledger")).unwrap();
        Consumer::new(
            Mode::Dedup {
                store,
                ttl: Duration::from_secs(3600),
            },
            ledger,
        )
    }

    #[test]
    fn duplicates_are_charged_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut consumer = dedup(dir.path());
        let first = consumer
            .charge_batch(0, &[delivery(1, 100), delivery(2, 200), delivery(1, 100)])
            .unwrap();
        assert_eq!(
            (first.inserted, first.duplicates, first.in_doubt),
            (2, 1, 0)
        );
        let again = consumer
            .charge_batch(1, &[delivery(2, 200), delivery(3, 300)])
            .unwrap();
        assert_eq!(
            (again.inserted, again.duplicates, again.in_doubt),
            (1, 1, 0)
        );
        let ledger = read_ledger(&dir.path().join("ledger")).unwrap();
        let events: Vec<u32> = ledger.iter().map(|e| e.event).collect();
        assert_eq!(events, [1, 2, 3]);
    }

    #[test]
    fn a_crash_between_commit_and_ledger_is_recovered_once() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        {
            let mut consumer = dedup(dir.path());
            consumer.charge_batch(0, &[delivery(1, 100)]).unwrap();
            // The crash window: idem committed batch 1, the process died before the ledger.
            let Mode::Dedup { store, .. } = &consumer.mode else {
                unreachable!()
            };
            let r = receipt(250, 4242, 1);
            let items = [
                (event_id(2).into_bytes(), ttl, r.clone().into_bytes()),
                (event_id(3).into_bytes(), ttl, r.into_bytes()),
            ];
            store.check_or_insert_batch(&items).unwrap();
        }
        // Restart: the producer re-sends batch 1 (and 1 again).
        let mut consumer = dedup(dir.path());
        assert_eq!(consumer.ledger.entries(), 1);
        let report = consumer
            .charge_batch(1, &[delivery(2, 250), delivery(3, 250), delivery(1, 100)])
            .unwrap();
        assert_eq!(
            (report.inserted, report.duplicates, report.in_doubt),
            (0, 1, 2)
        );
        // And a third delivery of the same is a plain duplicate.
        let report = consumer.charge_batch(2, &[delivery(2, 250)]).unwrap();
        assert_eq!(
            (report.inserted, report.duplicates, report.in_doubt),
            (0, 1, 0)
        );
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
            .charge_batch(0, &[delivery(1, 100), delivery(1, 100)])
            .unwrap();
        assert_eq!(report.charged_blindly, 2);
        assert_eq!(read_ledger(&dir.path().join("naive")).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_ledger_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        std::fs::write(&path, "evt-0000000001 100 r\nevt-0000000002 2").unwrap();
        assert_eq!(read_ledger(&path).unwrap().len(), 1);
        let mut ledger = Ledger::open(&path).unwrap();
        assert!(ledger.contains(1) && !ledger.contains(2));
        ledger.stage(2, &event_id(2), 200, "r");
        ledger.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "evt-0000000001 100 r\nevt-0000000002 200 r\n"
        );
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(read_ledger(&path).is_err());
    }

    #[test]
    fn serves_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let args = ConsumerArgs {
            ledger: dir.path().join("ledger"),
            store: Some(dir.path().join("store")),
            durability: "sync".parse().unwrap(),
            ttl_secs: 60,
        };
        let mut wire = Vec::new();
        protocol::write_batch(&mut wire, 0, &[0, 1, 0], &[10, 20]).unwrap();
        protocol::write_end(&mut wire).unwrap();
        let mut out = Vec::new();
        run(&args, &mut &wire[..], &mut out).unwrap();
        let mut replies = &out[..];
        let mut next = || protocol::read_to_producer(&mut replies).unwrap().unwrap();
        assert!(matches!(
            next(),
            ToProducer::Ready {
                ledger_entries: 0,
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
        assert_eq!(back.ttl_secs, 60);
    }
}

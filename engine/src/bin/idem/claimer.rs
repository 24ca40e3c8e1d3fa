//! The exactly-once consumer through idem's durable claims (`--mode claims`, the default).
//!
//! Per batch of deliveries:
//! 1. `claim(event id, lease)` for every delivery;
//! 2. the claims are made durable before any charge: in `Sync` mode each claim returned durable
//!    (and the claims run on a pool of worker threads, so that concurrent claims share fsyncs:
//!    the pool's size is about the number of claims per fsync); in the other modes claims return
//!    at once, on the calling thread, and one `flush` makes all of the batch's durable;
//! 3. for each `Acquired`, append the charge to the ledger; then fsync the ledger once;
//! 4. `complete(token, ttl, receipt)` for each charge, without waiting for it to be durable (in
//!    `Sync` mode on the pool: the completes of batch N run while batch N+1 is claimed);
//! 5. a delivery answered `InFlight` (a claim of this process not completed yet: the same event
//!    twice in a batch, or a re-send right behind its first delivery) is retried once the
//!    completes in flight are done; it then answers `Duplicate`;
//! 6. acknowledge the batch.
//!
//! The batch may be acknowledged before its completes are durable: its charges are in the ledger
//! and its claims are durable, so a crash leaves them *in doubt*, and the next consumer
//! reconciles them ([`Claimer::reconcile`]): `in_doubt()` lists them, the ledger (the system of
//! record of the charge) is scanned for those events only, and each claim is completed with the
//! ledger's receipt if its charge is there, or charged now and completed if not. The amount to
//! charge travels in the claim's request fingerprint (`amount=<cents>`), which also makes idem
//! refuse a re-sent event id with another amount.
//!
//! The lease must outlast a crash and restart: an in-doubt claim whose lease ends before the next
//! consumer reconciles it frees its key, and a re-send would then be charged again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use idem::{Claim, ClaimToken, Durability, Store};
use parking_lot::Mutex;

use crate::cli_error::{CliError, CliResult, Context};
use crate::consumer::{receipt, Ledger};
use crate::protocol::{BatchReport, Delivery, Reconciled};

/// The request fingerprint of a charge: its amount, so an in-doubt claim says what to charge.
pub fn fingerprint(amount_cents: u32) -> String {
    format!("amount={amount_cents}")
}

fn fingerprint_amount(fingerprint: &[u8]) -> Option<u32> {
    std::str::from_utf8(fingerprint)
        .ok()?
        .strip_prefix("amount=")?
        .parse()
        .ok()
}

/// The answers to one [`Claimer::claim_all`]: filled in by the workers; the last one to answer
/// wakes the caller (once per call, not once per claim).
struct Answers {
    slots: Mutex<Vec<Option<CliResult<Claim>>>>,
    remaining: AtomicUsize,
    done: Sender<()>,
}

impl Answers {
    fn put(&self, index: usize, answer: CliResult<Claim>) {
        self.slots.lock()[index] = Some(answer);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.done.send(());
        }
    }
}

enum Job {
    Claim {
        index: usize,
        key: String,
        fingerprint: String,
        answers: Arc<Answers>,
    },
    Complete {
        token: ClaimToken,
        receipt: String,
    },
}

/// A store shared with a pool of threads that make claims and completes.
pub struct Claimer {
    store: Arc<Store>,
    ttl: Duration,
    lease: Duration,
    /// `Sync` durability: every claim and complete waits for its fsync, so they run on the pool.
    /// Otherwise they run inline and [`Claimer::make_durable`] flushes before charges.
    sync: bool,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// The outcome of each complete, as `Err(message)` on failure.
    completed: Receiver<Result<(), String>>,
    /// Completes submitted and not yet collected from `completed`.
    pending_completes: usize,
    pid: u32,
}

impl Claimer {
    /// Starts `threads` worker threads on `store`, opened with `durability`. In a mode other
    /// than `Sync` claims return at once, so they are made on the calling thread (no pool), and
    /// the store is flushed before each batch's charges instead.
    pub fn start(
        store: Store,
        durability: Durability,
        ttl: Duration,
        lease: Duration,
        threads: usize,
    ) -> CliResult<Self> {
        let store = Arc::new(store);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (done, completed) = crossbeam_channel::unbounded();
        let sync = durability == Durability::Sync;
        let threads = if sync { threads.max(1) } else { 0 };
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let (store, queue, done) = (Arc::clone(&store), queue.clone(), done.clone());
            let worker = std::thread::Builder::new()
                .name(format!("claimer-{n}"))
                .stack_size(256 << 10)
                .spawn(move || work(&store, ttl, lease, &queue, &done))
                .context("starting a claimer thread")?;
            workers.push(worker);
        }
        Ok(Claimer {
            store,
            ttl,
            lease,
            sync,
            jobs: Some(jobs),
            workers,
            completed,
            pending_completes: 0,
            pid: std::process::id(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn send(&self, job: Job) -> CliResult<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| CliError::new("the claimer threads are gone"))
    }

    /// Claims every `(event id, amount)` at once on the pool; the answers come back in order.
    fn claim_all<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (&'a str, u32)>,
    ) -> CliResult<Vec<Claim>> {
        let n = items.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.workers.is_empty() {
            return items
                .map(|(key, amount)| {
                    let fingerprint = fingerprint(amount);
                    self.store
                        .claim_fingerprinted(key.as_bytes(), self.lease, fingerprint.as_bytes())
                        .context(format_args!("idem claim of {key}"))
                })
                .collect();
        }
        let (done, finished) = crossbeam_channel::bounded(1);
        let answers = Arc::new(Answers {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            done,
        });
        for (index, (key, amount)) in items.enumerate() {
            self.send(Job::Claim {
                index,
                key: key.to_string(),
                fingerprint: fingerprint(amount),
                answers: Arc::clone(&answers),
            })?;
        }
        finished
            .recv()
            .map_err(|_| CliError::new("a claimer thread died"))?;
        let slots = std::mem::take(&mut *answers.slots.lock());
        slots
            .into_iter()
            .map(|answer| answer.expect("every claim answered"))
            .collect()
    }

    /// Hands completes to the pool without waiting for them.
    fn complete_later(&mut self, charged: Vec<(ClaimToken, String)>) -> CliResult<()> {
        if self.workers.is_empty() {
            for (token, receipt) in charged {
                let key = String::from_utf8_lossy(token.key()).into_owned();
                self.store
                    .complete(token, self.ttl, receipt.as_bytes())
                    .context(format_args!("idem complete of {key}"))?;
            }
            return Ok(());
        }
        for (token, receipt) in charged {
            self.send(Job::Complete { token, receipt })?;
            self.pending_completes += 1;
        }
        self.collect_completes(false)
    }

    /// Collects the outcomes of the completes handed to the pool: all of them if `wait`, else
    /// those already done. Fails on the first failed complete.
    fn collect_completes(&mut self, wait: bool) -> CliResult<()> {
        while self.pending_completes > 0 {
            let outcome = if wait {
                self.completed
                    .recv()
                    .map_err(|_| CliError::new("a claimer thread died"))?
            } else {
                match self.completed.try_recv() {
                    Ok(outcome) => outcome,
                    Err(_) => return Ok(()),
                }
            };
            self.pending_completes -= 1;
            outcome.map_err(|e| CliError::new(format!("idem complete: {e}")))?;
        }
        Ok(())
    }

    /// Waits until every complete handed to the pool is done (and durable in `Sync` mode).
    pub fn drain(&mut self) -> CliResult<()> {
        self.collect_completes(true)
    }

    /// Makes the claims acquired so far durable before their side effect: a no-op in `Sync`
    /// mode (each claim returned durable), a flush otherwise. Without it a kill -9 could lose a
    /// claim (and the complete after it) whose charge is in the ledger, and the re-sent delivery
    /// would be charged again.
    fn make_durable(&self) -> CliResult<()> {
        if self.sync {
            return Ok(());
        }
        self.store
            .flush()
            .context("idem flush of the claims before their charges")
    }

    /// Charges one batch (see the module documentation); when it returns, every charge it made
    /// is in the ledger and fsynced and every delivery was answered `Acquired` or `Duplicate`.
    pub fn charge_batch(
        &mut self,
        ledger: &mut Ledger,
        seq: u64,
        items: &[Delivery],
    ) -> CliResult<BatchReport> {
        let mut report = BatchReport::default();
        let started = Instant::now();
        let answers = self.claim_all(
            items
                .iter()
                .map(|item| (item.event_id.as_str(), item.amount_cents)),
        )?;
        report.commit_nanos = started.elapsed().as_nanos() as u64;
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut answers = answers;
        let mut round = 0u32;
        loop {
            let mut charged = Vec::new();
            let mut in_flight = Vec::new();
            let mut until = None;
            for (&index, answer) in pending.iter().zip(answers) {
                let item = &items[index];
                match answer {
                    Claim::Acquired(token) => {
                        let receipt = receipt(item.amount_cents, self.pid, seq);
                        ledger.stage(&item.event_id, item.amount_cents, &receipt);
                        charged.push((token, receipt));
                        report.inserted += 1;
                    }
                    Claim::Duplicate(_) => report.duplicates += 1,
                    Claim::InFlight {
                        until: holder_until,
                    } => {
                        in_flight.push(index);
                        until = until.max(Some(holder_until));
                    }
                }
            }
            // The claims are durable before their charges, and the charges durable in the ledger
            // before their claims are completed.
            if !charged.is_empty() {
                self.make_durable()?;
            }
            ledger.commit()?;
            self.complete_later(charged)?;
            if in_flight.is_empty() {
                return Ok(report);
            }
            // Their holder is almost always this process's own claim, completed by the pool:
            // wait for the completes in flight, then ask again.
            if round == 0 {
                report.retried += in_flight.len() as u64;
            }
            self.drain()?;
            if round > 0 {
                // Still in flight with nothing of ours pending: another holder's claim. Wait a
                // little (at most until its lease ends) and ask again.
                let wait = until
                    .and_then(|u| u.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                std::thread::sleep(wait.min(Duration::from_millis(20)));
            }
            answers = self.claim_all(
                in_flight
                    .iter()
                    .map(|&i| (items[i].event_id.as_str(), items[i].amount_cents)),
            )?;
            pending = in_flight;
            round += 1;
        }
    }

    /// Reconciles the claims a crashed consumer left open, against the ledger: each one whose
    /// charge is in the ledger is completed with the ledger's receipt; each one whose charge is
    /// not is charged now (amount from its fingerprint), then completed.
    /// Returns what it found and the number of ledger lines it read (none if nothing was in
    /// doubt).
    pub fn reconcile(&mut self, ledger: &mut Ledger) -> CliResult<(Reconciled, u64)> {
        let tokens = self.store.in_doubt().context("idem in_doubt")?;
        let mut report = Reconciled {
            in_doubt: tokens.len() as u64,
            ..Reconciled::default()
        };
        if tokens.is_empty() {
            return Ok((report, 0));
        }
        let (found, scanned) = ledger.find(tokens.iter().map(ClaimToken::key))?;
        let mut completes = Vec::with_capacity(tokens.len());
        let mut releases = Vec::new();
        for token in tokens {
            if let Some(receipt) = found.get(token.key()) {
                report.in_ledger += 1;
                completes.push((token, receipt.clone()));
                continue;
            }
            let event_id = std::str::from_utf8(token.key()).ok();
            match (event_id, fingerprint_amount(token.fingerprint())) {
                (Some(event_id), Some(amount)) => {
                    let receipt = format!("{amount}c/pid{}/reconciled", self.pid);
                    ledger.stage(event_id, amount, &receipt);
                    report.charged_now += 1;
                    completes.push((token, receipt));
                }
                // Nothing says what to charge: give the key back to the re-sent delivery.
                _ => releases.push(token),
            }
        }
        ledger.commit()?;
        self.complete_later(completes)?;
        self.drain()?;
        for token in releases {
            self.store.release(token).context("idem release")?;
            report.released += 1;
        }
        Ok((report, scanned))
    }

    /// Waits for the completes in flight, stops the pool and closes the store.
    pub fn close(mut self) -> CliResult<()> {
        self.drain()?;
        let store = Arc::clone(&self.store);
        drop(self); // stops and joins the workers, which hold the other references
        match Arc::try_unwrap(store) {
            Ok(store) => store.close().context("closing the idem store"),
            Err(_) => Err(CliError::new("the idem store is still shared")),
        }
    }

    fn stop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Claimer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn work(
    store: &Store,
    ttl: Duration,
    lease: Duration,
    queue: &Receiver<Job>,
    done: &Sender<Result<(), String>>,
) {
    for job in queue {
        match job {
            Job::Claim {
                index,
                key,
                fingerprint,
                answers,
            } => {
                // A panic must still answer, or the caller would wait forever.
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.claim_fingerprinted(key.as_bytes(), lease, fingerprint.as_bytes())
                }));
                let answer = match answer {
                    Ok(answer) => answer.context(format_args!("idem claim of {key}")),
                    Err(_) => Err(CliError::new(format!("idem claim of {key} panicked"))),
                };
                answers.put(index, answer);
            }
            Job::Complete { token, receipt } => {
                let key = String::from_utf8_lossy(token.key()).into_owned();
                let outcome = store
                    .complete(token, ttl, receipt.as_bytes())
                    .map_err(|e| format!("{key}: {e}"));
                let _ = done.send(outcome);
            }
        }
    }
}

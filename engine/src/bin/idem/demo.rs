//! `idem demo`: the producer's side of the double-charge incident, run end to end.
//!
//! The parent process is the producer and its at-least-once channel ([`crate::workload`]). It
//! spawns the consumer as a real child process (`idem demo-consumer`), streams batches of
//! deliveries to its stdin with a few batches in flight, and counts a batch delivered only when
//! the consumer acknowledges it on stdout. At `--kill-at` of the deliveries it kills the consumer
//! with SIGKILL, starts a new one (which first reconciles the claims the killed one left in
//! doubt), and re-sends every batch not acknowledged. At the end it reads the ledger and counts
//! double and lost charges. Then it runs the same workload through the naive
//! consumer (no idem) for contrast.
//!
//! With `--mode state` the consumer keeps a balance per customer in idem instead of a ledger,
//! changed in one transaction with the event's dedup record and the channel position
//! ([`crate::balances`]); after the kill the producer re-sends from the position the new consumer
//! found committed, not from the acknowledgements. At the end the demo opens the store itself
//! and checks every balance against the sum of its customer's events, each counted once; the
//! naive run's balances are summed from its ledger.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::args::{parse_duration, parse_fraction, parse_open_fraction, DurabilityArg};
use crate::balances::{read_balance, Balance, CHANNEL};
use crate::cli_error::{CliError, CliResult, Context};
use crate::consumer::{read_ledger, ConsumerArgs, DedupMode, LedgerEntry};
use crate::fmt;
use crate::hist::Histogram;
use crate::protocol::{self, BatchReport, Reconciled, ToProducer};
use crate::workload::{self, Workload};

pub const LONG_ABOUT: &str = "\
Run the problem idem exists for, end to end, on this machine.

A producer emits charge events over an at-least-once channel that retries: a network blip makes a \
slice of the events arrive twice or more (--dup-rate, default 0.2%, as in the incident where 0.2% \
of charge events arrived twice and customers were double-charged), plus scattered late retries. A \
consumer process charges each event through idem's durable claims into a ledger file (--mode \
claims): claim the event's key (durable before the charge), append the charge to the ledger (one \
fsync per batch), complete the claim with the charge's receipt, acknowledge the batch. A duplicate \
delivery's claim answers Duplicate with that receipt and is not charged. Midway (--kill-at) the \
consumer is killed with SIGKILL and restarted; the new consumer first reconciles the claims left in \
doubt (claimed, maybe charged, not completed) against the ledger, the system of record of the \
charges, and the producer re-sends everything not acknowledged.

Claims are single-key calls. By default the store runs with periodic durability and the consumer \
flushes it once per batch, after the batch's claims and before their charges: one fsync makes the \
whole batch's claims durable. With --durability sync every claim and complete waits for an fsync \
of its own (--threads of them at a time share fsyncs): two waits per event, several times slower. \
--mode batch uses one check_or_insert_batch per batch instead (sync by default; a crash between \
it and the ledger leaves charges that only a reload of the whole ledger can find).

At the end the ledger is checked: every event must be charged exactly once (no double charge, no \
lost charge). The same run without idem (a consumer that charges every delivery) shows what the \
duplicates cost. Exit status 1 if the run with idem double-charged or lost anything.

--mode state keeps the consumer's state in idem: a balance per customer (--customers), changed \
in one transaction per delivery with the event's dedup record and the channel position \
(check_or_insert, get_state + put_state if Inserted, set_position, commit; retried on Conflict). \
After the SIGKILL the new consumer reads the committed position and the producer re-sends from \
there. At the end every balance is checked against the sum of its customer's events, each counted \
once, next to the balances of the run without idem. --json prints one JSON object instead of \
the report.";

/// Which channel carries the deliveries (`--broker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// The demo's own at-least-once channel: batches over the consumer's stdin.
    Pipe,
    /// A NATS JetStream stream read by a durable pull consumer (an idem built with the `nats`
    /// feature).
    Nats,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Broker::Pipe => "pipe",
            Broker::Nats => "nats",
        })
    }
}

/// Batches the producer has in flight before it waits for an acknowledgement.
const WINDOW: usize = 4;
/// The lease of each claim: longer than a crash and restart of the consumer.
pub const LEASE_SECS: u64 = 300;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of charge events the producer emits.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub events: u32,
    /// Fraction of events the channel delivers more than once (0.002 or 0.2%).
    #[arg(long, default_value = "0.002", value_parser = parse_fraction)]
    pub dup_rate: f64,
    /// Durability of the consumer's idem store: sync, periodic-MS (e.g. periodic-10) or never.
    /// Default: periodic-10 with --mode claims (the consumer flushes a batch's claims before
    /// charging them: one fsync per batch instead of one per claim), sync with --mode batch.
    #[arg(long)]
    pub durability: Option<DurabilityArg>,
    /// Directory for the store and the ledgers (must be empty or absent; kept afterwards).
    /// Default: a temporary directory, removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Deliveries per batch (one ledger fsync each; in batch mode also one idem commit).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// How the consumer uses idem: claims (claim, charge, complete per delivery), batch (one
    /// check_or_insert_batch per batch) or state (balances in idem, one transaction per
    /// delivery with the dedup record and the channel position).
    #[arg(long, default_value_t = DedupMode::Claims)]
    pub mode: DedupMode,
    /// State mode: the number of customers the events are spread over (one balance each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub customers: u32,
    /// Claims mode with --durability sync: consumer threads making claims at once (each waits
    /// for an fsync; concurrent ones share it).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: u32,
    /// When to kill the consumer: after this fraction of the deliveries is acknowledged.
    #[arg(long, default_value = "0.5", value_parser = parse_open_fraction)]
    pub kill_at: f64,
    /// Do not kill the consumer.
    #[arg(long)]
    pub no_kill: bool,
    /// Skip the contrast run without idem.
    #[arg(long)]
    pub no_naive: bool,
    /// TTL of each event's idempotency key (default 24h: longer than any retry window). Set it
    /// shorter than the channel's retry delay (its retries come up to 5,000 deliveries later,
    /// tens of milliseconds: try --ttl 1ms) to see keys expire before their retry: double
    /// charges, and idem's late-duplicate count naming the cause.
    #[arg(long, default_value = "24h", value_parser = crate::args::parse_duration)]
    pub ttl: Duration,
    /// Seed of the workload (amounts, which events are duplicated) and of the kill's timing.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// No progress bar or progress lines; only the report.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON object instead of the report (implies --quiet).
    #[arg(long)]
    pub json: bool,
    /// The channel: pipe (the demo's own, batches over the consumer's stdin) or nats (a
    /// JetStream stream read by a durable pull consumer with explicit acks; needs an idem built
    /// with `--features nats`, and `nats-server` on the PATH unless --nats-url is given).
    #[arg(long, value_enum, default_value_t = Broker::Pipe)]
    pub broker: Broker,
    /// With --broker nats: the server to use, e.g. nats://127.0.0.1:4222 (JetStream enabled).
    /// Default: the demo starts `nats-server -js` on a free loopback port with a scratch store
    /// and stops it at the end.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// With --broker nats: how long JetStream waits for a message's ack before redelivering it.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// With --broker nats: the scale-out run (feature `nats`): a 3-node nats-server cluster on
    /// loopback, --nodes consumer node processes sharing --partitions partitions, each partition
    /// replicated through a JetStream changelog; one node and one server are killed with SIGKILL
    /// midway and the node's partitions fail over to the others.
    #[arg(long)]
    pub replicate: bool,
    /// With --replicate: partitions of the input (one idem store and one changelog subject each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// With --replicate: consumer node processes (at least 2: one is killed).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub nodes: u32,
}

/// How the demo starts a consumer process.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// `<exe> demo-consumer <args>`: the idem binary itself.
    Subcommand(PathBuf),
    /// A test harness running one test that serves as the consumer; the consumer's arguments
    /// go in the environment variable `env`, one per line (parsed back with [`parse_args`]).
    #[cfg(test)]
    TestHarness {
        exe: PathBuf,
        test: &'static str,
        env: &'static str,
    },
}

impl Launcher {
    pub fn this_executable() -> CliResult<Launcher> {
        let exe = std::env::current_exe().context("finding the idem executable")?;
        Ok(Launcher::Subcommand(exe))
    }

    fn spawn(&self, args: &ConsumerArgs) -> CliResult<ConsumerProcess> {
        self.spawn_argv("demo-consumer", args.to_argv())
    }

    /// Starts `<exe> <subcommand> <argv>` (the test harness: its test with `argv` in the
    /// environment) with piped stdin and stdout.
    pub fn spawn_argv(
        &self,
        subcommand: &str,
        argv: Vec<std::ffi::OsString>,
    ) -> CliResult<ConsumerProcess> {
        let mut command = match self {
            Launcher::Subcommand(exe) => {
                let mut command = Command::new(exe);
                command.arg(subcommand).args(argv);
                command
            }
            #[cfg(test)]
            Launcher::TestHarness { exe, test, env } => {
                let _ = subcommand;
                let mut lines = Vec::new();
                for arg in argv {
                    lines.push(arg.into_string().map_err(|a| {
                        CliError::new(format!("non-UTF-8 consumer argument {a:?}"))
                    })?);
                }
                let mut command = Command::new(exe);
                command
                    .args([*test, "--exact", "--nocapture", "--test-threads=1", "-q"])
                    .env(env, lines.join("\n"));
                command
            }
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("starting the consumer process")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok(ConsumerProcess {
            child,
            stdin: BufWriter::with_capacity(64 << 10, stdin),
            stdout: BufReader::new(stdout),
        })
    }
}

/// A consumer process and its pipes.
pub struct ConsumerProcess {
    pub child: Child,
    pub stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ConsumerProcess {
    /// Turns a failure to talk to the consumer into an error that says how it ended.
    pub fn failed(&mut self, what: impl std::fmt::Display) -> CliError {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited with {status}"),
            Ok(None) => "it is still running".to_string(),
            Err(e) => format!("its status is unknown: {e}"),
        };
        CliError::new(format!("consumer process: {what} ({status})"))
    }

    pub fn read(&mut self) -> CliResult<ToProducer> {
        match protocol::read_to_producer(&mut self.stdout) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => {
                let _ = self.child.wait();
                Err(self.failed("closed its output unexpectedly"))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    pub fn wait_ready(&mut self, spawned: Instant) -> CliResult<Ready> {
        match self.read()? {
            ToProducer::Ready {
                ledger_lines_read,
                records_replayed,
                bytes_cut,
                open_micros,
                reconcile_micros,
                reconciled,
                position,
            } => Ok(Ready {
                ledger_lines_read,
                records_replayed,
                bytes_cut,
                open: Duration::from_micros(open_micros),
                reconcile: Duration::from_micros(reconcile_micros),
                spawn_to_ready: spawned.elapsed(),
                reconciled,
                position,
            }),
            other => Err(self.failed(format!("expected ready, got {other:?}"))),
        }
    }

    /// Kills the consumer somewhere inside its next batch's work: at a random moment within
    /// `batch_time` (one batch's time) from now.
    pub fn kill_within(self, batch_time: Duration, rng: &mut StdRng) -> CliResult<()> {
        let nanos = batch_time.as_nanos() as u64;
        std::thread::sleep(Duration::from_nanos(rng.gen_range(0..=nanos)));
        self.kill()
    }

    pub fn kill(mut self) -> CliResult<()> {
        // SIGKILL: no destructor, no flush, no goodbye.
        self.child.kill().context("killing the consumer process")?;
        self.child.wait().context("reaping the consumer process")?;
        Ok(())
    }
}

/// A consumer that came up: what it recovered and how long that took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Ledger lines read on start: to reconcile the claims in doubt (claims mode), or the whole
    /// ledger (batch mode).
    pub ledger_lines_read: u64,
    pub records_replayed: u64,
    pub bytes_cut: u64,
    /// Time to open the store and reconcile (or load the ledger), measured by the consumer.
    pub open: Duration,
    /// Of `open`, the time spent reconciling the claims in doubt (claims mode).
    pub reconcile: Duration,
    /// Time from spawning the process to its ready message.
    pub spawn_to_ready: Duration,
    /// The claims in doubt it found and how it settled them (claims mode).
    pub reconciled: Reconciled,
    /// The channel offset it asked deliveries from (state mode: the position committed in
    /// idem; else 0).
    pub position: u64,
}

/// What the ledger holds, against what the producer sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Ledger lines.
    pub charges: u64,
    /// Events charged more than once (customers double-charged).
    pub double_charged_events: u64,
    /// Charges beyond the first of each event.
    pub extra_charges: u64,
    /// The sum of those extra charges.
    pub overcharged_cents: u64,
    /// Events never charged.
    pub lost: u64,
    /// Charges whose amount is not the event's.
    pub wrong_amount: u64,
    /// Charges for events the producer never sent.
    pub unknown_events: u64,
}

impl Verdict {
    pub fn exactly_once(&self) -> bool {
        self.double_charged_events == 0
            && self.lost == 0
            && self.wrong_amount == 0
            && self.unknown_events == 0
    }
}

/// Checks a ledger against the events' amounts.
pub fn verify(amounts: &[u32], ledger: &[LedgerEntry]) -> Verdict {
    let mut times = vec![0u32; amounts.len()];
    let mut verdict = Verdict {
        charges: ledger.len() as u64,
        ..Verdict::default()
    };
    for entry in ledger {
        let Some(&amount) = amounts.get(entry.event as usize) else {
            verdict.unknown_events += 1;
            continue;
        };
        if entry.amount_cents != amount {
            verdict.wrong_amount += 1;
        }
        let seen = &mut times[entry.event as usize];
        if *seen >= 1 {
            verdict.extra_charges += 1;
            verdict.overcharged_cents += u64::from(entry.amount_cents);
            if *seen == 1 {
                verdict.double_charged_events += 1;
            }
        }
        *seen += 1;
    }
    verdict.lost = times.iter().filter(|&&t| t == 0).count() as u64;
    verdict
}

/// Every customer's balance against the sum of its events, each counted once (state mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalanceCheck {
    /// Balances checked: one per customer.
    pub checked: u64,
    /// Balances whose cents or charge count differ from the expected ones.
    pub wrong: u64,
    /// Charges beyond each customer's number of events, summed over the customers.
    pub double_charges: u64,
    /// Charges short of each customer's number of events, summed over the customers.
    pub lost_charges: u64,
    /// The sum of what balances hold above their expected cents.
    pub overcharged_cents: u64,
    /// The sum of what balances lack below their expected cents.
    pub undercharged_cents: u64,
}

impl BalanceCheck {
    pub fn exact(&self) -> bool {
        self.wrong == 0 && self.double_charges == 0 && self.lost_charges == 0
    }

    /// The ledger verdict's counts as far as balances can tell them (they cannot name events).
    fn as_verdict(&self, charges: u64) -> Verdict {
        Verdict {
            charges,
            double_charged_events: self.double_charges,
            extra_charges: self.double_charges,
            overcharged_cents: self.overcharged_cents,
            lost: self.lost_charges,
            wrong_amount: 0,
            unknown_events: 0,
        }
    }
}

/// The balance every customer must end with: its events' amounts, each once.
pub fn expected_balances(workload: &Workload, customers: u32) -> Vec<Balance> {
    let mut balances = vec![Balance::default(); customers as usize];
    for (event, &amount) in (0u32..).zip(&workload.amounts) {
        let balance = &mut balances[workload.customer(event) as usize];
        *balance = balance.charged(amount);
    }
    balances
}

/// Compares balances (indexed by customer) with the expected ones.
pub fn check_balances(expected: &[Balance], actual: &[Balance]) -> BalanceCheck {
    let mut check = BalanceCheck {
        checked: expected.len() as u64,
        ..BalanceCheck::default()
    };
    for (want, got) in expected.iter().zip(actual) {
        if want != got {
            check.wrong += 1;
        }
        check.double_charges += got.charges.saturating_sub(want.charges);
        check.lost_charges += want.charges.saturating_sub(got.charges);
        check.overcharged_cents += got.cents.saturating_sub(want.cents);
        check.undercharged_cents += want.cents.saturating_sub(got.cents);
    }
    // A balance missing from `actual` is all lost.
    for want in expected.iter().skip(actual.len()) {
        check.wrong += u64::from(*want != Balance::default());
        check.lost_charges += want.charges;
        check.undercharged_cents += want.cents;
    }
    check
}

/// The balances a ledger's charges add up to, per customer (charges of unknown events, which
/// the ledger's verdict counts, are left out).
fn ledger_balances(workload: &Workload, customers: u32, ledger: &[LedgerEntry]) -> Vec<Balance> {
    let mut balances = vec![Balance::default(); customers as usize];
    for entry in ledger.iter().filter(|e| e.event < workload.events()) {
        if let Some(balance) = balances.get_mut(workload.customer(entry.event) as usize) {
            *balance = balance.charged(entry.amount_cents);
        }
    }
    balances
}

/// Reads every customer's balance and the channel position from a store no process has open.
fn store_balances(dir: &Path, customers: u32) -> CliResult<(Vec<Balance>, Option<u64>)> {
    let store = idem::Store::open(dir).context(format_args!(
        "opening idem store {} to check it",
        dir.display()
    ))?;
    let balances = (0..customers)
        .map(|customer| read_balance(&store, customer))
        .collect::<CliResult<Vec<_>>>()?;
    let position = store
        .position(CHANNEL)
        .context("reading the channel position")?;
    store.close().context("closing the idem store")?;
    Ok((balances, position))
}

/// One run of the workload through one kind of consumer.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub wall: Duration,
    /// Deliveries sent: the channel's schedule plus the re-sends after a crash.
    pub sent_deliveries: u64,
    /// Deliveries acknowledged (each batch is acknowledged once: the channel's schedule).
    pub acked_deliveries: u64,
    /// Deliveries re-sent because the consumer died before acknowledging them.
    pub resent_after_crash: u64,
    pub restarts: u32,
    /// Acknowledged deliveries when the consumer was killed.
    pub killed_after: Option<u64>,
    /// The consumer's counts, summed over acknowledged batches.
    pub totals: BatchReport,
    /// Latency of idem's `check_or_insert_batch`, one sample per acknowledged batch.
    pub commit_latency: Histogram,
    /// The first start, then each restart.
    pub starts: Vec<Ready>,
    /// The store's counters at the end (of the last consumer process): fsyncs, disk bytes, keys.
    pub final_fsyncs: u64,
    pub final_disk_bytes: u64,
    pub final_live_keys: u64,
    /// The ledger checked against the events. State mode with idem, which keeps no ledger: the
    /// balances' counts ([`BalanceCheck`]).
    pub verdict: Verdict,
    /// State mode: every balance checked (the run with idem: in its store; without: summed from
    /// its ledger).
    pub balances: Option<BalanceCheck>,
    /// State mode with idem: deliveries the killed consumer committed but never acknowledged,
    /// which the producer did not send again because the committed position was past them.
    pub applied_unacked: u64,
    /// State mode with idem: the channel position committed at the end.
    pub final_position: Option<u64>,
}

impl RunResult {
    /// No double charge, no lost charge, every balance exact, the whole channel consumed.
    pub fn exactly_once(&self) -> bool {
        let channel = self.sent_deliveries - self.resent_after_crash;
        self.verdict.exactly_once()
            && self.balances.as_ref().is_none_or(BalanceCheck::exact)
            && self.final_position.is_none_or(|p| p == channel)
    }
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub events: u32,
    pub dup_rate: f64,
    pub durability: DurabilityArg,
    pub batch: u32,
    pub mode: DedupMode,
    pub threads: u32,
    /// State mode: customers (balances); else 0.
    pub customers: u32,
    pub seed: u64,
    pub kill_at: Option<f64>,
    pub ttl: Duration,
    pub dir: PathBuf,
    pub dir_kept: bool,
    pub channel_extra_deliveries: u64,
    pub duplicated_events: u64,
    pub blip: std::ops::Range<u32>,
    pub total_cents: u64,
    pub dedup: RunResult,
    pub naive: Option<RunResult>,
    /// The channel the deliveries went over.
    pub broker: Broker,
    /// Over NATS: the consumers' ack wait.
    pub ack_wait: Duration,
}

pub struct Progress {
    pub bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool, prefix: &'static str, len: u64) -> Progress {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        };
        let style = ProgressStyle::with_template(
            "{prefix:>13} [{bar:36}] {human_pos:>9}/{human_len:9} deliveries  {per_sec:0}  eta {eta:>3}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(prefix);
        Progress { bar, quiet }
    }

    /// A line of news: above the bar when it is drawn, else on stderr unless quiet.
    pub fn say(&self, line: &str) {
        if !self.bar.is_hidden() {
            self.bar.println(line);
        } else if !self.quiet {
            eprintln!("{line}");
        }
    }
}

/// Runs `workload` through the consumer `args` describe, killing it once at `kill_at`.
///
/// Batches are cut from the channel (the schedule of deliveries) at the offset the consumer asks
/// for when it comes up: after a kill, the first delivery not acknowledged, or in state mode
/// with idem the position the consumer found committed in its store.
fn run_once(
    workload: &Workload,
    batch: usize,
    args: &ConsumerArgs,
    launcher: &Launcher,
    kill_at: Option<f64>,
    seed: u64,
    progress: &Progress,
) -> CliResult<RunResult> {
    let channel = &workload.deliveries;
    let resumes_from_position = args.mode == DedupMode::State && args.store.is_some();
    let kill_after = kill_at.map(|f| (f * channel.len() as f64) as u64);
    let mut kill_rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let started = Instant::now();
    let mut consumer = launcher.spawn(args)?;
    let mut starts = vec![consumer.wait_ready(started)?];
    let mut result = RunResult::default();
    // Offsets: every delivery before `acked` is acknowledged (or, in state mode, committed);
    // `next` is the next to send; `in_flight` the batches sent and not acknowledged.
    let (mut acked, mut next) = (0usize, 0usize);
    if resumes_from_position {
        acked = resume_offset(&starts[0], 0, 0, channel.len())?;
        next = acked;
        progress.bar.inc(acked as u64);
    }
    let mut in_flight: VecDeque<(u64, usize, usize)> = VecDeque::new();
    let mut seq = 0u64;
    let mut last_ack = Instant::now();
    while acked < channel.len() {
        while next < channel.len() && in_flight.len() < WINDOW {
            let end = (next + batch).min(channel.len());
            let wrote = protocol::write_batch(
                &mut consumer.stdin,
                seq,
                next as u64,
                &channel[next..end],
                workload,
            );
            if let Err(e) = wrote {
                return Err(consumer.failed(format_args!("sending batch {seq}: {e}")));
            }
            in_flight.push_back((seq, next, end));
            seq += 1;
            next = end;
        }
        if let Err(e) = consumer.stdin.flush() {
            return Err(consumer.failed(format_args!("sending batches: {e}")));
        }
        let (acked_seq, report) = match consumer.read()? {
            ToProducer::Ack { seq, report } => (seq, report),
            other => return Err(consumer.failed(format!("expected an ack, got {other:?}"))),
        };
        let Some((expected, start, end)) = in_flight.pop_front() else {
            return Err(consumer.failed(format!("acknowledged batch {acked_seq}, none was sent")));
        };
        if acked_seq != expected {
            return Err(consumer.failed(format!(
                "acknowledged batch {acked_seq}, expected {expected}"
            )));
        }
        let now = Instant::now();
        let ack_interval = now - last_ack;
        last_ack = now;
        let delivered = (end - start) as u64;
        acked = end;
        result.acked_deliveries += delivered;
        add(&mut result.totals, &report);
        if args.store.is_some() {
            result.commit_latency.record(report.commit_nanos);
        }
        progress.bar.inc(delivered);

        let due = kill_after.is_some_and(|k| result.acked_deliveries >= k);
        if due && result.killed_after.is_none() && acked < channel.len() {
            consumer.kill_within(ack_interval, &mut kill_rng)?;
            result.killed_after = Some(result.acked_deliveries);
            result.restarts += 1;
            let unacked = next - acked;
            progress.say(&format!(
                "  consumer killed with SIGKILL after {} acknowledged deliveries ({} sent and not acknowledged); restarting",
                fmt::count(result.acked_deliveries),
                fmt::count(unacked as u64)
            ));
            in_flight.clear();
            let respawned = Instant::now();
            consumer = launcher.spawn(args)?;
            let ready = consumer.wait_ready(respawned)?;
            let resume = if resumes_from_position {
                resume_offset(&ready, acked, next, channel.len())?
            } else {
                acked
            };
            result.resent_after_crash += (next - resume) as u64;
            result.applied_unacked += (resume - acked) as u64;
            progress.bar.inc((resume - acked) as u64);
            let note = match (&args.store, args.mode) {
                (None, _) => "no store, nothing to recover".to_string(),
                (Some(_), DedupMode::Claims) => format!(
                    "store reopened, {} records replayed; {}",
                    fmt::count(ready.records_replayed),
                    in_doubt_summary(&ready.reconciled)
                ),
                (Some(_), DedupMode::Batch) => format!(
                    "store reopened, {} records replayed; ledger of {} charges reloaded",
                    fmt::count(ready.records_replayed),
                    fmt::count(ready.ledger_lines_read)
                ),
                (Some(_), DedupMode::State) => format!(
                    "store reopened, {} records replayed; {}",
                    fmt::count(ready.records_replayed),
                    resume_summary(
                        resume as u64,
                        (resume - acked) as u64,
                        (next - resume) as u64
                    )
                ),
            };
            progress.say(&format!(
                "  consumer restarted in {} ({note}); re-sending {} deliveries",
                fmt::nanos(ready.spawn_to_ready.as_nanos() as u64),
                fmt::count((next - resume) as u64),
            ));
            starts.push(ready);
            acked = resume;
            next = resume;
        }
    }
    if let Err(e) = protocol::write_end(&mut consumer.stdin).and_then(|()| consumer.stdin.flush()) {
        return Err(consumer.failed(format_args!("sending the end: {e}")));
    }
    match consumer.read()? {
        ToProducer::Summary {
            fsyncs,
            disk_bytes,
            live_keys,
        } => {
            result.final_fsyncs = fsyncs;
            result.final_disk_bytes = disk_bytes;
            result.final_live_keys = live_keys;
        }
        other => return Err(consumer.failed(format!("expected the summary, got {other:?}"))),
    }
    let status = consumer
        .child
        .wait()
        .context("waiting for the consumer process")?;
    if !status.success() {
        return Err(CliError::new(format!(
            "consumer process exited with {status}"
        )));
    }
    result.wall = started.elapsed();
    result.starts = starts;
    result.sent_deliveries = channel.len() as u64 + result.resent_after_crash;
    if !resumes_from_position {
        let ledger = read_ledger(&args.ledger)?;
        result.verdict = verify(&workload.amounts, &ledger);
    }
    Ok(result)
}

/// The offset a state-mode consumer asked for, checked: at or past what was acknowledged (an
/// acknowledged batch was flushed, so its position is durable), at most what was sent.
fn resume_offset(ready: &Ready, acked: usize, sent: usize, channel: usize) -> CliResult<usize> {
    let position = usize::try_from(ready.position).unwrap_or(usize::MAX);
    if position < acked || position > sent.max(acked) || position > channel {
        return Err(CliError::new(format!(
            "the consumer's committed channel position {} is outside what it could have consumed ({acked} acknowledged, {sent} sent)",
            ready.position
        )));
    }
    Ok(position)
}

/// `resumed from the channel position committed in idem, P: ...` (state mode's restart).
fn resume_summary(position: u64, applied_unacked: u64, resent: u64) -> String {
    let skipped = if applied_unacked > 0 {
        format!(
            "; the {} before it that the killed consumer committed but never acknowledged were not",
            fmt::count(applied_unacked)
        )
    } else {
        String::new()
    };
    format!(
        "resumed from the channel position committed in idem, {}: the {} deliveries sent after it were re-sent{skipped}",
        fmt::count(position),
        fmt::count(resent),
    )
}

pub fn add(total: &mut BatchReport, batch: &BatchReport) {
    total.inserted += batch.inserted;
    total.duplicates += batch.duplicates;
    total.in_doubt += batch.in_doubt;
    total.charged_blindly += batch.charged_blindly;
    total.retried += batch.retried;
    total.commit_nanos += batch.commit_nanos;
    total.redelivered += batch.redelivered;
    total.late_duplicates += batch.late_duplicates;
}

/// `claims in doubt after the crash: N (M found in the ledger, K charged now)`.
fn in_doubt_summary(r: &Reconciled) -> String {
    let released = if r.released > 0 {
        format!(
            ", {} released for the re-sent delivery",
            fmt::count(r.released)
        )
    } else {
        String::new()
    };
    format!(
        "claims in doubt after the crash: {} ({} found in the ledger, {} charged now{released})",
        fmt::count(r.in_doubt),
        fmt::count(r.in_ledger),
        fmt::count(r.charged_now),
    )
}

impl RunResult {
    /// The claims in doubt found by every restart, summed.
    pub fn reconciled(&self) -> Reconciled {
        let mut total = Reconciled::default();
        for r in self.starts.iter().map(|s| &s.reconciled) {
            total.in_doubt += r.in_doubt;
            total.in_ledger += r.in_ledger;
            total.charged_now += r.charged_now;
            total.released += r.released;
        }
        total
    }
}

/// The store's durability when `--durability` is not given: see [`DemoArgs::durability`].
pub fn default_durability(mode: DedupMode) -> DurabilityArg {
    match mode {
        // State mode: one transaction per delivery; in Sync each would wait for an fsync of its
        // own. The consumer flushes once per batch instead, before acknowledging it.
        DedupMode::Claims | DedupMode::State => {
            DurabilityArg(idem::Durability::Periodic(Duration::from_millis(10)))
        }
        DedupMode::Batch => DurabilityArg(idem::Durability::Sync),
    }
}

fn consumer_note(mode: DedupMode, threads: u32) -> String {
    match mode {
        DedupMode::Claims => format!("claims on {threads} threads"),
        DedupMode::Batch => "check_or_insert_batch".to_string(),
        DedupMode::State => "balances in idem, one transaction per delivery".to_string(),
    }
}

/// Prepares the demo's directory: the one given (must be empty or absent), else a temporary one.
pub fn workspace(dir: Option<&Path>) -> CliResult<(Option<tempfile::TempDir>, PathBuf)> {
    match dir {
        Some(dir) => {
            if let Ok(mut entries) = std::fs::read_dir(dir) {
                if entries.next().is_some() {
                    return Err(CliError::new(format!(
                        "--dir {} is not empty: the demo needs a fresh directory (it keeps the store and ledgers there)",
                        dir.display()
                    )));
                }
            }
            std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
            Ok((None, dir.to_path_buf()))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("idem-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            let path = temp.path().to_path_buf();
            Ok((Some(temp), path))
        }
    }
}

/// Runs the demo and returns its report (does not print it).
pub fn run(args: &DemoArgs, launcher: &Launcher) -> CliResult<DemoReport> {
    let (temp, root) = workspace(args.dir.as_deref())?;
    let mut workload = workload::generate(args.events, args.dup_rate, args.seed);
    let customers = if args.mode == DedupMode::State {
        args.customers
    } else {
        1
    };
    workload.assign_customers(customers, args.seed);
    let kill_at = (!args.no_kill).then_some(args.kill_at);
    let batch = args.batch as usize;
    let deliveries = workload.deliveries.len() as u64;

    let durability = args.durability.unwrap_or(default_durability(args.mode));
    let dedup_args = ConsumerArgs {
        ledger: root.join("ledger.txt"),
        store: Some(root.join("store")),
        durability,
        ttl_ms: u64::try_from(args.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        mode: args.mode,
        threads: args.threads,
        lease_secs: LEASE_SECS,
    };
    let quiet = args.quiet || args.json;
    let progress = Progress::new(quiet, "with idem", deliveries);
    progress.say(&format!(
        "idem demo: {} charge events, {} deliveries; consumer with idem ({}, {})",
        fmt::count(u64::from(args.events)),
        fmt::count(deliveries),
        consumer_note(args.mode, args.threads),
        durability
    ));
    let dedup = run_once(
        &workload,
        batch,
        &dedup_args,
        launcher,
        kill_at,
        args.seed,
        &progress,
    );
    progress.bar.finish_and_clear();
    let mut dedup = dedup?;
    let expected = (args.mode == DedupMode::State).then(|| expected_balances(&workload, customers));
    if let (Some(expected), Some(store)) = (&expected, &dedup_args.store) {
        let (balances, position) = store_balances(store, customers)?;
        let charges = balances.iter().map(|b| b.charges).sum();
        let check = check_balances(expected, &balances);
        dedup.verdict = check.as_verdict(charges);
        dedup.balances = Some(check);
        dedup.final_position = Some(position.unwrap_or(0));
    }

    let naive = if args.no_naive {
        None
    } else {
        let naive_args = ConsumerArgs {
            ledger: root.join("naive-ledger.txt"),
            store: None,
            ..dedup_args.clone()
        };
        let progress = Progress::new(quiet, "without idem", deliveries);
        progress.say("same run, naive consumer without idem (charges every delivery)");
        let naive = run_once(
            &workload,
            batch,
            &naive_args,
            launcher,
            kill_at,
            args.seed,
            &progress,
        );
        progress.bar.finish_and_clear();
        let mut naive = naive?;
        if let Some(expected) = &expected {
            let ledger = read_ledger(&naive_args.ledger)?;
            let balances = ledger_balances(&workload, customers, &ledger);
            naive.balances = Some(check_balances(expected, &balances));
        }
        Some(naive)
    };

    let dir_kept = temp.is_none();
    drop(temp);
    Ok(DemoReport {
        ttl: args.ttl,
        events: args.events,
        dup_rate: args.dup_rate,
        durability,
        batch: args.batch,
        mode: args.mode,
        threads: args.threads,
        customers: if args.mode == DedupMode::State {
            customers
        } else {
            0
        },
        seed: args.seed,
        kill_at,
        dir: root,
        dir_kept,
        channel_extra_deliveries: workload.extra_deliveries(),
        duplicated_events: workload.duplicated_events,
        blip: workload.blip.clone(),
        total_cents: workload.total_cents(),
        dedup,
        naive,
        broker: Broker::Pipe,
        ack_wait: args.ack_wait,
    })
}

/// One row of the report's table: a label, the run with idem, the run without.
fn row(out: &mut String, label: &str, with: String, without: Option<String>) {
    use std::fmt::Write as _;
    let without = without.unwrap_or_default();
    let _ = writeln!(out, "  {label:<34}{with:>14}   {without:>14}");
}

/// A row of the same figure of each run.
fn figure(out: &mut String, r: &DemoReport, label: &str, f: &dyn Fn(&RunResult) -> String) {
    row(out, label, f(&r.dedup), r.naive.as_ref().map(f));
}

/// The report's opening: the workload, the crash, the consumer.
fn render_setup(out: &mut String, r: &DemoReport) {
    use std::fmt::Write as _;
    let d = &r.dedup;
    let state = r.mode == DedupMode::State;
    let _ = if state {
        writeln!(
            out,
            "idem demo --mode state: exactly-once balances over an at-least-once channel"
        )
    } else if r.broker == Broker::Nats {
        writeln!(
            out,
            "idem demo --broker nats: exactly-once charging over a NATS JetStream stream"
        )
    } else {
        writeln!(
            out,
            "idem demo: exactly-once charging over an at-least-once channel"
        )
    };
    let _ = writeln!(out);
    let customers = if state {
        format!(" for {} customers", fmt::count(u64::from(r.customers)))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {} charge events{customers} ({} in total). The channel delivered {} of them ({:.2}%) twice or more:",
        fmt::count(u64::from(r.events)),
        fmt::cents(r.total_cents),
        fmt::count(r.duplicated_events),
        r.duplicated_events as f64 * 100.0 / f64::from(r.events),
    );
    let retries = fmt::count(r.duplicated_events - r.blip.len() as u64);
    if r.blip.is_empty() {
        let _ = writeln!(
            out,
            "  no network blip, and {retries} scattered retries arrived late."
        );
    } else {
        let _ = writeln!(
            out,
            "  a network blip re-sent the {} events #{} to #{}, and {retries} scattered retries arrived late.",
            fmt::count(r.blip.len() as u64),
            fmt::count(u64::from(r.blip.start)),
            fmt::count(u64::from(r.blip.end - 1)),
        );
    }
    match (r.kill_at, d.killed_after) {
        (Some(at), Some(after)) => {
            let _ = writeln!(
                out,
                "  The consumer process was killed with SIGKILL at {:.0}% ({} deliveries acknowledged) and",
                at * 100.0,
                fmt::count(after)
            );
            match r.mode {
                _ if r.broker == Broker::Nats => {
                    let _ = writeln!(
                        out,
                        "  restarted; JetStream redelivered every message the killed consumer had not acknowledged once\n  \
                         its ack wait ({}) ran out.",
                        humantime::format_duration(r.ack_wait)
                    );
                }
                DedupMode::State => {
                    let _ = writeln!(
                        out,
                        "  restarted; the producer re-sent from the channel position the new consumer found committed\n  \
                         in idem (the run without idem, which has none, from the first unacknowledged delivery)."
                    );
                }
                mode => {
                    let _ = writeln!(
                        out,
                        "  restarted; the producer re-sent every delivery it had not seen acknowledged."
                    );
                    if mode == DedupMode::Claims {
                        let _ = writeln!(
                            out,
                            "  The new consumer first reconciled the claims left in doubt against the ledger."
                        );
                    }
                }
            }
        }
        (Some(_), None) => {
            let _ = writeln!(
                out,
                "  The consumer was not killed: the run ended within the batch that reached --kill-at."
            );
        }
        (None, _) => {
            let _ = writeln!(out, "  The consumer ran without being killed (--no-kill).");
        }
    }
    match r.mode {
        _ if r.broker == Broker::Nats => {
            let _ = writeln!(
                out,
                "  Consumer: a durable JetStream pull consumer, explicit acks: fetch up to {} messages →\n  \
                 check_or_insert_batch_async (durability {}) → ledger append + fsync → ack each message.",
                fmt::count(u64::from(r.batch)),
                r.durability
            );
        }
        DedupMode::Claims if r.durability.0 == idem::Durability::Sync => {
            let _ = writeln!(
                out,
                "  Consumer: per delivery claim → ledger append → complete (durability sync: each claim and complete"
            );
            let _ = writeln!(
                out,
                "  waits for its fsync; {} at a time share them), batches of {} with one ledger fsync each, ack.",
                r.threads,
                fmt::count(u64::from(r.batch))
            );
        }
        DedupMode::Claims => {
            let _ = writeln!(
                out,
                "  Consumer: per delivery claim → ledger append → complete (durability {}, and one idem flush per batch",
                r.durability
            );
            let _ = writeln!(
                out,
                "  so that its claims are durable before their charges), batches of {} with one ledger fsync each, ack.",
                fmt::count(u64::from(r.batch))
            );
            let _ = writeln!(
                out,
                "  (With --durability sync each claim and each complete waits for an fsync of its own: two waits per"
            );
            let _ = writeln!(
                out,
                "  event instead of one fsync per batch, several times slower; --mode batch: check_or_insert_batch.)"
            );
        }
        DedupMode::Batch => {
            let _ = writeln!(
                out,
                "  Consumer: check_or_insert_batch (durability {}, batches of {}), ledger append + fsync, ack.",
                r.durability,
                fmt::count(u64::from(r.batch))
            );
        }
        DedupMode::State => {
            let _ = writeln!(
                out,
                "  Consumer: per delivery one idem transaction: check_or_insert(event) → if Inserted, balance += amount\n  \
                 → set_position(channel) → commit, all or nothing (durability {}; batches of {}, one idem flush each\n  \
                 before the ack). At the end the demo reopened the store and checked every balance.",
                r.durability,
                fmt::count(u64::from(r.batch))
            );
        }
    }
    let _ = writeln!(
        out,
        "  Files: {}{}   (--dup-rate {}, --seed {})",
        r.dir.display(),
        if r.dir_kept { " (kept)" } else { " (removed)" },
        r.dup_rate,
        r.seed
    );
    let _ = writeln!(out);
}

/// The printed report.
pub fn render(r: &DemoReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let d = &r.dedup;
    render_setup(&mut out, r);

    let naive = r.naive.as_ref();
    // Rows of the run with idem only: "-" for the run without.
    let only = |out: &mut String, label: &str, with: u64| {
        row(out, label, fmt::count(with), naive.map(|_| "-".into()));
    };
    row(
        &mut out,
        "",
        "with idem".into(),
        naive.map(|_| "without idem".into()),
    );
    figure(&mut out, r, "events", &|_| fmt::count(u64::from(r.events)));
    if r.mode == DedupMode::State {
        figure(&mut out, r, "customers (balances checked)", &|_| {
            fmt::count(u64::from(r.customers))
        });
    }
    figure(&mut out, r, "deliveries", &|x| {
        fmt::count(x.sent_deliveries)
    });
    figure(&mut out, r, "  re-sent by the channel", &|_| {
        fmt::count(r.channel_extra_deliveries)
    });
    let resent = if r.broker == Broker::Nats {
        "  redelivered by JetStream"
    } else {
        "  re-sent after the crash"
    };
    figure(&mut out, r, resent, &|x| fmt::count(x.resent_after_crash));
    figure(&mut out, r, "consumer restarts", &|x| {
        fmt::count(u64::from(x.restarts))
    });
    only(&mut out, "duplicates caught by idem", d.totals.duplicates);
    if r.mode != DedupMode::State {
        only(
            &mut out,
            "late duplicates (key expired first)",
            d.totals.late_duplicates,
        );
        if d.totals.late_duplicates > 0 {
            let _ = writeln!(
                out,
                "  (deliveries whose key's entry had expired shortly before: the TTL, {}, is shorter than the retry window)",
                fmt::nanos(r.ttl.as_nanos() as u64)
            );
        }
    }
    match r.mode {
        DedupMode::Claims => {
            only(
                &mut out,
                "  answered InFlight first, retried",
                d.totals.retried,
            );
            only(
                &mut out,
                "claims in doubt after the crash",
                d.reconciled().in_doubt,
            );
        }
        DedupMode::Batch => only(&mut out, "in-doubt charges recovered", d.totals.in_doubt),
        DedupMode::State => {
            only(
                &mut out,
                "committed, not acked, not re-sent",
                d.applied_unacked,
            );
            if d.totals.retried > 0 {
                only(
                    &mut out,
                    "transactions retried (Conflict)",
                    d.totals.retried,
                );
            }
        }
    }
    if r.mode == DedupMode::State {
        let balances = |x: &RunResult, f: fn(&BalanceCheck) -> String| {
            x.balances.as_ref().map_or_else(|| "-".into(), f)
        };
        figure(&mut out, r, "balances wrong", &|x| {
            balances(x, |b| fmt::count(b.wrong))
        });
        figure(&mut out, r, "double charges", &|x| {
            balances(x, |b| fmt::count(b.double_charges))
        });
        figure(&mut out, r, "lost charges", &|x| {
            balances(x, |b| fmt::count(b.lost_charges))
        });
        figure(&mut out, r, "overcharged (all balances)", &|x| {
            balances(x, |b| fmt::cents(b.overcharged_cents))
        });
    } else {
        figure(&mut out, r, "charges in the ledger", &|x| {
            fmt::count(x.verdict.charges)
        });
        figure(&mut out, r, "double charges (customers)", &|x| {
            fmt::count(x.verdict.double_charged_events)
        });
        figure(&mut out, r, "lost charges", &|x| fmt::count(x.verdict.lost));
        figure(&mut out, r, "overcharged", &|x| {
            fmt::cents(x.verdict.overcharged_cents)
        });
        if d.verdict.wrong_amount + d.verdict.unknown_events > 0 {
            row(
                &mut out,
                "wrong amounts / unknown events",
                format!("{} / {}", d.verdict.wrong_amount, d.verdict.unknown_events),
                None,
            );
        }
    }
    figure(&mut out, r, "throughput (events/s)", &|x| {
        fmt::rate(u64::from(r.events) as f64 / x.wall.as_secs_f64())
    });
    figure(&mut out, r, "wall time", &|x| {
        fmt::nanos(x.wall.as_nanos() as u64)
    });
    let _ = writeln!(out);

    let h = &d.commit_latency;
    let what = match r.mode {
        DedupMode::Claims => "idem claims per batch, all of a batch's claims",
        DedupMode::Batch => "idem batch commit latency",
        DedupMode::State => "idem transactions per batch, all of a batch's and its flush",
    };
    let _ = writeln!(
        out,
        "  {what} ({} batch{}): p50 {}  p99 {}  p999 {}  max {}",
        fmt::count(h.count()),
        if h.count() == 1 { "" } else { "es" },
        fmt::nanos(h.quantile(0.50)),
        fmt::nanos(h.quantile(0.99)),
        fmt::nanos(h.quantile(0.999)),
        fmt::nanos(h.max()),
    );
    for ready in d.starts.iter().skip(1) {
        let torn = if ready.bytes_cut > 0 {
            format!(", torn tail of {} bytes cut", ready.bytes_cut)
        } else {
            String::new()
        };
        let up = fmt::nanos(ready.spawn_to_ready.as_nanos() as u64);
        let replayed = fmt::count(ready.records_replayed);
        let lines = fmt::count(ready.ledger_lines_read);
        let _ = match r.mode {
            DedupMode::Claims => writeln!(
                out,
                "  restart: consumer up in {up} (of which {} to reopen the store, replaying {replayed} records{torn}, and {} to reconcile the claims in doubt, reading {lines} ledger lines)",
                fmt::nanos(ready.open.saturating_sub(ready.reconcile).as_nanos() as u64),
                fmt::nanos(ready.reconcile.as_nanos() as u64),
            ),
            DedupMode::Batch => writeln!(
                out,
                "  restart: consumer up in {up} (of which {} to reopen the store, replaying {replayed} records{torn}, and reload the ledger of {lines} charges)",
                fmt::nanos(ready.open.as_nanos() as u64),
            ),
            DedupMode::State => writeln!(
                out,
                "  restart: consumer up in {up} (of which {} to reopen the store, replaying {replayed} records{torn})",
                fmt::nanos(ready.open.as_nanos() as u64),
            ),
        };
        match r.mode {
            DedupMode::Claims => {
                let _ = writeln!(out, "  {}", in_doubt_summary(&ready.reconciled));
            }
            DedupMode::State => {
                let _ = writeln!(
                    out,
                    "  {}",
                    resume_summary(ready.position, d.applied_unacked, d.resent_after_crash)
                );
            }
            DedupMode::Batch => {}
        }
    }
    if d.final_live_keys > 0 {
        let _ = writeln!(
            out,
            "  idem store at the end: {} keys, {} on disk ({:.1} bytes/key), {} fsyncs by the last consumer",
            fmt::count(d.final_live_keys),
            fmt::bytes(d.final_disk_bytes as f64),
            d.final_disk_bytes as f64 / d.final_live_keys as f64,
            fmt::count(d.final_fsyncs),
        );
    }
    if let Some(position) = d.final_position {
        let _ = writeln!(
            out,
            "  channel position committed at the end: {} of {} deliveries",
            fmt::count(position),
            fmt::count(d.sent_deliveries - d.resent_after_crash),
        );
    }
    let _ = writeln!(out);
    match (&d.balances, d.exactly_once()) {
        (Some(b), true) => {
            let _ = write!(
                out,
                "  OK: with idem all {} balances are exact, every event counted once",
                fmt::count(b.checked)
            );
            match naive.and_then(|x| x.balances.as_ref()) {
                Some(nb) if nb.wrong > 0 => {
                    let _ = writeln!(
                        out,
                        "; without it {} balances are wrong ({} overcharged).",
                        fmt::count(nb.wrong),
                        fmt::cents(nb.overcharged_cents)
                    );
                }
                _ => {
                    let _ = writeln!(out, ".");
                }
            }
        }
        (Some(b), false) => {
            let _ = writeln!(
                out,
                "  FAILED: with idem {} balances wrong, {} double charges, {} lost charges (durability {}).",
                fmt::count(b.wrong),
                fmt::count(b.double_charges),
                fmt::count(b.lost_charges),
                r.durability
            );
        }
        (None, true) => {
            let _ = write!(out, "  OK: with idem every event was charged exactly once");
            match naive {
                Some(x) if x.verdict.double_charged_events > 0 => {
                    let _ = writeln!(
                        out,
                        "; without it {} customers were charged twice or more ({} overcharged).",
                        fmt::count(x.verdict.double_charged_events),
                        fmt::cents(x.verdict.overcharged_cents)
                    );
                }
                _ => {
                    let _ = writeln!(out, ".");
                }
            }
        }
        (None, false) => {
            let _ = writeln!(
                out,
                "  FAILED: with idem {} double charges and {} lost charges (durability {}).",
                fmt::count(d.verdict.double_charged_events),
                fmt::count(d.verdict.lost),
                r.durability
            );
            if r.durability.0 != idem::Durability::Sync && r.mode == DedupMode::Batch {
                let _ = writeln!(
                    out,
                    "  Only sync durability survives kill -9 with nothing lost; this mode can lose the last records."
                );
            }
        }
    }
    out
}

/// The report as one JSON object (`--json`), for scripts and CI. `double_charges` and
/// `lost_charges` are per event from the ledger, or in state mode per balance (charges beyond
/// or short of each customer's number of events); the `balances_*` fields are null outside
/// state mode.
pub fn to_json(r: &DemoReport) -> serde_json::Value {
    use serde_json::json;
    let run = |x: &RunResult| {
        let (double, lost, over) = match &x.balances {
            Some(b) => (b.double_charges, b.lost_charges, b.overcharged_cents),
            None => (
                x.verdict.double_charged_events,
                x.verdict.lost,
                x.verdict.overcharged_cents,
            ),
        };
        json!({
            "deliveries": x.sent_deliveries,
            "resent_after_crash": x.resent_after_crash,
            "consumer_restarts": x.restarts,
            "redelivered": x.totals.redelivered,
            "double_charges": double,
            "lost_charges": lost,
            "overcharged_cents": over,
            "balances_checked": x.balances.as_ref().map(|b| b.checked),
            "balances_wrong": x.balances.as_ref().map(|b| b.wrong),
            "wall_seconds": x.wall.as_secs_f64(),
            "events_per_sec": f64::from(r.events) / x.wall.as_secs_f64(),
        })
    };
    let d = &r.dedup;
    let mut out = run(d);
    let extra = json!({
        "broker": r.broker.to_string(),
        "mode": r.mode.to_string(),
        "durability": r.durability.to_string(),
        "events": r.events,
        "customers": (r.mode == DedupMode::State).then_some(r.customers),
        "seed": r.seed,
        "batch": r.batch,
        "channel_extra_deliveries": r.channel_extra_deliveries,
        "duplicated_events": r.duplicated_events,
        "redeliveries": r.channel_extra_deliveries + d.resent_after_crash,
        "duplicates_caught": d.totals.duplicates,
        "late_duplicates": d.totals.late_duplicates,
        "ttl_secs": r.ttl.as_secs_f64(),
        "committed_not_acked": d.applied_unacked,
        "transactions_retried": (r.mode == DedupMode::State).then_some(d.totals.retried),
        "final_position": d.final_position,
        "exactly_once": d.exactly_once(),
        "naive": r.naive.as_ref().map(run),
    });
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}

pub fn main(args: &DemoArgs) -> CliResult<ExitCode> {
    let launcher = Launcher::this_executable()?;
    #[cfg(feature = "nats")]
    if args.replicate {
        if args.broker != Broker::Nats {
            return Err(CliError::new(
                "--replicate runs over NATS: add --broker nats",
            ));
        }
        let report = crate::nats_scale::run(args)?;
        crate::nats_scale::print(&report, args.json);
        let clean =
            report.double_charges == 0 && report.lost_charges == 0 && report.balances_wrong == 0;
        return Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let report = match args.broker {
        Broker::Pipe => run(args, &launcher)?,
        #[cfg(feature = "nats")]
        Broker::Nats => crate::nats_demo::run(args, &launcher)?,
        #[cfg(not(feature = "nats"))]
        Broker::Nats => {
            return Err(CliError::new(
                "this idem was built without NATS support: build it with the `nats` feature \
                 (cargo run --release -p idem --features nats -- demo --broker nats)",
            ))
        }
    };
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.dedup.exactly_once() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Parses arguments of type `T` (the flags after the subcommand) the way the tool would: the
/// consumer arguments the test harness passes in the environment, one a line, or a test's flags.
#[cfg(test)]
pub fn parse_args<T: clap::Args>(
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString>>,
) -> CliResult<T> {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    let argv = std::iter::once("idem".into()).chain(argv.into_iter().map(Into::into));
    Wrap::<T>::try_parse_from(argv)
        .map(|w| w.args)
        .map_err(|e| CliError::new(e.to_string()))
}

/// The body of a test that serves as a consumer process ([`Launcher::TestHarness`]): when the
/// environment variable `env` holds the consumer's arguments, runs `serve` with them and exits
/// with status 1 on its error, as the consumer subcommand would; else (the test run on its own)
/// does nothing.
#[cfg(test)]
pub fn serve_as_child<T: clap::Args>(env: &str, serve: impl FnOnce(T) -> CliResult<()>) {
    let Ok(lines) = std::env::var(env) else {
        return;
    };
    let args: T = parse_args(lines.lines()).unwrap();
    if let Err(e) = serve(args) {
        eprintln!("consumer: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "IDEM_DEMO_TEST_CONSUMER_ARGS";
    const CHILD_TEST: &str = "demo::tests::consumer_child_process";

    /// Not a test of its own: the consumer process of `tiny_demo_end_to_end`, which spawns this
    /// test binary running only this test with the consumer's arguments in the environment.
    #[test]
    fn consumer_child_process() {
        let _fork = crate::fork_guard();
        serve_as_child(CHILD_ENV, |args: ConsumerArgs| {
            let stdin = std::io::stdin();
            crate::consumer::run(&args, &mut stdin.lock(), &mut std::io::stdout().lock())
        });
    }

    fn tiny(dir: &Path, mode: DedupMode, durability: Option<&str>) -> DemoArgs {
        DemoArgs {
            events: 3_000,
            dup_rate: 0.02,
            durability: durability.map(|d| d.parse().unwrap()),
            dir: Some(dir.to_path_buf()),
            batch: 50,
            mode,
            customers: 40,
            threads: 8,
            kill_at: 0.5,
            no_kill: false,
            no_naive: false,
            seed: 7,
            ttl: Duration::from_secs(24 * 3600),
            quiet: true,
            json: false,
            broker: Broker::Pipe,
            nats_url: None,
            ack_wait: Duration::from_secs(3),
            replicate: false,
            partitions: 8,
            nodes: 2,
        }
    }

    /// `--ttl` shorter than the channel's retry delay: keys expire before their retries, which
    /// are charged again, and idem's late-duplicate signal names the cause.
    #[test]
    fn a_ttl_shorter_than_the_retry_delay_shows_late_duplicates() {
        let _fork = crate::fork_guard();
        let launcher = test_launcher();
        let dir = tempfile::tempdir().unwrap();
        let mut args = tiny(&dir.path().join("run"), DedupMode::Batch, None);
        args.ttl = Duration::from_millis(1);
        args.no_kill = true;
        args.no_naive = true;
        let report = run(&args, &launcher).unwrap();
        let d = &report.dedup;
        assert!(d.totals.late_duplicates > 0, "{:?}", d.totals);
        assert!(!d.verdict.exactly_once(), "the retries were charged again");
        let text = render(&report);
        assert!(text.contains("late duplicates"), "{text}");
        assert!(text.contains("shorter than the retry window"), "{text}");
        // With the default TTL nothing is late.
        let dir = tempfile::tempdir().unwrap();
        let mut args = tiny(&dir.path().join("run"), DedupMode::Batch, None);
        args.no_kill = true;
        args.no_naive = true;
        let report = run(&args, &launcher).unwrap();
        assert_eq!(report.dedup.totals.late_duplicates, 0);
        assert!(report.dedup.verdict.exactly_once());
    }

    fn test_launcher() -> Launcher {
        Launcher::TestHarness {
            exe: std::env::current_exe().unwrap(),
            test: CHILD_TEST,
            env: CHILD_ENV,
        }
    }

    /// `idem demo --mode state` in small, with a real SIGKILL of a real consumer process: every
    /// balance kept in idem must be exact, the restart must resume from the committed position,
    /// and the run without idem must show the overcharged balances.
    #[test]
    fn tiny_state_demo_end_to_end() {
        let _fork = crate::fork_guard();
        let launcher = test_launcher();
        for (durability, seed) in [(None, 7), (Some("sync"), 8), (Some("never"), 9)] {
            let dir = tempfile::tempdir().unwrap();
            let mut args = tiny(&dir.path().join("run"), DedupMode::State, durability);
            args.seed = seed;
            let report = run(&args, &launcher).unwrap();
            let case = format!("state {}", report.durability);
            let d = &report.dedup;
            let b = d.balances.as_ref().expect("balances checked");
            assert_eq!(b.checked, 40, "{case}");
            assert!(b.exact(), "{case}: {b:?}");
            assert_eq!((b.wrong, b.double_charges, b.lost_charges), (0, 0, 0));
            assert!(d.exactly_once(), "{case}");
            assert_eq!(d.verdict.charges, 3_000, "{case}");
            assert_eq!(d.restarts, 1, "{case}");
            assert_eq!(d.starts.len(), 2, "{case}");
            assert_eq!(d.starts[0].position, 0, "{case}");
            // The restart resumed from the committed position: at or past every acknowledged
            // delivery, and what lay between was neither lost nor re-sent.
            let killed_after = d.killed_after.unwrap();
            let resumed = d.starts[1].position;
            assert_eq!(resumed, killed_after + d.applied_unacked, "{case}");
            assert!(d.resent_after_crash <= WINDOW as u64 * 50, "{case}");
            let channel = 3_000 + report.channel_extra_deliveries;
            assert_eq!(d.final_position, Some(channel), "{case}");
            assert_eq!(
                d.acked_deliveries + d.applied_unacked,
                channel,
                "{case}: every delivery acknowledged once or committed before the kill"
            );
            assert_eq!(d.sent_deliveries, channel + d.resent_after_crash, "{case}");
            assert_eq!(d.final_live_keys, 3_000, "{case}");
            // The acknowledged batches saw the channel's re-sends as duplicates, no conflicts.
            assert!(d.totals.duplicates > 0, "{case}");
            assert!(
                d.totals.duplicates <= report.channel_extra_deliveries,
                "{case}"
            );
            assert_eq!(d.totals.retried, 0, "{case}");
            // Without idem the same deliveries overcharge balances.
            let naive = report.naive.as_ref().unwrap();
            let nb = naive.balances.as_ref().unwrap();
            assert!(nb.wrong > 0, "{case}: {nb:?}");
            assert!(
                nb.double_charges >= report.channel_extra_deliveries,
                "{case}"
            );
            assert_eq!(nb.double_charges, naive.verdict.extra_charges, "{case}");
            assert_eq!(nb.overcharged_cents, naive.verdict.overcharged_cents);
            assert_eq!(nb.lost_charges, 0, "{case}");
            let text = render(&report);
            assert!(text.contains("balances wrong"), "{text}");
            assert!(
                text.contains("OK: with idem all 40 balances are exact"),
                "{text}"
            );
            assert!(
                text.contains("resumed from the channel position committed in idem"),
                "{text}"
            );
            let json = to_json(&report);
            assert_eq!(json["events"], 3_000, "{json}");
            assert_eq!(json["balances_wrong"], 0, "{json}");
            assert_eq!(json["double_charges"], 0, "{json}");
            assert_eq!(json["lost_charges"], 0, "{json}");
            assert_eq!(json["consumer_restarts"], 1, "{json}");
            assert_eq!(json["exactly_once"], true, "{json}");
            assert_eq!(json["naive"]["balances_wrong"], nb.wrong, "{json}");
        }
    }

    #[test]
    fn balance_check_counts_wrong_double_and_lost() {
        let _fork = crate::fork_guard();
        let b = |cents, charges| Balance { cents, charges };
        let expected = [b(300, 2), b(50, 1), b(0, 0), b(70, 1)];
        let exact = check_balances(&expected, &expected);
        assert!(exact.exact());
        assert_eq!(exact.checked, 4);
        // Customer 0 charged one event twice, customer 1 lost its charge, customer 3 missing.
        let check = check_balances(&expected, &[b(400, 3), b(0, 0), b(0, 0)]);
        let counts = |c: &BalanceCheck| (c.wrong, c.double_charges, c.lost_charges);
        assert_eq!(counts(&check), (3, 1, 2));
        assert_eq!(
            (check.overcharged_cents, check.undercharged_cents),
            (100, 120)
        );
        assert!(!check.exact());
        // A wrong amount with the right count is still a wrong balance.
        let amount = check_balances(&expected[..1], &[b(301, 2)]);
        assert_eq!(counts(&amount), (1, 0, 0));
        assert!(!amount.exact());
        // The expected sums come from the events, each once.
        let mut w = workload::generate(100, 0.1, 3);
        w.assign_customers(4, 3);
        let sums = expected_balances(&w, 4);
        assert_eq!(sums.iter().map(|s| s.charges).sum::<u64>(), 100);
        assert_eq!(sums.iter().map(|s| s.cents).sum::<u64>(), w.total_cents());
        let ledger: Vec<LedgerEntry> = w
            .deliveries
            .iter()
            .map(|&event| LedgerEntry {
                event,
                amount_cents: w.amounts[event as usize],
            })
            .collect();
        let every_delivery = check_balances(&sums, &ledger_balances(&w, 4, &ledger));
        assert_eq!(every_delivery.double_charges, w.extra_deliveries());
        assert_eq!(every_delivery.lost_charges, 0);
    }

    /// The demo in small, with a real SIGKILL of a real consumer process, in each mode: the
    /// ledger must hold every event exactly once.
    #[test]
    fn tiny_demo_end_to_end() {
        let _fork = crate::fork_guard();
        let launcher = test_launcher();
        for (mode, durability) in [
            (DedupMode::Claims, None),
            (DedupMode::Claims, Some("sync")),
            (DedupMode::Batch, None),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let args = tiny(&dir.path().join("run"), mode, durability);
            let report = run(&args, &launcher).unwrap();
            let case = format!("{mode} {}", report.durability);
            let d = &report.dedup;
            assert!(d.verdict.exactly_once(), "{case}: {:?}", d.verdict);
            assert_eq!(d.verdict.charges, 3_000, "{case}");
            assert_eq!(d.restarts, 1, "{case}");
            assert!(d.resent_after_crash > 0, "{case}");
            assert!((1..=WINDOW as u64 * 50).contains(&d.resent_after_crash));
            // Every acknowledged delivery was charged or answered as a duplicate, once.
            let t = &d.totals;
            assert_eq!(
                t.inserted + t.in_doubt + t.duplicates,
                d.acked_deliveries,
                "{case}"
            );
            assert_eq!(d.acked_deliveries, 3_000 + report.channel_extra_deliveries);
            assert_eq!(d.sent_deliveries, d.acked_deliveries + d.resent_after_crash);
            // The charges counted by the acknowledgements and the reconciliation, plus those the
            // killed consumer made in batches it never acknowledged (at most the re-sent ones),
            // are the ledger's.
            let reconciled = d.reconciled();
            let counted = t.inserted + t.in_doubt + reconciled.charged_now;
            assert!(counted <= 3_000, "{case}: {counted}");
            assert!(3_000 - counted <= d.resent_after_crash, "{case}: {counted}");
            assert_eq!(
                reconciled.in_doubt,
                reconciled.in_ledger + reconciled.charged_now + reconciled.released,
                "{case}"
            );
            match mode {
                DedupMode::Claims => assert_eq!(t.in_doubt, 0, "{case}"),
                DedupMode::Batch => assert_eq!(reconciled, Reconciled::default(), "{case}"),
                DedupMode::State => unreachable!("tiny_state_demo_end_to_end"),
            }
            let batches = (3_000 + report.channel_extra_deliveries).div_ceil(50);
            assert_eq!(d.commit_latency.count(), batches);
            assert_eq!(d.final_live_keys, 3_000, "{case}");
            assert_eq!(d.starts.len(), 2);
            let naive = report.naive.as_ref().unwrap();
            assert!(naive.verdict.double_charged_events >= report.duplicated_events);
            assert_eq!(naive.verdict.lost, 0);
            assert!(naive.verdict.charges >= naive.acked_deliveries);
            assert!(naive.verdict.charges <= naive.sent_deliveries);
            let text = render(&report);
            assert!(text.contains("double charges"), "{text}");
            assert!(
                text.contains("OK: with idem every event was charged exactly once"),
                "{text}"
            );
            if mode == DedupMode::Claims {
                assert!(text.contains("claims in doubt after the crash: "), "{text}");
            }
            // The directory was given, so it is kept; a second run there is refused.
            assert!(report.dir_kept);
            let again = run(&args, &launcher).unwrap_err().to_string();
            assert!(again.contains("not empty"), "{again}");
        }
    }

    #[test]
    fn verify_counts_double_lost_and_wrong() {
        let _fork = crate::fork_guard();
        let amounts = [100, 200, 300, 400];
        let entry = |event, amount_cents| LedgerEntry {
            event,
            amount_cents,
        };
        let ok = verify(
            &amounts,
            &[entry(0, 100), entry(2, 300), entry(1, 200), entry(3, 400)],
        );
        assert!(ok.exactly_once());
        assert_eq!(ok.charges, 4);
        let bad = verify(
            &amounts,
            &[
                entry(0, 100),
                entry(0, 100),
                entry(0, 100),
                entry(1, 200),
                entry(1, 200),
                entry(2, 999),
                entry(9, 1),
            ],
        );
        assert_eq!(bad.double_charged_events, 2);
        assert_eq!(bad.extra_charges, 3);
        assert_eq!(bad.overcharged_cents, 400);
        assert_eq!(bad.lost, 1);
        assert_eq!(bad.wrong_amount, 1);
        assert_eq!(bad.unknown_events, 1);
        assert!(!bad.exactly_once());
    }

    #[test]
    fn render_shows_a_failure() {
        let _fork = crate::fork_guard();
        let mut dedup = RunResult {
            wall: Duration::from_secs(2),
            sent_deliveries: 10,
            acked_deliveries: 10,
            resent_after_crash: 0,
            restarts: 0,
            killed_after: None,
            totals: BatchReport::default(),
            commit_latency: Histogram::default(),
            starts: Vec::new(),
            final_fsyncs: 0,
            final_disk_bytes: 0,
            final_live_keys: 0,
            verdict: Verdict::default(),
            balances: None,
            applied_unacked: 0,
            final_position: None,
        };
        dedup.verdict.double_charged_events = 1;
        let report = DemoReport {
            ttl: Duration::from_secs(24 * 3600),
            events: 10,
            dup_rate: 0.1,
            durability: "never".parse().unwrap(),
            batch: 5,
            mode: DedupMode::Batch,
            threads: 1,
            customers: 0,
            seed: 1,
            kill_at: None,
            dir: PathBuf::from("/nowhere"),
            dir_kept: false,
            channel_extra_deliveries: 0,
            duplicated_events: 1,
            blip: 0..1,
            total_cents: 1000,
            dedup,
            naive: None,
            broker: Broker::Pipe,
            ack_wait: Duration::from_secs(3),
        };
        let text = render(&report);
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("throughput (events/s)"), "{text}");
        assert!(text.contains("5"), "{text}");
        assert_eq!(to_json(&report)["double_charges"], 1);
        assert_eq!(to_json(&report)["balances_wrong"], serde_json::Value::Null);
        // State mode: one wrong balance fails the run even with the counts right.
        let mut report = report;
        report.mode = DedupMode::State;
        report.customers = 3;
        report.dedup.verdict = Verdict::default();
        report.dedup.balances = Some(BalanceCheck {
            checked: 3,
            wrong: 1,
            ..BalanceCheck::default()
        });
        assert!(!report.dedup.exactly_once());
        let text = render(&report);
        assert!(
            text.contains("FAILED: with idem 1 balances wrong"),
            "{text}"
        );
        assert_eq!(to_json(&report)["balances_wrong"], 1);
    }
}

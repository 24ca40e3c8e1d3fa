//! `idem demo --broker nats` (feature `nats`): the double-charge incident over a real NATS
//! JetStream stream instead of the demo's own pipe.
//!
//! The parent process starts (or is given) a JetStream server, creates a file-backed stream and
//! two durable pull consumers on it (one for the run with idem, one for the run without), and
//! publishes the workload's channel schedule into the stream: every charge event, the network
//! blip's re-sends and the scattered retries, each a message `<event-id> <amount> <customer>`
//! (no `Nats-Msg-Id`: the producer's re-sends are new messages to JetStream, as they are to any
//! broker without publish dedup). Meanwhile it runs the consumer process
//! (`idem demo-nats-consumer`, hidden) and reads its acknowledgement reports on stdout, the
//! protocol of [`crate::protocol`]; at `--kill-at` of the deliveries it kills the process with
//! SIGKILL and starts a new one. Nothing is re-sent by the demo: JetStream redelivers every
//! message the killed consumer fetched and did not ack, once its ack wait runs out.
//!
//! The consumer binds to its durable consumer and loops: fetch up to `--batch` messages, run them
//! through [`Consumer::stage_batch_async`] (idem's `check_or_insert_batch_async`, or every
//! delivery for the run without idem), fsync the ledger, then ack each message. It stops once
//! JetStream says every message of the stream is acknowledged. The ledgers are then checked as
//! on the pipe ([`crate::demo::verify`]) and the report is the pipe demo's, plus the
//! redeliveries seen.
//!
//! Invariants: a message is acked only after its charge (or idem's `Duplicate` answer for it) is
//! durable in the ledger and idem; the server the demo started is stopped by its process id on
//! every path ([`NatsServer`]'s drop); with --nats-url the demo's stream is deleted at the end.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli_error::{CliError, CliResult, Context};
use crate::consumer::{self, read_ledger, ConsumerArgs, DedupMode};
use crate::demo::{
    add, default_durability, verify, workspace, Broker, DemoArgs, DemoReport, Launcher, Progress,
    RunResult, LEASE_SECS,
};
use crate::fmt;
use crate::nats_server::NatsServer;
use crate::protocol::{self, ToProducer};
use crate::workload::{self, Workload};

/// The durable consumer of the run with idem, and of the run without.
const WITH_IDEM: &str = "with-idem";
const WITHOUT_IDEM: &str = "without-idem";
/// Publishes in flight (sent, ack not yet received) before the producer waits for the oldest.
const PUBLISH_WINDOW: usize = 1024;

/// The consumer process of `idem demo --broker nats`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConsumerArgs {
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// The NATS server.
    #[arg(long)]
    pub nats_url: String,
    /// The JetStream stream.
    #[arg(long)]
    pub stream: String,
    /// The durable pull consumer on it.
    #[arg(long)]
    pub durable: String,
    /// Messages per fetch (one idem commit and one ledger fsync each).
    #[arg(long, default_value_t = 1000)]
    pub batch: u32,
    /// Stop once every message up to this stream sequence is acknowledged.
    #[arg(long)]
    pub until: u64,
}

impl NatsConsumerArgs {
    fn to_argv(&self) -> Vec<OsString> {
        let mut argv = self.consumer.to_argv();
        for (flag, value) in [
            ("--nats-url", self.nats_url.clone()),
            ("--stream", self.stream.clone()),
            ("--durable", self.durable.clone()),
            ("--batch", self.batch.to_string()),
            ("--until", self.until.to_string()),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        argv
    }
}

/// A runtime for the NATS client: two workers, so that the connection's tasks run while a
/// consumer's `block_in_place` waits for the ledger's fsync.
pub fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub async fn connect(url: &str) -> CliResult<jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .context(format_args!("connecting to NATS at {url}"))?;
    Ok(jetstream::new(client))
}

/// `idem demo-nats-consumer`: serves until the stream is consumed, reporting on stdout.
pub fn consumer_main(args: &NatsConsumerArgs) -> CliResult<ExitCode> {
    let stdout = std::io::stdout();
    serve(args, &mut stdout.lock())?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the consumer (store, ledger) and consumes the durable consumer `args.durable` until
/// every message up to `args.until` is acknowledged; reports ready, each batch and the summary
/// on `output`.
pub fn serve(args: &NatsConsumerArgs, output: &mut impl Write) -> CliResult<()> {
    let runtime = runtime()?;
    let (mut consumer, ready) = consumer::open(&args.consumer)?;
    let mut write = |message: &ToProducer| {
        protocol::write_to_producer(output, message).context("writing to the producer")
    };
    runtime.block_on(async {
        let js = connect(&args.nats_url).await?;
        let mut source: jetstream::consumer::Consumer<pull::Config> = js
            .get_consumer_from_stream(&args.durable, &args.stream)
            .await
            .context(format_args!(
                "binding to the durable consumer {} of stream {}",
                args.durable, args.stream
            ))?;
        write(&ready)?;
        for seq in 0u64.. {
            let mut fetched = source
                .batch()
                .max_messages(args.batch as usize)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .context("fetching messages")?;
            let mut messages = Vec::new();
            while let Some(message) = fetched.next().await {
                messages.push(message.context("fetching messages")?);
            }
            if messages.is_empty() {
                let info = source.info().await.context("reading consumer info")?;
                if info.ack_floor.stream_sequence >= args.until && info.num_ack_pending == 0 {
                    return Ok(());
                }
                continue;
            }
            let mut items = Vec::with_capacity(messages.len());
            let mut redelivered = 0;
            for message in &messages {
                let info = message.info().context("reading a message's metadata")?;
                redelivered += u64::from(info.delivered > 1);
                let body = std::str::from_utf8(&message.payload)
                    .map_err(|_| CliError::new("a message body is not UTF-8"))?;
                items.push(protocol::parse_delivery(body)?);
            }
            let mut report = consumer.stage_batch_async(seq, &items).await?;
            // The ledger's fsync blocks this thread only; the connection runs on the workers.
            tokio::task::block_in_place(|| consumer.ledger.commit())?;
            for message in &messages {
                message.ack().await.context("acking a message")?;
            }
            report.redelivered = redelivered;
            write(&ToProducer::Ack { seq, report })?;
        }
        Ok::<(), CliError>(())
    })?;
    let (fsyncs, disk_bytes, live_keys) = consumer.finish()?;
    write(&ToProducer::Summary {
        fsyncs,
        disk_bytes,
        live_keys,
    })
}

/// The stream and the subject of one demo run (unique, so that runs can share a server).
struct Names {
    stream: String,
    subject: String,
}

impl Names {
    fn new() -> Names {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = format!("{}_{nanos}", std::process::id());
        Names {
            stream: format!("IDEM_DEMO_{tag}"),
            subject: format!("idem-demo.{tag}.charges"),
        }
    }
}

/// Creates the stream (file storage) and the two durable pull consumers with explicit acks.
async fn create(
    js: &jetstream::Context,
    names: &Names,
    ack_wait: Duration,
    batch: u32,
) -> CliResult<()> {
    let config = stream::Config {
        name: names.stream.clone(),
        subjects: vec![names.subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let stream = js
        .create_stream(config)
        .await
        .context(format_args!("creating JetStream stream {}", names.stream))?;
    for durable in [WITH_IDEM, WITHOUT_IDEM] {
        let config = pull::Config {
            durable_name: Some(durable.to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            // Room for the batch in hand and the next one; more would only wait for acks.
            max_ack_pending: i64::from(batch) * 4,
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .context(format_args!("creating durable consumer {durable}"))?;
    }
    Ok(())
}

/// Publishes the channel's schedule, [`PUBLISH_WINDOW`] publishes in flight; returns the number
/// JetStream acknowledged.
async fn publish(js: &jetstream::Context, subject: &str, workload: &Workload) -> CliResult<u64> {
    let mut in_flight = std::collections::VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut acked = 0u64;
    let mut body = Vec::with_capacity(64);
    for &event in &workload.deliveries {
        body.clear();
        protocol::write_delivery(&mut body, event, workload)?;
        let ack = js
            .publish(subject.to_string(), body.clone().into())
            .await
            .context("publishing a charge event")?;
        in_flight.push_back(ack);
        if in_flight.len() >= PUBLISH_WINDOW {
            if let Some(ack) = in_flight.pop_front() {
                ack.await.context("waiting for JetStream's publish ack")?;
                acked += 1;
            }
        }
    }
    for ack in in_flight {
        ack.await.context("waiting for JetStream's publish ack")?;
        acked += 1;
    }
    Ok(acked)
}

/// Runs one consumer (with idem or without) through the stream, killing it once at `kill_at`.
fn run_once(
    channel: u64,
    args: &NatsConsumerArgs,
    launcher: &Launcher,
    kill_at: Option<f64>,
    seed: u64,
    progress: &Progress,
) -> CliResult<RunResult> {
    let kill_after = kill_at.map(|f| (f * channel as f64) as u64);
    let mut kill_rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let started = Instant::now();
    let spawn = || launcher.spawn_argv("demo-nats-consumer", args.to_argv());
    let mut consumer = spawn()?;
    let mut starts = vec![consumer.wait_ready(started)?];
    let mut result = RunResult::default();
    let mut last_ack = Instant::now();
    loop {
        let report = match consumer.read()? {
            ToProducer::Ack { report, .. } => report,
            ToProducer::Summary {
                fsyncs,
                disk_bytes,
                live_keys,
            } => {
                result.final_fsyncs = fsyncs;
                result.final_disk_bytes = disk_bytes;
                result.final_live_keys = live_keys;
                break;
            }
            other => return Err(consumer.failed(format!("expected an ack, got {other:?}"))),
        };
        let now = Instant::now();
        let ack_interval = now - last_ack;
        last_ack = now;
        let delivered =
            report.inserted + report.duplicates + report.in_doubt + report.charged_blindly;
        result.acked_deliveries += delivered;
        add(&mut result.totals, &report);
        if args.consumer.store.is_some() {
            result.commit_latency.record(report.commit_nanos);
        }
        progress.bar.inc(delivered);
        let due = kill_after.is_some_and(|k| result.acked_deliveries >= k);
        if due && result.killed_after.is_none() && result.acked_deliveries < channel {
            consumer.kill_within(ack_interval, &mut kill_rng)?;
            result.killed_after = Some(result.acked_deliveries);
            result.restarts += 1;
            progress.say(&format!(
                "  consumer killed with SIGKILL after {} acknowledged deliveries; restarting (JetStream redelivers what it did not ack)",
                fmt::count(result.acked_deliveries),
            ));
            let respawned = Instant::now();
            consumer = spawn()?;
            let ready = consumer.wait_ready(respawned)?;
            let note = match args.consumer.store {
                Some(_) => format!(
                    "store reopened, {} records replayed; ledger of {} charges reloaded",
                    fmt::count(ready.records_replayed),
                    fmt::count(ready.ledger_lines_read),
                ),
                None => "no store, nothing to recover".to_string(),
            };
            progress.say(&format!(
                "  consumer restarted in {} ({note})",
                fmt::nanos(ready.spawn_to_ready.as_nanos() as u64),
            ));
            starts.push(ready);
        }
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
    result.resent_after_crash = result.totals.redelivered;
    result.sent_deliveries = channel + result.totals.redelivered;
    Ok(result)
}

/// Runs the demo over NATS and returns its report (does not print it).
pub fn run(args: &DemoArgs, launcher: &Launcher) -> CliResult<DemoReport> {
    if args.mode == DedupMode::State {
        return Err(CliError::new(
            "--mode state runs on the demo's own channel only; over NATS the consumer uses check_or_insert_batch_async",
        ));
    }
    let (temp, root) = workspace(args.dir.as_deref())?;
    let mut workload = workload::generate(args.events, args.dup_rate, args.seed);
    workload.assign_customers(1, args.seed);
    let kill_at = (!args.no_kill).then_some(args.kill_at);
    let durability = args
        .durability
        .unwrap_or(default_durability(DedupMode::Batch));

    // Declared before the runtime and the stream: dropped (the server stopped) last.
    let server = match &args.nats_url {
        Some(_) => None,
        None => Some(NatsServer::start(&root.join("nats"))?),
    };
    let url = match (&args.nats_url, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url(),
        (None, None) => unreachable!("a server is started when no URL is given"),
    };
    let runtime = runtime()?;
    let names = Names::new();
    let js = runtime.block_on(async {
        let js = connect(&url).await?;
        create(&js, &names, args.ack_wait, args.batch).await?;
        Ok::<_, CliError>(js)
    })?;
    let plan = Plan {
        args,
        launcher,
        workload: &workload,
        durability,
        root: &root,
        url: &url,
        names: &names,
        kill_at,
    };
    let result = plan.run_both(&runtime, &js);
    if args.nats_url.is_some() {
        // A server we did not start keeps running: leave nothing of ours on it.
        let _ = runtime.block_on(js.delete_stream(&names.stream));
    }
    drop(runtime);
    drop(server);
    let (dedup, naive) = result?;

    let dir_kept = temp.is_none();
    drop(temp);
    Ok(DemoReport {
        ttl: args.ttl,
        events: args.events,
        dup_rate: args.dup_rate,
        durability,
        batch: args.batch,
        mode: DedupMode::Batch,
        threads: args.threads,
        customers: 0,
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
        broker: Broker::Nats,
        ack_wait: args.ack_wait,
    })
}

/// What the two runs share.
struct Plan<'a> {
    args: &'a DemoArgs,
    launcher: &'a Launcher,
    workload: &'a Workload,
    durability: crate::args::DurabilityArg,
    root: &'a std::path::Path,
    url: &'a str,
    names: &'a Names,
    kill_at: Option<f64>,
}

impl Plan<'_> {
    /// The producer, the run with idem (concurrently with the producer), then the run without.
    fn run_both(
        &self,
        runtime: &tokio::runtime::Runtime,
        js: &jetstream::Context,
    ) -> CliResult<(RunResult, Option<RunResult>)> {
        let Plan {
            args,
            launcher,
            workload,
            durability,
            root,
            url,
            names,
            kill_at,
        } = *self;
        let channel = workload.deliveries.len() as u64;
        let consumer_args = |durable: &str, ledger: &str, store: bool| NatsConsumerArgs {
            consumer: ConsumerArgs {
                ledger: root.join(ledger),
                store: store.then(|| root.join("store")),
                durability,
                ttl_ms: u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX),
                mode: DedupMode::Batch,
                threads: args.threads,
                lease_secs: LEASE_SECS,
            },
            nats_url: url.to_string(),
            stream: names.stream.clone(),
            durable: durable.to_string(),
            batch: args.batch,
            until: channel,
        };
        let quiet = args.quiet || args.json;
        let progress = Progress::new(quiet, "with idem", channel);
        progress.say(&format!(
        "idem demo --broker nats: {} charge events, {} messages published to JetStream stream {} at {url}; consumer with idem (check_or_insert_batch_async, {durability})",
        fmt::count(u64::from(args.events)),
        fmt::count(channel),
        names.stream,
    ));
        let producer = {
            let (handle, js, subject) =
                (runtime.handle().clone(), js.clone(), names.subject.clone());
            let workload = workload.clone();
            std::thread::spawn(move || handle.block_on(publish(&js, &subject, &workload)))
        };
        let with = consumer_args(WITH_IDEM, "ledger.txt", true);
        let dedup = run_once(channel, &with, launcher, kill_at, args.seed, &progress);
        progress.bar.finish_and_clear();
        let published = producer
            .join()
            .map_err(|_| CliError::new("the producer thread panicked"))?;
        let mut dedup = dedup?;
        let published = published?;
        if published != channel {
            return Err(CliError::new(format!(
                "JetStream acknowledged {published} of the {channel} messages published"
            )));
        }
        dedup.verdict = verify(&workload.amounts, &read_ledger(&with.consumer.ledger)?);
        let naive = if args.no_naive {
            None
        } else {
            let without = consumer_args(WITHOUT_IDEM, "naive-ledger.txt", false);
            let progress = Progress::new(quiet, "without idem", channel);
            progress.say("same stream, naive consumer without idem (charges every delivery)");
            let naive = run_once(channel, &without, launcher, kill_at, args.seed, &progress);
            progress.bar.finish_and_clear();
            let mut naive = naive?;
            naive.verdict = verify(&workload.amounts, &read_ledger(&without.consumer.ledger)?);
            Some(naive)
        };
        Ok((dedup, naive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{self, parse_args, serve_as_child};
    use crate::nats_server;

    const CHILD_ENV: &str = "IDEM_NATS_DEMO_TEST_CONSUMER_ARGS";
    const CHILD_TEST: &str = "nats_demo::tests::nats_consumer_child_process";

    /// Not a test of its own: the consumer process of `tiny_nats_demo_end_to_end`, which spawns
    /// this test binary running only this test with the consumer's arguments in the environment.
    #[test]
    fn nats_consumer_child_process() {
        let _fork = crate::fork_guard();
        serve_as_child(CHILD_ENV, |args: NatsConsumerArgs| {
            serve(&args, &mut std::io::stdout().lock())
        });
    }

    /// `idem demo --broker nats` in small, on a real nats-server with a real SIGKILL of a real
    /// consumer process: with idem every event is charged once though JetStream redelivered
    /// what the killed consumer had not acked; without idem the channel's re-sends are charged
    /// again. Skipped (and says so) where nats-server is not installed.
    #[test]
    fn tiny_nats_demo_end_to_end() {
        let _fork = crate::fork_guard();
        if !nats_server::available() {
            eprintln!(
                "skipped tiny_nats_demo_end_to_end: nats-server is not on the PATH ({})",
                nats_server::INSTALL_HINT
            );
            return;
        }
        let launcher = Launcher::TestHarness {
            exe: std::env::current_exe().unwrap(),
            test: CHILD_TEST,
            env: CHILD_ENV,
        };
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let args: DemoArgs = parse_args(
            [
                "--broker",
                "nats",
                "--events",
                "3000",
                "--dup-rate",
                "0.02",
                "--batch",
                "50",
                "--ack-wait",
                "1s",
                "--seed",
                "7",
                "--quiet",
                "--dir",
            ]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain([run_dir.clone().into_os_string()]),
        )
        .unwrap();
        let report = run(&args, &launcher).unwrap();
        let d = &report.dedup;
        assert!(d.verdict.exactly_once(), "{:?}", d.verdict);
        assert_eq!(d.verdict.charges, 3_000);
        assert_eq!(d.restarts, 1);
        assert_eq!(d.starts.len(), 2);
        assert_eq!(d.final_live_keys, 3_000);
        let channel = 3_000 + report.channel_extra_deliveries;
        assert_eq!(d.sent_deliveries, channel + d.totals.redelivered);
        // Every delivery was reported acked but those of the batch the killed consumer may have
        // acked to JetStream without telling the demo.
        assert!(d.acked_deliveries <= d.sent_deliveries);
        assert!(d.sent_deliveries - d.acked_deliveries <= 50, "{d:?}");
        assert!(d.totals.duplicates >= report.channel_extra_deliveries);
        // The restarted consumer found the killed one's charges in the store and the ledger.
        assert!(d.starts[1].records_replayed > 0);
        assert_eq!(d.starts[1].ledger_lines_read, d.starts[1].records_replayed);
        let naive = report.naive.as_ref().unwrap();
        assert!(naive.verdict.double_charged_events >= report.duplicated_events);
        assert_eq!(naive.verdict.lost, 0);
        assert_eq!(naive.restarts, 1);
        let text = demo::render(&report);
        assert!(text.contains("over a NATS JetStream stream"), "{text}");
        assert!(text.contains("redelivered by JetStream"), "{text}");
        assert!(
            text.contains("OK: with idem every event was charged exactly once"),
            "{text}"
        );
        let json = demo::to_json(&report);
        assert_eq!(json["broker"], "nats", "{json}");
        assert_eq!(json["events"], 3_000, "{json}");
        assert_eq!(json["double_charges"], 0, "{json}");
        assert_eq!(json["lost_charges"], 0, "{json}");
        assert_eq!(json["redelivered"], d.totals.redelivered, "{json}");
        assert_eq!(json["consumer_restarts"], 1, "{json}");
        assert_eq!(json["exactly_once"], true, "{json}");
        // The demo started its own server, its store and log in the run's directory.
        let log = std::fs::read_to_string(run_dir.join("nats/nats-server.log")).unwrap();
        assert!(log.contains("JetStream"), "{log}");
    }

    #[test]
    fn an_unreachable_nats_url_is_a_clear_error() {
        let _fork = crate::fork_guard();
        // A URL nothing listens on: the demo says where it tried.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("nats://127.0.0.1:{port}");
        let args: DemoArgs = parse_args([
            "--broker",
            "nats",
            "--events",
            "10",
            "--quiet",
            "--nats-url",
            &url,
        ])
        .unwrap();
        let launcher = Launcher::this_executable().unwrap();
        let error = run(&args, &launcher).unwrap_err().to_string();
        assert!(error.contains("connecting to NATS at"), "{error}");
    }
}

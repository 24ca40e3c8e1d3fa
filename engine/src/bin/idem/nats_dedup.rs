//! `idem nats-dedup` (feature `nats`): idem's dedup window against JetStream's own publish dedup,
//! with the same IDs and the same count.
//!
//! JetStream drops a published message whose `Nats-Msg-Id` it saw within the stream's
//! `duplicate_window`; it keeps those IDs in the server's memory. idem keeps them in its index
//! (RAM) and its log (disk). This command measures, for `--ids` IDs (the demo's event ids) and a
//! window of `--window`:
//! - JetStream: a fresh `nats-server -js` (file storage, scratch directory) per case; the growth
//!   of the server's VmRSS (/proc/<pid>/status) over publishing the IDs once, per ID; publish
//!   throughput (acks awaited, 1,024 in flight); then every ID published again, all of which
//!   must come back `duplicate`. Two cases: a stream that keeps its messages (as any real one),
//!   and one limited to a single message (`max_msgs = 1`), whose growth is the dedup map's.
//! - idem: a store in a scratch directory (periodic durability, like JetStream's file store,
//!   which does not fsync each publish); this process's VmRSS growth per ID, disk per ID,
//!   `check_or_insert` throughput, then every ID again, all of which must answer `Duplicate`.
//!
//! From the bytes per ID: how many IDs 1 GiB holds, and so how long a window at `--rate` IDs/s.
//! Servers are started on loopback and stopped by process id ([`NatsServer`]).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};

use crate::args::parse_duration;
use crate::bench::rss_bytes;
use crate::cli_error::{CliError, CliResult, Context};
use crate::fmt;
use crate::nats_demo::{connect, runtime};
use crate::nats_server::NatsServer;
use crate::workload::event_id;

pub const LONG_ABOUT: &str = "\
Compare idem's dedup window with JetStream's publish dedup (Nats-Msg-Id within a stream's \
duplicate_window), same IDs, same count: memory per ID (the nats-server's VmRSS growth against \
idem's, plus idem's disk per ID), how long a window each holds in 1 GiB at --rate IDs per second, \
and throughput (first publishes / inserts, then every ID again as a duplicate). Starts a scratch \
nats-server -js per case on a free loopback port (nats-server must be on the PATH) and stops it \
by its process id.";

const GIB: f64 = (1u64 << 30) as f64;
/// Publishes in flight before the producer waits for the oldest ack.
const WINDOW: usize = 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct NatsDedupArgs {
    /// Distinct IDs to deduplicate (the demo's event ids).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..=50_000_000))]
    pub ids: u32,
    /// The dedup window: JetStream's duplicate_window, idem's TTL.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub window: Duration,
    /// The ID rate the window in 1 GiB is computed for, IDs per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One side's measurements.
#[derive(Debug, Clone)]
pub struct Side {
    pub name: &'static str,
    /// Resident memory grown per ID.
    pub rss_per_id: Option<f64>,
    /// Bytes on disk per ID.
    pub disk_per_id: f64,
    pub first_per_sec: f64,
    pub again_per_sec: f64,
    /// IDs the second pass found duplicate (must be all).
    pub duplicates_caught: u64,
}

impl Side {
    /// IDs 1 GiB of memory holds.
    fn ids_per_gib(&self) -> Option<f64> {
        self.rss_per_id.filter(|b| *b > 0.0).map(|b| GIB / b)
    }
}

/// A fresh server, one stream with the window, the IDs published twice.
fn jetstream_case(
    args: &NatsDedupArgs,
    scratch: &Path,
    name: &'static str,
    max_msgs: i64,
) -> CliResult<Side> {
    let server = NatsServer::start(scratch)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let js = connect(&server.url()).await?;
        js.create_stream(stream::Config {
            name: "DEDUP".to_string(),
            subjects: vec!["dedup".to_string()],
            storage: stream::StorageType::File,
            duplicate_window: args.window,
            max_messages: max_msgs,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
        // Let the server settle after the stream's creation before the baseline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = server.rss_bytes();
        let started = Instant::now();
        publish_all(&js, args.ids).await?;
        let first = started.elapsed();
        let after = server.rss_bytes();
        let started = Instant::now();
        let duplicates = publish_all(&js, args.ids).await?;
        let again = started.elapsed();
        let ids = f64::from(args.ids);
        Ok(Side {
            name,
            rss_per_id: before.zip(after).map(|(b, a)| (a as f64 - b as f64) / ids),
            disk_per_id: dir_bytes(&scratch.join("jetstream")) as f64 / ids,
            first_per_sec: ids / first.as_secs_f64(),
            again_per_sec: ids / again.as_secs_f64(),
            duplicates_caught: duplicates,
        })
    })
}

/// Publishes one message per ID with `Nats-Msg-Id`; returns how many JetStream called
/// duplicates.
async fn publish_all(js: &jetstream::Context, ids: u32) -> CliResult<u64> {
    let mut in_flight = std::collections::VecDeque::with_capacity(WINDOW);
    let mut duplicates = 0u64;
    for index in 0..ids {
        let message = PublishMessage::build()
            .payload(format!("{index}").into())
            .message_id(event_id(index));
        let ack = js
            .send_publish("dedup", message)
            .await
            .context("publishing")?;
        in_flight.push_back(ack);
        if in_flight.len() >= WINDOW {
            if let Some(ack) = in_flight.pop_front() {
                duplicates += u64::from(ack.await.context("publish ack")?.duplicate);
            }
        }
    }
    for ack in in_flight {
        duplicates += u64::from(ack.await.context("publish ack")?.duplicate);
    }
    Ok(duplicates)
}

/// idem with the same IDs: a store in `dir`, each ID inserted, then each again.
fn idem_case(args: &NatsDedupArgs, dir: &Path) -> CliResult<Side> {
    let config =
        idem::Config::default().durability(idem::Durability::Periodic(Duration::from_millis(10)));
    let store = idem::Store::open_with(dir, config).context("opening the idem store")?;
    let before = rss_bytes();
    let started = Instant::now();
    for index in 0..args.ids {
        store.check_or_insert(event_id(index).as_bytes(), args.window, b"")?;
    }
    let first = started.elapsed();
    let after = rss_bytes();
    let started = Instant::now();
    let mut duplicates = 0u64;
    for index in 0..args.ids {
        let outcome = store.check_or_insert(event_id(index).as_bytes(), args.window, b"")?;
        duplicates += u64::from(outcome.is_duplicate());
    }
    let again = started.elapsed();
    store.flush()?;
    let disk = store.stats().disk_bytes;
    store.close().context("closing the idem store")?;
    let ids = f64::from(args.ids);
    Ok(Side {
        name: "idem (periodic-10)",
        rss_per_id: before.zip(after).map(|(b, a)| (a as f64 - b as f64) / ids),
        disk_per_id: disk as f64 / ids,
        first_per_sec: ids / first.as_secs_f64(),
        again_per_sec: ids / again.as_secs_f64(),
        duplicates_caught: duplicates,
    })
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn run(args: &NatsDedupArgs) -> CliResult<Vec<Side>> {
    let scratch = tempfile::Builder::new()
        .prefix("idem-nats-dedup-")
        .tempdir()
        .context("creating a scratch directory")?;
    // idem first, in this process, before any runtime or connection adds to its RSS.
    let idem = idem_case(args, &scratch.path().join("idem"))?;
    let kept = jetstream_case(
        args,
        &scratch.path().join("js-kept"),
        "JetStream (stream keeps messages)",
        -1,
    )?;
    let map_only = jetstream_case(
        args,
        &scratch.path().join("js-map"),
        "JetStream (max_msgs 1: dedup map)",
        1,
    )?;
    let sides = vec![idem, kept, map_only];
    if let Some(side) = sides
        .iter()
        .find(|s| s.duplicates_caught != u64::from(args.ids))
    {
        return Err(CliError::new(format!(
            "{} caught {} of {} duplicates",
            side.name, side.duplicates_caught, args.ids
        )));
    }
    Ok(sides)
}

fn window_for(side: &Side, rate: u32) -> Option<Duration> {
    side.ids_per_gib()
        .map(|ids| Duration::from_secs((ids / f64::from(rate)) as u64))
}

pub fn render(args: &NatsDedupArgs, sides: &[Side]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "idem nats-dedup: {} IDs, window {}, same IDs on each side\n",
        fmt::count(u64::from(args.ids)),
        humantime::format_duration(args.window)
    );
    let _ = writeln!(
        out,
        "  {:<36}{:>12}{:>12}{:>14}{:>14}{:>14}{:>14}",
        "", "RSS/ID", "disk/ID", "IDs in 1 GiB", "window @rate", "first/s", "again/s"
    );
    for side in sides {
        let rss = side
            .rss_per_id
            .map_or("-".to_string(), |b| format!("{b:.0} B"));
        let ids = side
            .ids_per_gib()
            .map_or("-".to_string(), |n| fmt::count(n as u64));
        let window = window_for(side, args.rate).map_or("-".to_string(), |w| {
            format!("{:.1} h", w.as_secs_f64() / 3600.0)
        });
        let _ = writeln!(
            out,
            "  {:<36}{:>12}{:>12}{:>14}{:>14}{:>14}{:>14}",
            side.name,
            rss,
            format!("{:.0} B", side.disk_per_id),
            ids,
            window,
            fmt::rate(side.first_per_sec),
            fmt::rate(side.again_per_sec),
        );
    }
    let _ = writeln!(
        out,
        "\n  window @rate: how long a window 1 GiB of memory holds at {} IDs/s. Every ID sent twice was caught on each side.",
        fmt::count(u64::from(args.rate))
    );
    out
}

pub fn to_json(args: &NatsDedupArgs, sides: &[Side]) -> serde_json::Value {
    let side = |s: &Side| {
        serde_json::json!({
            "name": s.name,
            "rss_bytes_per_id": s.rss_per_id,
            "disk_bytes_per_id": s.disk_per_id,
            "ids_per_gib": s.ids_per_gib(),
            "window_seconds_in_gib": window_for(s, args.rate).map(|w| w.as_secs()),
            "first_per_sec": s.first_per_sec,
            "again_per_sec": s.again_per_sec,
            "duplicates_caught": s.duplicates_caught,
        })
    };
    serde_json::json!({
        "ids": args.ids,
        "window_seconds": args.window.as_secs(),
        "rate": args.rate,
        "sides": sides.iter().map(side).collect::<Vec<_>>(),
    })
}

pub fn main(args: &NatsDedupArgs) -> CliResult<ExitCode> {
    let sides = run(args)?;
    if args.json {
        println!("{}", to_json(args, &sides));
    } else {
        print!("{}", render(args, &sides));
    }
    Ok(ExitCode::SUCCESS)
}

//! The `idem` command-line tool.
//!
//! - `idem demo`: the problem idem exists for, end to end. A producer sends charge events over an
//!   at-least-once channel that re-sends some of them; a consumer *process* charges each one
//!   through idem into a ledger and is killed with SIGKILL midway; at the end the ledger is
//!   checked for double and lost charges, next to the same run without idem. With
//!   `--mode state` the consumer keeps per-customer balances in idem, changed by transactions
//!   with the dedup record and the channel position, and every balance is checked at the end.
//! - `idem bench`: a load generator to size idem for your own workload (throughput, latency, RAM
//!   and disk per key).
//! - `idem stats`, `idem verify`, `idem get`, `idem export`, `idem import`: tools for operators
//!   on a store directory that no process has open.
//! - `idem demo-consumer` (hidden): the consumer process that `idem demo` spawns.
//! - Feature `nats`: `idem demo --broker nats` runs the demo over a NATS JetStream stream (its
//!   consumer process is `idem demo-nats-consumer`, hidden), and `idem nats-dedup` compares
//!   idem's dedup window with JetStream's own publish dedup.
//!
//! Module map: `args` parses flag values, `cli_error` is the error type printed to the user,
//! `hist` the latency histogram, `workload` the demo's producer and channel, `protocol` the pipe
//! protocol between the demo and its consumer, `consumer` the consumer process (and the one
//! function that charges a batch), `claimer` its exactly-once protocol through idem's durable
//! claims (claim, charge, complete; in-doubt claims reconciled after a crash), `balances` the
//! state mode's (balances, dedup records and channel position in one transaction), `demo` the parent
//! side and its report, `bench` the load generator, `ops` the operator commands, `fmt` number
//! formatting. Feature `nats`: `nats_server` the scratch JetStream server, `nats_demo` the demo
//! over it (both processes' sides), `nats_dedup` the comparison of dedup windows, `nats_scale` the scale-out demo (partitions
//! replicated through a JetStream changelog on a 3-node cluster, a node killed, failover).

mod args;
mod balances;
mod bench;
mod claimer;
mod cli_error;
mod consumer;
mod demo;
mod fmt;
mod hist;
#[cfg(feature = "nats")]
mod nats_dedup;
#[cfg(feature = "nats")]
mod nats_demo;
#[cfg(feature = "nats")]
mod nats_scale;
#[cfg(feature = "nats")]
mod nats_server;
mod ops;
mod protocol;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// idem: an embedded dedup store for exactly-once consumers.
///
/// Networks deliver at least once, so consumers see some messages twice. idem is the table of
/// idempotency keys a consumer checks before its side effect: one durable check-or-insert with a
/// TTL, embedded in the consumer's process.
#[derive(Debug, Parser)]
#[command(
    name = "idem",
    version,
    about,
    long_about,
    propagate_version = true,
    after_help = "Examples:\n  idem demo                      the incident, 1M events, consumer killed midway\n  idem demo --events 100000 --durability never\n  idem demo --mode state         balances kept in idem by transactions, checked at the end\n  idem bench --keys 1000000 --threads 8 --batch 100 --durability sync\n  idem bench --json              one JSON object, for scripts\n  idem stats /var/lib/dedup      what a store holds (also: verify, get, export, import)\n  idem verify /var/lib/dedup     every segment and record checked, nothing changed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the double-charge incident end to end: a consumer process charges 1M events through
    /// idem, gets killed with SIGKILL midway and restarts; then check the ledger for double and
    /// lost charges, next to the same run without idem.
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Generate load against a store to size idem for your workload: ops/s, latency
    /// percentiles, RAM and disk per key.
    #[command(long_about = bench::LONG_ABOUT)]
    Bench(bench::BenchArgs),
    /// Show what a store holds: live keys, claims in doubt, segments and bytes, last
    /// checkpoint, format version.
    #[command(long_about = ops::STATS_ABOUT)]
    Stats(ops::StatsArgs),
    /// Check every segment, record, checkpoint and fence file without changing anything;
    /// report each damage with file and offset (exit 0 only when clean).
    #[command(long_about = ops::VERIFY_ABOUT)]
    Verify(ops::VerifyArgs),
    /// Print the value recorded for a key (text, or 0x... hex).
    #[command(long_about = ops::GET_ABOUT)]
    Get(ops::GetArgs),
    /// Write the live window (entries, claims, deadlines, fingerprints) to a checksummed file.
    #[command(long_about = ops::EXPORT_ABOUT)]
    Export(ops::ExportArgs),
    /// Import an export file into a store, refusing conflicts before writing anything.
    #[command(long_about = ops::IMPORT_ABOUT)]
    Import(ops::ImportArgs),
    /// The consumer process of `idem demo` (internal: speaks a line protocol on stdin/stdout).
    #[command(hide = true)]
    DemoConsumer(consumer::ConsumerArgs),
    /// The consumer process of `idem demo --broker nats` (internal: reads a JetStream durable
    /// consumer, reports on stdout).
    #[cfg(feature = "nats")]
    #[command(hide = true)]
    DemoNatsConsumer(nats_demo::NatsConsumerArgs),
    /// A consumer node of `idem demo --broker nats --replicate` (internal: owns and follows
    /// partitions, takes commands on stdin, reports on stdout).
    #[cfg(feature = "nats")]
    #[command(hide = true)]
    DemoScaleNode(nats_scale::ScaleNodeArgs),
    /// Throughput of a replicated partition (JetStream changelog) against a local-only one.
    #[cfg(feature = "nats")]
    #[command(long_about = nats_scale::BENCH_ABOUT)]
    ReplicationBench(nats_scale::ReplicationBenchArgs),
    /// Compare idem's dedup window with JetStream's publish dedup (Nats-Msg-Id within a
    /// duplicate_window): memory per ID, the window 1 GiB holds, throughput.
    #[cfg(feature = "nats")]
    #[command(long_about = nats_dedup::LONG_ABOUT)]
    NatsDedup(nats_dedup::NatsDedupArgs),
}

/// Serializes the tests that spawn child processes with the tests that open a store directory
/// again: a child forked while a store is open holds a copy of the store's lock file until it
/// execs, so a reopen in that window finds the directory locked (`Error::Locked`; seen once in
/// CI, `ops::tests::stats_and_get_report_what_the_store_holds` beside the demo's children).
#[cfg(test)]
static FORK_GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`FORK_GUARD`] for the rest of a test.
#[cfg(test)]
fn fork_guard() -> std::sync::MutexGuard<'static, ()> {
    FORK_GUARD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::main(&args),
        Command::Bench(args) => bench::main(&args),
        Command::DemoConsumer(args) => consumer::main(&args),
        #[cfg(feature = "nats")]
        Command::DemoNatsConsumer(args) => nats_demo::consumer_main(&args),
        #[cfg(feature = "nats")]
        Command::NatsDedup(args) => nats_dedup::main(&args),
        #[cfg(feature = "nats")]
        Command::DemoScaleNode(args) => nats_scale::node_main(&args),
        #[cfg(feature = "nats")]
        Command::ReplicationBench(args) => nats_scale::bench_main(&args),
        Command::Stats(args) => ops::stats(&args, &mut std::io::stdout()),
        Command::Verify(args) => ops::verify(&args, &mut std::io::stdout()),
        Command::Get(args) => ops::get(&args, &mut std::io::stdout()),
        Command::Export(args) => ops::export(&args, &mut std::io::stdout()),
        Command::Import(args) => ops::import(&args, &mut std::io::stdout()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("idem: error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_flags_are_errors_not_panics() {
        for argv in [
            &["idem", "demo", "--events", "many"][..],
            &["idem", "demo", "--durability", "sometimes"],
            &["idem", "demo", "--dup-rate", "2"],
            &["idem", "demo", "--kill-at", "1.5"],
            &["idem", "demo", "--batch", "0"],
            &["idem", "demo", "--mode", "sometimes"],
            &["idem", "demo", "--threads", "0"],
            &["idem", "demo", "--mode", "state", "--customers", "0"],
            &["idem", "bench", "--ttl", "0s"],
            &["idem", "bench", "--threads", "0"],
            &["idem", "bench", "--dup-ratio", "-0.1"],
            &["idem", "frobnicate"],
        ] {
            let parsed = Cli::try_parse_from(argv);
            assert!(parsed.is_err(), "{argv:?} should be rejected");
        }
    }

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["idem", "demo"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("not demo")
        };
        assert_eq!(args.events, 1_000_000);
        assert_eq!(args.batch, 1000);
        assert_eq!(args.mode, consumer::DedupMode::Claims);
        assert_eq!(args.durability, None);
        let cli = Cli::try_parse_from(["idem", "bench", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Bench(_)));
    }
}

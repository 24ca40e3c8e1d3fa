//! `idem demo --broker nats --replicate --partitions P --nodes N` (feature `nats`): the
//! charge incident across partitions, consumer nodes and a NATS cluster, with failover.
//!
//! The parent starts a 3-node `nats-server` cluster on loopback (JetStream, one store directory
//! per server, each stopped by its process id), creates the input stream (one subject per
//! partition, replicas 3) with one durable pull consumer per partition, and the changelog stream
//! (replicas 3). It starts N consumer node processes (`idem demo-scale-node`, hidden): node i
//! owns the partitions p with p % N == i and keeps a warm standby copy of every other partition
//! (following its changelog subject). Each owned partition is a
//! [`ReplicatedPartition`]: a fetched batch of charge events is one write (dedup record of each
//! event, and if new the customer's balance and charge count, state entries of the partition),
//! acknowledged to JetStream only once the changelog publish and the local fsync are in.
//!
//! The producer publishes every event to its customer's partition (customer % P), plus re-sends
//! of a fraction of them. At 25 % of the events it SIGKILLs one nats-server, at 50 % the last
//! consumer node; the parent then tells the surviving nodes to take the dead node's partitions
//! (the rebalance): each stops its standby, takes the next epoch through the changelog, catches
//! up and serves, and JetStream redelivers what the dead node had not acked. Binding to a taken
//! partition's input consumer waits out the cluster's leader elections (each attempt longer than
//! the last); a consumer that does not answer for 30 s is created again, and the events it
//! delivers again from the start are answered by the partition's dedup records. At the end each
//! partition is restored cold from the changelog into an empty store and every customer's
//! charge count and balance is checked against the events: `double_charges`, `lost_charges`.
//!
//! Node protocol, one line each: parent to node `own <p>`, `quit`; node to parent `ready`,
//! `owned <p> <epoch> <micros to take over> <messages caught up>`, `acked <n>` (events acked
//! since the last report), `stats <writes> <groups> <bytes> <publish micros> <commit micros>
//! <redelivered> <duplicates>`, `error <text>`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use idem::partition::changelog::{Changelog, ChangelogConfig, ReplicatedPartition, Standby};
use idem::partition::{PartitionId, Partitions};
use idem::{Config, Durability, Outcome};
use rand::{Rng, SeedableRng};

use crate::cli_error::{CliError, CliResult, Context};
use crate::demo::DemoArgs;
use crate::fmt;

/// The consumer node process of the scale demo.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleNodeArgs {
    /// Comma-separated server URLs.
    #[arg(long)]
    pub nats_url: String,
    /// Names of the run's streams and subjects.
    #[arg(long)]
    pub tag: String,
    #[arg(long)]
    pub node: u32,
    #[arg(long)]
    pub nodes: u32,
    #[arg(long)]
    pub partitions: u32,
    /// The node's partition stores.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "24h", value_parser = crate::args::parse_duration)]
    pub ttl: Duration,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[arg(long, default_value_t = 200)]
    pub snapshot_every: u64,
    /// The input consumers' ack wait (a consumer the node re-creates gets the same).
    #[arg(long, default_value = "2s", value_parser = crate::args::parse_duration)]
    pub ack_wait: Duration,
}

#[derive(Clone)]
struct Names {
    input_stream: String,
    input_prefix: String,
    changelog: ChangelogConfig,
}

fn names(tag: &str) -> Names {
    Names {
        input_stream: format!("SCALE_IN_{tag}"),
        input_prefix: format!("scale.{tag}.in"),
        changelog: ChangelogConfig {
            stream: format!("SCALE_CL_{tag}"),
            subject_prefix: format!("scale.{tag}.cl"),
            replicas: 3,
            max_group: 64,
            snapshot_every: 0,
            request_timeout: Duration::from_secs(2),
        },
    }
}

fn durable(p: PartitionId) -> String {
    format!("in-{p}")
}

/// Partition `p`'s durable input consumer: the parent creates it, and a node that cannot bind
/// to it creates it again ([`bind_input`]).
fn input_consumer(names: &Names, p: PartitionId, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(durable(p)),
        filter_subject: format!("{}.{p}", names.input_prefix),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 4000,
        ..Default::default()
    }
}

/// How long [`bind_input`] tries before it re-creates the consumer, and before it gives up.
#[derive(Debug, Clone, Copy)]
struct BindPatience {
    recreate_after: Duration,
    give_up_after: Duration,
}

/// A take-over's patience. Here a consumer had a new leader 4-10 s after its server was
/// killed, but one run spent about 48 s binding, and the CI run that failed over 60 s.
const TAKE_OVER_PATIENCE: BindPatience = BindPatience {
    recreate_after: Duration::from_secs(30),
    give_up_after: Duration::from_secs(150),
};

/// Binds to partition `p`'s input consumer, for a node taking the partition over.
///
/// JetStream answers a consumer's requests from the consumer's leader. After a server is lost,
/// requests time out until the cluster has elected another one; on a loaded machine an answer
/// can also take longer than a short timeout. So each attempt waits longer than the one before
/// (1 s doubling up to 8 s). A consumer that has still not answered after the patience's
/// `recreate_after` is deleted and created again (the cluster's metadata leader does
/// both), which also gives it a new leader. The new consumer delivers the partition's events
/// again from the stream's start; the partition's dedup records answer every one already
/// charged as a duplicate, which is the guarantee the demo checks.
async fn bind_input(
    js: &jetstream::Context,
    names: &Names,
    p: PartitionId,
    ack_wait: Duration,
    started: Instant,
    patience: BindPatience,
) -> CliResult<jetstream::consumer::Consumer<pull::Config>> {
    let mut attempt_timeout = Duration::from_secs(1);
    let mut deleted = false;
    loop {
        let mut attempt = js.clone();
        attempt.set_timeout(attempt_timeout);
        // Once deleted, every attempt creates it: creating a durable consumer that exists with
        // the same configuration binds to it (a create that timed out may have landed).
        let bound = if deleted {
            attempt
                .create_consumer_on_stream(input_consumer(names, p, ack_wait), &names.input_stream)
                .await
        } else {
            attempt
                .get_consumer_from_stream(durable(p), &names.input_stream)
                .await
        };
        let e = match bound {
            Ok(consumer) => return Ok(consumer),
            Err(e) => e,
        };
        if started.elapsed() >= patience.give_up_after {
            return Err(CliError::new(format!(
                "binding to partition {p}'s input consumer: {e} (for {} s)",
                patience.give_up_after.as_secs()
            )));
        }
        if !deleted && started.elapsed() >= patience.recreate_after {
            eprintln!(
                "node: partition {p}'s input consumer has not answered for {} s ({e}): creating it again",
                patience.recreate_after.as_secs()
            );
            // Not found is fine: the create below is what counts, and it is retried.
            let _ = attempt
                .delete_consumer_from_stream(durable(p), &names.input_stream)
                .await;
            deleted = true;
            continue;
        }
        eprintln!(
            "node: binding to partition {p}'s input: {e} (waited {} ms); retrying",
            attempt_timeout.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        attempt_timeout = (attempt_timeout * 2).min(Duration::from_secs(8));
    }
}

/// A balance entry: charge count and cents, little-endian.
fn balance(value: Option<&[u8]>) -> (u64, u64) {
    value.map_or((0, 0), |v| {
        (
            u64::from_le_bytes(v[0..8].try_into().expect("16 bytes")),
            u64::from_le_bytes(v[8..16].try_into().expect("16 bytes")),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The node process.

/// `idem demo-scale-node`.
pub fn node_main(args: &ScaleNodeArgs) -> CliResult<ExitCode> {
    let runtime = crate::nats_demo::runtime()?;
    runtime.block_on(node(args))?;
    Ok(ExitCode::SUCCESS)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Owned {
    partition: Arc<ReplicatedPartition>,
    task: tokio::task::JoinHandle<()>,
}

async fn node(args: &ScaleNodeArgs) -> CliResult<()> {
    let names = names(&args.tag);
    let mut changelog_config = names.changelog.clone();
    changelog_config.snapshot_every = args.snapshot_every;
    let changelog = Changelog::connect(&args.nats_url, changelog_config)
        .await
        .map_err(|e| CliError::new(e.to_string()))?;
    let urls: Vec<&str> = args.nats_url.split(',').collect();
    let client = async_nats::connect(urls)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client);
    // The parent created the input stream; a request can still time out while the cluster
    // settles.
    let begun = Instant::now();
    while let Err(e) = js.get_stream(&names.input_stream).await {
        if begun.elapsed() >= Duration::from_secs(60) {
            return Err(CliError::new(format!("binding to the input stream: {e}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let partitions = Arc::new(
        Partitions::open(&args.dir, Config::default().durability(Durability::Sync))
            .map_err(|e| CliError::new(e.to_string()))?,
    );
    let acked = Arc::new(AtomicU64::new(0));
    // Redelivered, duplicates caught, events charged or caught.
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut standbys: HashMap<PartitionId, Standby> = HashMap::new();
    let mut owned: HashMap<PartitionId, Owned> = HashMap::new();
    let mut taking: HashMap<PartitionId, tokio::task::JoinHandle<CliResult<Owned>>> =
        HashMap::new();
    for p in 0..args.partitions {
        if p % args.nodes != args.node {
            let store = partitions
                .open_store(p)
                .map_err(|e| CliError::new(e.to_string()))?;
            standbys.insert(p, changelog.follow(store, p));
        }
    }
    let own = |p: PartitionId, standbys: &mut HashMap<PartitionId, Standby>| {
        let standby = standbys.remove(&p);
        let (changelog, partitions, js, names, acked, counters) = (
            changelog.clone(),
            partitions.clone(),
            js.clone(),
            names.clone(),
            acked.clone(),
            counters.clone(),
        );
        let (batch, ttl, ack_wait) = (args.batch, args.ttl, args.ack_wait);
        async move {
            let started = Instant::now();
            if let Some(standby) = standby {
                // A standby that failed leaves its copy where it got: the catch-up goes on.
                if let Err(e) = standby.stop().await {
                    eprintln!("node: the standby of partition {p} had stopped: {e}");
                }
            }
            // The changelog's leader elections too: as patient as binding the input.
            let partition = loop {
                match changelog.take_ownership(&partitions, p).await {
                    Ok(partition) => break Arc::new(partition),
                    Err(idem::Error::Replication { reason, .. })
                        if started.elapsed() < TAKE_OVER_PATIENCE.give_up_after =>
                    {
                        eprintln!("node: taking partition {p}: {reason}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(CliError::new(e.to_string())),
                }
            };
            let consumer =
                bind_input(&js, &names, p, ack_wait, started, TAKE_OVER_PATIENCE).await?;
            // Serving from here: the partition is ours and its input is bound.
            say(&format!(
                "owned {p} {} {}",
                partition.epoch(),
                started.elapsed().as_micros()
            ));
            let serving = partition.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = consume(consumer, &serving, batch, ttl, &acked, &counters).await {
                    say(&format!("error partition {p}: {e}"));
                }
            });
            Ok::<_, CliError>(Owned { partition, task })
        }
    };
    for p in 0..args.partitions {
        if p % args.nodes == args.node {
            owned.insert(p, own(p, &mut standbys).await?);
        }
    }
    // Commands from the parent, read on a thread of their own.
    let (commands, mut incoming) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands.send(line).is_err() {
                break;
            }
        }
    });
    say("ready");
    let mut report = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = report.tick() => {
                let n = acked.swap(0, Ordering::Relaxed);
                if n > 0 {
                    say(&format!("acked {n}"));
                }
            }
            command = incoming.recv() => {
                let Some(command) = command else { break };
                let mut words = command.split_whitespace();
                match (words.next(), words.next().and_then(|p| p.parse::<u32>().ok())) {
                    (Some("own"), Some(p)) if !owned.contains_key(&p) && !taking.contains_key(&p) => {
                        // Taken over concurrently: one slow partition does not hold the others.
                        let taking_over = own(p, &mut standbys);
                        taking.insert(p, tokio::spawn(async move {
                            let taken = taking_over.await;
                            if let Err(e) = &taken {
                                say(&format!("error taking partition {p}: {e}"));
                            }
                            taken
                        }));
                    }
                    (Some("quit"), _) => break,
                    _ => {}
                }
            }
        }
    }
    let n = acked.swap(0, Ordering::Relaxed);
    if n > 0 {
        say(&format!("acked {n}"));
    }
    let mut total = idem::partition::changelog::ReplicationStats::default();
    for (p, task) in taking {
        let taken = task
            .await
            .map_err(|e| CliError::new(format!("taking partition {p}: {e}")))??;
        owned.insert(p, taken);
    }
    for owned in owned.values() {
        owned.task.abort();
        if let Ok(stats) = owned.partition.stats().await {
            total.writes += stats.writes;
            total.groups += stats.groups;
            total.bytes += stats.bytes;
            total.publish_wait += stats.publish_wait;
            total.commit_wait += stats.commit_wait;
            total.snapshots += stats.snapshots;
        }
    }
    for standby in standbys.into_values() {
        let _ = standby.stop().await;
    }
    say(&format!(
        "stats {} {} {} {} {} {} {} {} {}",
        total.writes,
        total.groups,
        total.bytes,
        total.publish_wait.as_micros(),
        total.commit_wait.as_micros(),
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
        total.snapshots,
        counters[2].load(Ordering::Relaxed),
    ));
    Ok(())
}

/// Charges one partition's events until the task is stopped: a fetched batch is one replicated
/// write, acked to JetStream after it.
async fn consume(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    partition: &ReplicatedPartition,
    batch: usize,
    ttl: Duration,
    acked: &AtomicU64,
    counters: &[AtomicU64; 3],
) -> CliResult<()> {
    loop {
        let fetched = consumer
            .batch()
            .max_messages(batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let Ok(mut fetched) = fetched else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut messages = Vec::new();
        while let Some(message) = fetched.next().await {
            match message {
                Ok(message) => messages.push(message),
                Err(_) => break,
            }
        }
        if messages.is_empty() {
            continue;
        }
        let mut events = Vec::with_capacity(messages.len());
        for message in &messages {
            if message.info().is_ok_and(|i| i.delivered > 1) {
                counters[0].fetch_add(1, Ordering::Relaxed);
            }
            let body = std::str::from_utf8(&message.payload)
                .map_err(|_| CliError::new("an event is not UTF-8"))?;
            let mut words = body.split(' ');
            let parsed = (|| {
                let event: u64 = words.next()?.parse().ok()?;
                let cents: u64 = words.next()?.parse().ok()?;
                let customer: u64 = words.next()?.parse().ok()?;
                Some((event, cents, customer))
            })()
            .ok_or_else(|| CliError::new(format!("a bad event: {body}")))?;
            events.push(parsed);
        }
        let events = Arc::new(events);
        let duplicates = loop {
            let events = events.clone();
            let written = partition
                .transact(move |group| {
                    let mut duplicates = 0u64;
                    for &(event, cents, customer) in events.iter() {
                        let key = format!("event-{event}");
                        match group.check_or_insert(key.as_bytes(), ttl, b"charged")? {
                            Outcome::Inserted => {
                                let account = format!("balance/{customer}");
                                let old = group.get_state(account.as_bytes())?;
                                let (count, total) = balance(old.as_ref().map(|v| v.as_ref()));
                                let mut value = (count + 1).to_le_bytes().to_vec();
                                value.extend_from_slice(&(total + cents).to_le_bytes());
                                group.put_state(account.as_bytes(), &value)?;
                            }
                            Outcome::Duplicate(_) => duplicates += 1,
                        }
                    }
                    Ok::<u64, idem::Error>(duplicates)
                })
                .await;
            match written {
                Ok(Ok(duplicates)) => break duplicates,
                // The stream did not confirm: no answer; decide again and retry.
                Err(idem::Error::Replication { reason, partition }) => {
                    eprintln!("node: partition {partition}: {reason}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) | Ok(Err(e)) => return Err(CliError::new(e.to_string())),
            }
        };
        counters[1].fetch_add(duplicates, Ordering::Relaxed);
        counters[2].fetch_add(messages.len() as u64, Ordering::Relaxed);
        for message in &messages {
            // A lost ack is a redelivery, which idem answers as a duplicate.
            let _ = message.ack().await;
        }
        acked.fetch_add(messages.len() as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// One server of the loopback cluster, killed (by its pid) on drop.
struct ClusterServer {
    child: Option<Child>,
    port: u16,
}

impl ClusterServer {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ClusterServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> CliResult<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Starts three `nats-server`s forming a JetStream cluster on loopback.
fn start_cluster(dir: &Path) -> CliResult<Vec<ClusterServer>> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<CliResult<_>>()?;
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, cluster)| format!("nats-route://127.0.0.1:{cluster}"))
        .collect();
    let mut servers = Vec::new();
    for (i, (client, cluster)) in ports.iter().enumerate() {
        let store = dir.join(format!("js-{i}"));
        let conf = dir.join(format!("server-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: idem_demo, listen: 127.0.0.1:{cluster}, routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            ),
        )
        .context("writing a server config")?;
        let log = std::fs::File::create(dir.join(format!("server-{i}.log")))
            .context("creating a server log")?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("server log")?)
            .stderr(log)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CliError::new(format!(
                    "nats-server is not on the PATH: {}",
                    crate::nats_server::INSTALL_HINT
                )),
                _ => CliError::new(format!("starting nats-server: {e}")),
            })?;
        servers.push(ClusterServer {
            child: Some(child),
            port: *client,
        });
    }
    Ok(servers)
}

struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
}

impl NodeProcess {
    fn send(&mut self, line: &str) -> CliResult<()> {
        writeln!(self.stdin, "{line}").context("writing to a node")?;
        self.stdin.flush().context("writing to a node")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the parent hears from the nodes.
enum Heard {
    Line(u32, String),
    Closed(u32),
}

/// The report of a scale run.
pub struct ScaleReport {
    pub events: u64,
    pub deliveries: u64,
    pub resent: u64,
    pub partitions: u32,
    pub nodes: u32,
    pub customers: u64,
    pub double_charges: u64,
    pub lost_charges: u64,
    pub balances_wrong: u64,
    pub failovers: u64,
    /// Per taken-over partition: micros from the `own` command to serving.
    pub takeover_micros: Vec<u64>,
    /// From the node's SIGKILL to the last of its partitions serving elsewhere.
    pub kill_to_serving: Duration,
    pub redelivered: u64,
    pub duplicates_caught: u64,
    pub writes: u64,
    pub groups: u64,
    pub replicated_bytes: u64,
    pub publish_wait: Duration,
    pub commit_wait: Duration,
    pub snapshots: u64,
    /// Events the surviving nodes wrote (charged or caught as duplicates).
    pub events_written: u64,
    pub server_killed: bool,
    pub wall: Duration,
}

pub fn run(args: &DemoArgs) -> CliResult<ScaleReport> {
    if args.nodes < 2 {
        return Err(CliError::new(
            "--replicate needs --nodes 2 or more (one is killed)",
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("idem-scale-")
        .tempdir()
        .context("creating a scratch directory")?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).context("creating --dir")?;
            dir.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    let ran = run_in(args, &dir);
    if ran.is_err() {
        print_server_log_tails(&dir);
    }
    ran
}

/// What a failed run leaves for its diagnosis: the last warnings and errors of each server's
/// log (the scratch directory holding them is removed).
fn print_server_log_tails(dir: &Path) {
    for i in 0..3 {
        let Ok(log) = std::fs::read_to_string(dir.join(format!("server-{i}.log"))) else {
            continue;
        };
        let notable: Vec<&str> = log
            .lines()
            .filter(|line| {
                (line.contains("[WRN]") || line.contains("[ERR]") || line.contains("leader"))
                    && !line.contains("connect to route")
            })
            .collect();
        eprintln!(
            "nats-server n{i}: the last of its {} notable log lines:",
            notable.len()
        );
        for line in &notable[notable.len().saturating_sub(25)..] {
            eprintln!("  {line}");
        }
    }
}

fn run_in(args: &DemoArgs, dir: &Path) -> CliResult<ScaleReport> {
    let (partitions, nodes) = (args.partitions, args.nodes);
    let quiet = args.quiet || args.json;
    let note = |text: &str| {
        if !quiet {
            eprintln!("{text}");
        }
    };
    let started = Instant::now();
    let mut servers = start_cluster(dir)?;
    let urls = servers
        .iter()
        .map(|s| format!("nats://127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",");
    note(&format!("3-node nats-server cluster on loopback: {urls}"));
    let tag = format!("{}", std::process::id());
    let names = names(&tag);
    let runtime = crate::nats_demo::runtime()?;

    // The workload: events over customers, customers over partitions; some re-sent.
    let events = u64::from(args.events);
    let customers = u64::from(args.customers).min(events).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut expected: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut schedule: Vec<(u64, u64, u64)> = Vec::with_capacity(events as usize);
    for event in 0..events {
        let customer = rng.gen_range(0..customers);
        let cents = rng.gen_range(100..100_000u64);
        let e = expected.entry(customer).or_default();
        e.0 += 1;
        e.1 += cents;
        schedule.push((event, cents, customer));
    }
    // Re-sends: a fraction of the deliveries is followed by a copy of a recent event.
    let rate = args.dup_rate.max(0.005);
    let mut deliveries = Vec::with_capacity(schedule.len() + schedule.len() / 50);
    for (i, &delivery) in schedule.iter().enumerate() {
        deliveries.push(delivery);
        if rng.gen_bool(rate) {
            deliveries.push(schedule[rng.gen_range(i.saturating_sub(5000)..=i)]);
        }
    }

    let js = runtime.block_on(async {
        let urls: Vec<&str> = urls.split(',').collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .context("connecting to the cluster")?;
        let js = jetstream::new(client);
        // The cluster elects its JetStream leader in a few seconds: retry until it can.
        let begun = Instant::now();
        let input = loop {
            let created = js
                .get_or_create_stream(stream::Config {
                    name: names.input_stream.clone(),
                    subjects: vec![format!("{}.*", names.input_prefix)],
                    num_replicas: 3,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(stream) => break stream,
                Err(e) if begun.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(CliError::new(format!("creating the input stream: {e}"))),
            }
        };
        for p in 0..partitions {
            input
                .create_consumer(input_consumer(&names, p, args.ack_wait))
                .await
                .context("creating a partition's durable consumer")?;
        }
        Changelog::new(js.clone(), names.changelog.clone())
            .await
            .map_err(|e| CliError::new(e.to_string()))?;
        Ok::<_, CliError>(js)
    })?;
    note(&format!(
        "streams ready after {} (input: {partitions} subjects, replicas 3; changelog: replicas 3)",
        fmt::nanos(started.elapsed().as_nanos() as u64)
    ));

    // The nodes.
    let exe = std::env::current_exe().context("finding the idem executable")?;
    let (heard, hearing) = std::sync::mpsc::channel::<Heard>();
    let mut procs = Vec::new();
    for node in 0..nodes {
        let node_dir = dir.join(format!("node-{node}"));
        let mut child = Command::new(&exe)
            .arg("demo-scale-node")
            .args(["--nats-url", &urls, "--tag", &tag])
            .args(["--node", &node.to_string(), "--nodes", &nodes.to_string()])
            .args(["--partitions", &partitions.to_string()])
            .arg("--dir")
            .arg(&node_dir)
            .args(["--ttl", &format!("{}ms", args.ttl.as_millis())])
            .args(["--ack-wait", &format!("{}ms", args.ack_wait.as_millis())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a consumer node")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let heard = heard.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if heard.send(Heard::Line(node, line)).is_err() {
                    return;
                }
            }
            let _ = heard.send(Heard::Closed(node));
        });
        procs.push(Some(NodeProcess { child, stdin }));
    }
    drop(heard);

    let mut report = ScaleReport {
        events,
        deliveries: deliveries.len() as u64,
        resent: (deliveries.len() as u64) - events,
        partitions,
        nodes,
        customers: expected.len() as u64,
        double_charges: 0,
        lost_charges: 0,
        balances_wrong: 0,
        failovers: 0,
        takeover_micros: Vec::new(),
        kill_to_serving: Duration::ZERO,
        redelivered: 0,
        duplicates_caught: 0,
        writes: 0,
        groups: 0,
        replicated_bytes: 0,
        publish_wait: Duration::ZERO,
        commit_wait: Duration::ZERO,
        snapshots: 0,
        events_written: 0,
        server_killed: false,
        wall: Duration::ZERO,
    };
    let mut ready = 0;
    let mut owned_by: HashMap<PartitionId, u32> = HashMap::new();
    let mut handle =
        |line: &str, node: u32, report: &mut ScaleReport, acked: &mut u64| -> CliResult<()> {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("acked") => *acked += words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
                Some("owned") => {
                    let p: u32 = words[1].parse().unwrap_or(0);
                    owned_by.insert(p, node);
                    if report.failovers > 0 {
                        report
                            .takeover_micros
                            .push(words.get(3).and_then(|n| n.parse().ok()).unwrap_or(0));
                    }
                }
                Some("stats") => {
                    let n = |i: usize| {
                        words
                            .get(i)
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    report.writes += n(1);
                    report.groups += n(2);
                    report.replicated_bytes += n(3);
                    report.publish_wait += Duration::from_micros(n(4));
                    report.commit_wait += Duration::from_micros(n(5));
                    report.redelivered += n(6);
                    report.duplicates_caught += n(7);
                    report.snapshots += n(8);
                    report.events_written += n(9);
                }
                Some("error") => return Err(CliError::new(format!("node {node}: {line}"))),
                _ => {}
            }
            Ok(())
        };
    let mut acked = 0u64;
    while ready < nodes {
        match hearing.recv_timeout(Duration::from_secs(60)) {
            Ok(Heard::Line(node, line)) if line == "ready" => {
                let _ = node;
                ready += 1
            }
            Ok(Heard::Line(node, line)) => handle(&line, node, &mut report, &mut acked)?,
            Ok(Heard::Closed(node)) => {
                return Err(CliError::new(format!(
                    "node {node} exited before it was ready"
                )))
            }
            Err(_) => return Err(CliError::new("the nodes were not ready within 60 s")),
        }
    }
    note(&format!(
        "{nodes} consumer nodes ready; {partitions} partitions, each owned by one node and followed by the others"
    ));

    // The producer, on the runtime's workers.
    let producer = {
        let js = js.clone();
        let prefix = names.input_prefix.clone();
        let deliveries = deliveries.clone();
        runtime.spawn(async move {
            // Chunks of publishes whose acks are awaited concurrently (each ack's timeout runs
            // at once, so a server killed under them costs one timeout, not one per message);
            // the unacknowledged ones are published again, as a producer's retries are.
            for chunk in deliveries.chunks(256) {
                let mut pending: Vec<(String, String)> = chunk
                    .iter()
                    .map(|&(event, cents, customer)| {
                        let subject = format!("{prefix}.{}", customer % u64::from(partitions));
                        (subject, format!("{event} {cents} {customer}"))
                    })
                    .collect();
                while !pending.is_empty() {
                    let mut acks = Vec::with_capacity(pending.len());
                    for (subject, body) in &pending {
                        let ack = js.publish(subject.clone(), body.clone().into()).await;
                        acks.push(tokio::spawn(async move {
                            match ack {
                                Ok(ack) => ack.await.is_ok(),
                                Err(_) => false,
                            }
                        }));
                    }
                    let mut failed = Vec::new();
                    for (message, ack) in pending.into_iter().zip(acks) {
                        if !ack.await.unwrap_or(false) {
                            failed.push(message);
                        }
                    }
                    pending = failed;
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };

    let total = report.deliveries;
    let kill_server_at = total / 4;
    let kill_node_at = total / 2;
    let victim = nodes - 1;
    let mut killed_at: Option<Instant> = None;
    let mut waiting_for: Vec<PartitionId> = Vec::new();
    let mut last_progress = Instant::now();
    let mut last_check = Instant::now();
    loop {
        match hearing.recv_timeout(Duration::from_millis(200)) {
            Ok(Heard::Line(node, line)) => {
                handle(&line, node, &mut report, &mut acked)?;
                if let (true, Some(killed)) = (line.starts_with("owned"), killed_at) {
                    let p: u32 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    waiting_for.retain(|&q| q != p);
                    if waiting_for.is_empty() {
                        report.kill_to_serving = killed.elapsed();
                        note(&format!(
                            "  node {victim}'s partitions serve on the other nodes {} after its SIGKILL",
                            fmt::nanos(report.kill_to_serving.as_nanos() as u64)
                        ));
                    }
                }
            }
            Ok(Heard::Closed(node)) if Some(node) != killed_at.map(|_| victim) => {
                return Err(CliError::new(format!("node {node} exited unexpectedly")));
            }
            _ => {}
        }
        if !report.server_killed && acked >= kill_server_at {
            servers[2].kill();
            report.server_killed = true;
            note(&format!(
                "  nats-server n2 killed with SIGKILL after {} acked deliveries",
                fmt::count(acked)
            ));
        }
        if killed_at.is_none() && acked >= kill_node_at && !args.no_kill {
            if let Some(mut proc) = procs[victim as usize].take() {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
            killed_at = Some(Instant::now());
            report.failovers += 1;
            waiting_for = (0..partitions).filter(|p| p % nodes == victim).collect();
            note(&format!(
                "  consumer node {victim} killed with SIGKILL after {} acked deliveries; its partitions {:?} go to the other nodes",
                fmt::count(acked),
                waiting_for
            ));
            for (i, &p) in waiting_for.iter().enumerate() {
                let to = (i as u32) % (nodes - 1);
                procs[to as usize]
                    .as_mut()
                    .expect("alive")
                    .send(&format!("own {p}"))?;
            }
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            note(&format!(
                "  {} of {} deliveries acked",
                fmt::count(acked),
                fmt::count(total)
            ));
        }
        if producer.is_finished() && last_check.elapsed() > Duration::from_millis(500) {
            // Every delivery published: done once no partition's consumer has anything
            // pending or unacknowledged.
            last_check = Instant::now();
            let done = runtime.block_on(all_acked(&js, &names.input_stream, partitions));
            if done && (killed_at.is_some() || args.no_kill) && waiting_for.is_empty() {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(CliError::new("the run did not finish within 30 minutes"));
        }
    }
    for proc in procs.iter_mut().flatten() {
        proc.send("quit")?;
    }
    let mut open = procs.iter().filter(|p| p.is_some()).count();
    while open > 0 {
        match hearing.recv_timeout(Duration::from_secs(60)) {
            Ok(Heard::Line(node, line)) => handle(&line, node, &mut report, &mut acked)?,
            Ok(Heard::Closed(node)) if node != victim || args.no_kill => open -= 1,
            Ok(Heard::Closed(_)) => {}
            Err(_) => return Err(CliError::new("the nodes did not stop within 60 s")),
        }
    }
    drop(procs);
    report.wall = started.elapsed();

    // Check: every partition restored cold from the changelog into an empty store.
    let check_dir = dir.join("check");
    let restored = runtime.block_on(async {
        let changelog = Changelog::new(js.clone(), names.changelog.clone())
            .await
            .map_err(|e| CliError::new(e.to_string()))?;
        let mut balances: HashMap<u64, (u64, u64)> = HashMap::new();
        for p in 0..partitions {
            let store = idem::Store::open_with(
                check_dir.join(format!("p{p}")),
                Config::default().durability(Durability::Never),
            )
            .map_err(|e| CliError::new(e.to_string()))?;
            changelog
                .catch_up(&store, p)
                .await
                .map_err(|e| CliError::new(e.to_string()))?;
            for &customer in expected
                .keys()
                .filter(|c| *c % u64::from(partitions) == u64::from(p))
            {
                let value = store
                    .get_state(format!("balance/{customer}").as_bytes())
                    .map_err(|e| CliError::new(e.to_string()))?;
                balances.insert(customer, balance(value.as_ref().map(|v| v.as_ref())));
            }
        }
        Ok::<_, CliError>(balances)
    })?;
    for (customer, (count, cents)) in &expected {
        let (got_count, got_cents) = restored.get(customer).copied().unwrap_or((0, 0));
        report.double_charges += got_count.saturating_sub(*count);
        report.lost_charges += count.saturating_sub(got_count);
        report.balances_wrong += u64::from(got_cents != *cents);
    }
    drop(servers);
    Ok(report)
}

/// Whether no partition's input consumer has anything pending or unacknowledged. A request
/// that fails (the cluster electing a leader after the server kill) answers "not yet".
async fn all_acked(js: &jetstream::Context, stream: &str, partitions: u32) -> bool {
    let Ok(stream) = js.get_stream(stream).await else {
        return false;
    };
    for p in 0..partitions {
        let consumer: Result<jetstream::consumer::Consumer<pull::Config>, _> =
            stream.get_consumer(&durable(p)).await;
        let Ok(mut consumer) = consumer else {
            return false;
        };
        match consumer.info().await {
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
            _ => return false,
        }
    }
    true
}

pub fn print(report: &ScaleReport, json: bool) {
    let mut takeovers = report.takeover_micros.clone();
    takeovers.sort_unstable();
    let median = takeovers.get(takeovers.len() / 2).copied().unwrap_or(0);
    let max = takeovers.last().copied().unwrap_or(0);
    let groups = report.groups.max(1) as f64;
    let per_group = report.events_written as f64 / groups;
    let publish_ms = report.publish_wait.as_secs_f64() * 1e3 / groups;
    let commit_ms = report.commit_wait.as_secs_f64() * 1e3 / groups;
    let bytes_per_event = report.replicated_bytes as f64 / report.events_written.max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "broker": "nats", "replicate": true,
                "events": report.events, "deliveries": report.deliveries, "resent": report.resent,
                "partitions": report.partitions, "nodes": report.nodes, "customers": report.customers,
                "double_charges": report.double_charges, "lost_charges": report.lost_charges,
                "balances_wrong": report.balances_wrong, "failovers": report.failovers,
                "nats_servers_killed": u32::from(report.server_killed),
                "takeover_ms_median": median as f64 / 1e3, "takeover_ms_max": max as f64 / 1e3,
                "kill_to_serving_ms": report.kill_to_serving.as_secs_f64() * 1e3,
                "redelivered": report.redelivered, "duplicates_caught": report.duplicates_caught,
                "replicated_groups_surviving_nodes": report.groups,
                "events_per_group": per_group, "publish_ack_ms_per_group": publish_ms,
                "local_commit_ms_per_group": commit_ms, "changelog_bytes_per_event": bytes_per_event,
                "snapshots": report.snapshots, "wall_s": report.wall.as_secs_f64(),
            })
        );
        return;
    }
    println!();
    println!("idem demo --broker nats --replicate: {} partitions on {} consumer nodes, a 3-node JetStream cluster", report.partitions, report.nodes);
    println!();
    println!(
        "  events                              {:>12}",
        fmt::count(report.events)
    );
    println!(
        "  deliveries (with re-sends)          {:>12}",
        fmt::count(report.deliveries)
    );
    println!(
        "  customers (balances checked)        {:>12}",
        fmt::count(report.customers)
    );
    println!(
        "  consumer nodes killed (SIGKILL)     {:>12}",
        report.failovers
    );
    println!(
        "  nats-servers killed (SIGKILL)       {:>12}",
        u32::from(report.server_killed)
    );
    println!(
        "  redelivered by JetStream (survivors){:>12}",
        fmt::count(report.redelivered)
    );
    println!(
        "  duplicates caught (survivors)       {:>12}",
        fmt::count(report.duplicates_caught)
    );
    println!(
        "  double charges                      {:>12}",
        fmt::count(report.double_charges)
    );
    println!(
        "  lost charges                        {:>12}",
        fmt::count(report.lost_charges)
    );
    println!(
        "  balances wrong                      {:>12}",
        fmt::count(report.balances_wrong)
    );
    println!(
        "  wall time                           {:>12}",
        format!("{:.2} s", report.wall.as_secs_f64())
    );
    println!();
    println!(
        "  failover: each partition taken over in {} median, {} max (stop standby, next epoch, catch up);",
        fmt::nanos(median * 1000),
        fmt::nanos(max * 1000)
    );
    println!(
        "            all of the killed node's partitions serving {} after its SIGKILL (the rebalance is immediate here)",
        fmt::nanos(report.kill_to_serving.as_nanos() as u64)
    );
    println!(
        "  replication (surviving nodes): {} events in {} groups ({per_group:.0} per publish), {publish_ms:.2} ms publish ack and {commit_ms:.2} ms local commit per group, {bytes_per_event:.1} changelog bytes per event, {} snapshots",
        fmt::count(report.events_written),
        fmt::count(report.groups),
        report.snapshots
    );
    println!(
        "  check: every partition restored cold from the changelog stream into an empty store"
    );
    println!();
    if report.double_charges == 0 && report.lost_charges == 0 && report.balances_wrong == 0 {
        println!("  OK: every event charged exactly once across the failover.");
    } else {
        println!("  FAILED: double or lost charges.");
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark: a replicated partition against a local-only one.

/// `idem replication-bench`: throughput of a replicated partition against a local-only one.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationBenchArgs {
    /// Writes per case.
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Concurrent writers in the concurrent cases (threads for the local partition, tasks for
    /// the replicated one).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Keys per write in the batch cases.
    #[arg(long, default_value_t = 100)]
    pub batch: u64,
    /// Run against a 3-node cluster on loopback with a replicas-3 changelog (default: one
    /// server, replicas 1).
    #[arg(long)]
    pub cluster: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub const BENCH_ABOUT: &str = "Throughput of a replicated partition (each write acknowledged once the \
JetStream changelog acked it and the local store fsynced it) against a local-only partition (Sync: \
fsynced), single writer, concurrent writers (group commit: one publish and one fsync per group) and \
batches. Starts its own nats-server (or a 3-node cluster with --cluster) on loopback.\n\n\
Example: idem replication-bench --ops 20000 --concurrency 64 --batch 100";

pub fn bench_main(args: &ReplicationBenchArgs) -> CliResult<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("idem-repl-bench-")
        .tempdir()
        .context("creating a scratch directory")?;
    let (_single, _cluster, url, replicas) = if args.cluster {
        let servers = start_cluster(scratch.path())?;
        let url = servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",");
        (None, Some(servers), url, 3)
    } else {
        let server = crate::nats_server::NatsServer::start(&scratch.path().join("nats"))?;
        let url = server.url();
        (Some(server), None, url, 1)
    };
    let runtime = crate::nats_demo::runtime()?;
    let ttl = Duration::from_secs(3600);
    let mut rows: Vec<(String, f64, String)> = Vec::new();
    let local = Partitions::open(scratch.path().join("local"), Config::default())
        .map_err(|e| CliError::new(e.to_string()))?;
    let key = |case: usize, i: u64| format!("case{case}-key-{i:012}");
    let err = |e: idem::Error| CliError::new(e.to_string());

    // Local only.
    let p = local.assign(0).map_err(err)?;
    let started = Instant::now();
    for i in 0..args.ops {
        p.check_or_insert(key(0, i).as_bytes(), ttl, b"v")
            .map_err(err)?;
    }
    rows.push((
        "local (Sync), 1 writer".into(),
        args.ops as f64 / started.elapsed().as_secs_f64(),
        "one fsync per write".into(),
    ));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..args.concurrency {
            let p = p.clone();
            scope.spawn(move || {
                let mut i = t;
                while i < args.ops {
                    p.check_or_insert(key(1, i).as_bytes(), ttl, b"v")
                        .expect("local write");
                    i += args.concurrency;
                }
            });
        }
    });
    rows.push((
        format!("local (Sync), {} writers", args.concurrency),
        args.ops as f64 / started.elapsed().as_secs_f64(),
        "group commit: concurrent writes share fsyncs".into(),
    ));
    let started = Instant::now();
    for chunk in 0..args.ops / args.batch {
        let items: Vec<(String, Duration, &[u8])> = (0..args.batch)
            .map(|j| (key(2, chunk * args.batch + j), ttl, &b"v"[..]))
            .collect();
        p.check_or_insert_batch(&items).map_err(err)?;
    }
    rows.push((
        format!("local (Sync), batches of {}", args.batch),
        args.ops as f64 / started.elapsed().as_secs_f64(),
        "one transaction per batch".into(),
    ));

    // Replicated.
    let replicated_dir = scratch.path().join("replicated");
    let rows = runtime.block_on(async move {
        let config = ChangelogConfig {
            stream: "IDEM_BENCH".into(),
            subject_prefix: "idem.bench".into(),
            replicas,
            ..ChangelogConfig::default()
        };
        let begun = Instant::now();
        let changelog = loop {
            match Changelog::connect(&url, config.clone()).await {
                Ok(changelog) => break changelog,
                Err(_) if begun.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(err(e)),
            }
        };
        let partitions = Partitions::open(&replicated_dir, Config::default()).map_err(err)?;
        let p = Arc::new(
            changelog
                .take_ownership(&partitions, 0)
                .await
                .map_err(err)?,
        );
        let started = Instant::now();
        for i in 0..args.ops {
            p.check_or_insert(key(3, i).as_bytes(), ttl, b"v")
                .await
                .map_err(err)?;
        }
        let stats = p.stats().await.map_err(err)?;
        rows.push((
            "replicated, 1 writer".into(),
            args.ops as f64 / started.elapsed().as_secs_f64(),
            format!(
                "{:.2} ms publish ack + {:.2} ms local commit per write",
                stats.publish_wait.as_secs_f64() * 1e3 / stats.groups.max(1) as f64,
                stats.commit_wait.as_secs_f64() * 1e3 / stats.groups.max(1) as f64
            ),
        ));
        let before = stats;
        let started = Instant::now();
        let mut tasks = Vec::new();
        let (ops, concurrency) = (args.ops, args.concurrency);
        for t in 0..concurrency {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while i < ops {
                    p.check_or_insert(key(4, i).as_bytes(), ttl, b"v").await?;
                    i += concurrency;
                }
                Ok::<(), idem::Error>(())
            }));
        }
        for task in tasks {
            task.await.context("a writer task")?.map_err(err)?;
        }
        let elapsed = started.elapsed();
        let stats = p.stats().await.map_err(err)?;
        rows.push((
            format!("replicated, {} writers", args.concurrency),
            args.ops as f64 / elapsed.as_secs_f64(),
            format!(
                "group commit: {:.1} writes per publish",
                (stats.writes - before.writes) as f64
                    / (stats.groups - before.groups).max(1) as f64
            ),
        ));
        let started = Instant::now();
        for chunk in 0..args.ops / args.batch {
            let keys: Vec<String> = (0..args.batch)
                .map(|j| key(5, chunk * args.batch + j))
                .collect();
            p.transact(move |group| {
                for key in &keys {
                    group.check_or_insert(key.as_bytes(), ttl, b"v")?;
                }
                Ok::<(), idem::Error>(())
            })
            .await
            .map_err(err)?
            .map_err(err)?;
        }
        rows.push((
            format!("replicated, batches of {}", args.batch),
            args.ops as f64 / started.elapsed().as_secs_f64(),
            "one publish and one transaction per batch".into(),
        ));
        Ok::<_, CliError>(rows)
    })?;
    if args.json {
        let cases: Vec<serde_json::Value> = rows
            .iter()
            .map(|(case, rate, note)| serde_json::json!({"case": case, "writes_per_s": rate, "note": note}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"replicas": replicas, "ops": args.ops, "cases": cases})
        );
    } else {
        println!(
            "replicated vs local-only partition ({} writes per case; changelog replicas {replicas}{})",
            fmt::count(args.ops),
            if args.cluster { ", 3-node cluster on loopback" } else { ", one nats-server" }
        );
        println!();
        println!("| case | writes/s | vs local, same shape | note |");
        println!("|---|--:|--:|---|");
        for (i, (case, rate, note)) in rows.iter().enumerate() {
            let ratio = if i >= 3 {
                format!("{:.2}x", rate / rows[i - 3].1)
            } else {
                "-".into()
            };
            println!(
                "| {case} | {} | {ratio} | {note} |",
                fmt::count(*rate as u64)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_server::{self, NatsServer};

    /// A scratch nats-server with the scale demo's input stream holding `published` events on
    /// partition 0's subject, and no consumer. Fields drop in order: the server stops before its
    /// directory goes (so hold the whole of it for the test).
    struct ScratchInput {
        js: jetstream::Context,
        names: Names,
        runtime: tokio::runtime::Runtime,
        _server: NatsServer,
        _dir: tempfile::TempDir,
    }

    /// `None` (and says so) where nats-server is not installed.
    fn scratch_input(tag: &str, published: u32) -> Option<ScratchInput> {
        if !nats_server::available() {
            eprintln!("skipped: nats-server is not on the PATH");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path()).unwrap();
        let names = names(tag);
        let runtime = crate::nats_demo::runtime().unwrap();
        let js = runtime.block_on(async {
            let client = async_nats::connect(server.url()).await.unwrap();
            let js = jetstream::new(client);
            js.create_stream(stream::Config {
                name: names.input_stream.clone(),
                subjects: vec![format!("{}.*", names.input_prefix)],
                ..Default::default()
            })
            .await
            .unwrap();
            for event in 0..published {
                let subject = format!("{}.0", names.input_prefix);
                js.publish(subject, format!("{event} 100 0").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            js
        });
        Some(ScratchInput {
            js,
            names,
            runtime,
            _server: server,
            _dir: dir,
        })
    }

    /// The re-creation path of a take-over, which the demo takes only when the cluster leaves a
    /// consumer without a leader for long: a consumer that cannot be bound is created again, and
    /// it delivers the partition's events from the start (for the dedup records to answer).
    #[test]
    fn binding_re_creates_a_consumer_that_does_not_answer_and_it_delivers_from_the_start() {
        let _fork = crate::fork_guard();
        let Some(scratch) = scratch_input("bindtest", 7) else {
            return;
        };
        let (js, names) = (&scratch.js, &scratch.names);
        scratch.runtime.block_on(async {
            let patience = BindPatience {
                recreate_after: Duration::ZERO,
                give_up_after: Duration::from_secs(30),
            };
            let ack_wait = Duration::from_secs(3);
            let mut consumer = bind_input(js, names, 0, ack_wait, Instant::now(), patience)
                .await
                .unwrap();
            let info = consumer.info().await.unwrap().clone();
            assert_eq!(info.config.durable_name.as_deref(), Some("in-0"));
            assert_eq!(info.config.ack_wait, ack_wait);
            assert_eq!(info.num_pending, 7, "every event is delivered again");
            let mut fetched = consumer
                .fetch()
                .max_messages(100)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap();
            let mut events = Vec::new();
            while let Some(message) = fetched.next().await {
                let message = message.unwrap();
                events.push(String::from_utf8(message.payload.to_vec()).unwrap());
            }
            assert_eq!(events.first().map(String::as_str), Some("0 100 0"));
            assert_eq!(events.len(), 7);
        });
    }

    /// Before its patience runs out, binding neither re-creates nor gives up; after it, it
    /// gives up with an error that names the partition.
    #[test]
    fn binding_gives_up_with_the_partition_named_when_its_patience_runs_out() {
        let _fork = crate::fork_guard();
        let Some(scratch) = scratch_input("giveup", 1) else {
            return;
        };
        let (js, names) = (&scratch.js, &scratch.names);
        scratch.runtime.block_on(async {
            let patience = BindPatience {
                recreate_after: Duration::from_secs(3600),
                give_up_after: Duration::from_secs(2),
            };
            let started = Instant::now();
            let e = bind_input(js, names, 0, Duration::from_secs(3), started, patience)
                .await
                .expect_err("no consumer, and not re-created");
            assert!(started.elapsed() >= Duration::from_secs(2));
            assert!(
                e.to_string()
                    .contains("binding to partition 0's input consumer"),
                "{e}"
            );
            let stream = js.get_stream(&names.input_stream).await.unwrap();
            assert!(
                stream
                    .get_consumer::<pull::Config>(&durable(0))
                    .await
                    .is_err(),
                "binding created no consumer before its time"
            );
        });
    }
}

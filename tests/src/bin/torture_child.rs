//! The child process of the crash torture test (`tests/crash_torture.rs`).
//!
//! `torture_child <dir> <clock-file> <round> <seed> <compaction-live-ratio> <background>
//! <transactions>` opens
//! the store (`Sync`, 4 KiB segments, the parent's clock, see [`idem_tests::torture`]), lists the
//! claims in doubt, and runs a random mix on the shared key pool until it is killed: inserts and
//! batches with TTLs of seconds or hours, removals and re-inserts, claims completed at once or
//! later with result TTLs shorter or longer than the lease, releases, claims left open, reads,
//! `maintain()` and `checkpoint()`, and if `<transactions>` is true, transactions: dedup checks
//! on the same pool, state writes, deletions and read-modify-write counters, and input positions
//! (every transaction moves one forward, so its presence shows). TTLs come in phases (mostly short, or mostly long) so that
//! whole segments expire and get deleted. Before every operation it adopts the time in the clock
//! file. It reports on stdout in the protocol of [`idem_tests::torture`], the fencing token of
//! every claim it acquires or finds in doubt included.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idem::{Claim, ClaimToken, Clock, Error, ManualClock, Outcome, Store};
use idem_tests::torture::{config, counter, key, read_clock, source, state_key, value, POOL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn say(line: String) {
    assert!(line.len() < 4000, "a line must fit one atomic pipe write");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("stdout");
    out.write_all(b"\n").expect("stdout");
    out.flush().expect("stdout");
}

/// Write ids: unique over the run (round, then a counter).
struct Ids {
    round: u64,
    next: u64,
}

impl Ids {
    fn next(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{}.{prefix}{}", self.round, self.next)
    }
}

/// TTL of a record written now: phases of mostly seconds or mostly hours.
fn ttl(rng: &mut StdRng, short_phase: bool) -> Duration {
    let short = short_phase != rng.gen_bool(0.03);
    Duration::from_millis(if short {
        rng.gen_range(300..12_000)
    } else {
        // Log-uniform from a minute to ten hours: some expire at the parent's larger steps.
        rng.gen_range(60_000f64.ln()..36_000_000f64.ln()).exp() as u64
    })
}

fn lease(rng: &mut StdRng, short_phase: bool) -> Duration {
    let short = short_phase != rng.gen_bool(0.03);
    Duration::from_millis(if short {
        rng.gen_range(2_000..30_000)
    } else {
        rng.gen_range(60_000..7_200_000)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, clock_file, round, seed, ratio, background, transactions] = &args[..] else {
        eprintln!(
            "usage: torture_child <dir> <clock-file> <round> <seed> <ratio> <background> \
             <transactions>"
        );
        std::process::exit(2);
    };
    let (dir, clock_file) = (Path::new(dir), Path::new(clock_file));
    let round: u64 = round.parse().expect("round");
    let mut rng = StdRng::seed_from_u64(seed.parse().expect("seed"));
    let ratio: f64 = ratio.parse().expect("ratio");
    let background: bool = background.parse().expect("background");
    let transactions: bool = transactions.parse().expect("transactions");
    let clock = ManualClock::starting_at(read_clock(clock_file).expect("the clock file"));
    let store = Store::open_with(dir, config(&clock, ratio, background)).expect("open");
    let mut now = clock.now_millis();
    say(format!("T {now}"));
    let mut ids = Ids { round, next: 0 };
    // Claims this process holds a token of: (cid, token).
    let mut tokens: Vec<(String, ClaimToken)> = Vec::new();
    for token in store.in_doubt().expect("in_doubt") {
        let cid = ids.next("d");
        let key = String::from_utf8(token.key().to_vec()).expect("utf-8 key");
        say(format!(
            "D {key} {} {cid} {}",
            millis(token.lease_until()),
            token.fencing_token()
        ));
        tokens.push((cid, token));
    }
    let mut short_phase = rng.gen_bool(0.5);
    // Recently touched keys: picked often, so removals are followed by re-inserts, claims by
    // completions, short TTLs by expiry while the older records of the key are still on disk.
    let mut recent: VecDeque<usize> = VecDeque::new();
    let mut pick = |rng: &mut StdRng| -> String {
        let i = if !recent.is_empty() && rng.gen_bool(0.4) {
            recent[rng.gen_range(0..recent.len())]
        } else {
            rng.gen_range(0..POOL)
        };
        recent.push_back(i);
        if recent.len() > 12 {
            recent.pop_front();
        }
        key(i)
    };
    // Bounded, so a child whose parent died ends by itself.
    for _ in 0..200_000 {
        if let Some(time) = read_clock(clock_file) {
            if time > now {
                clock.set_millis(time);
                now = time;
                say(format!("T {now}"));
            }
        }
        if rng.gen_bool(0.012) {
            short_phase = !short_phase;
        }
        match rng.gen_range(0..if transactions { 112 } else { 100 }) {
            100.. => {
                let mut keys: Vec<String> =
                    (0..rng.gen_range(0..4)).map(|_| pick(&mut rng)).collect();
                keys.sort();
                keys.dedup();
                transaction(&store, &mut rng, &mut ids, now, short_phase, keys);
            }
            0..=29 => {
                let k = pick(&mut rng);
                let ttl = ttl(&mut rng, short_phase);
                let v = value(&k, &ids.next(""), rng.gen_range(8..200));
                say(format!("i {k} {} {v}", now + ttl.as_millis() as u64));
                let answer = match store.check_or_insert(k.as_bytes(), ttl, v.as_bytes()) {
                    Ok(Outcome::Inserted) => "ins".to_string(),
                    Ok(Outcome::Duplicate(got)) => format!("dup {}", text(&got)),
                    Err(Error::ClaimInFlight { until }) => format!("inflight {}", millis(until)),
                    Err(e) => panic!("check_or_insert {k}: {e}"),
                };
                say(format!("I {answer}"));
            }
            30..=39 => {
                let items: Vec<(String, Duration, String)> = (0..rng.gen_range(2..9))
                    .map(|_| {
                        let k = pick(&mut rng);
                        let v = value(&k, &ids.next(""), rng.gen_range(8..200));
                        (k, ttl(&mut rng, short_phase), v)
                    })
                    .collect();
                let intent: Vec<String> = items
                    .iter()
                    .map(|(k, ttl, v)| format!("{k}/{}/{v}", now + ttl.as_millis() as u64))
                    .collect();
                say(format!("b {}", intent.join(" ")));
                let batch: Vec<(&[u8], Duration, &[u8])> = items
                    .iter()
                    .map(|(k, ttl, v)| (k.as_bytes(), *ttl, v.as_bytes()))
                    .collect();
                let answer = match store.check_or_insert_batch(&batch) {
                    Ok(outcomes) => outcomes
                        .iter()
                        .map(|outcome| match outcome {
                            Outcome::Inserted => "ins".to_string(),
                            Outcome::Duplicate(got) => format!("dup/{}", text(got)),
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    Err(Error::ClaimInFlight { until }) => format!("inflight {}", millis(until)),
                    Err(e) => panic!("batch: {e}"),
                };
                say(format!("B {answer}"));
            }
            40..=54 => {
                let k = pick(&mut rng);
                say(format!("r {k}"));
                let removed = store.remove(k.as_bytes()).expect("remove");
                say(format!("R {removed}"));
            }
            55..=69 => {
                let k = pick(&mut rng);
                let lease = lease(&mut rng, short_phase);
                let cid = ids.next("c");
                say(format!("c {k} {} {cid}", now + lease.as_millis() as u64));
                let answer = match store.claim(k.as_bytes(), lease).expect("claim") {
                    Claim::Acquired(token) => {
                        let fence = token.fencing_token();
                        tokens.push((cid, token));
                        format!("acq {fence}")
                    }
                    Claim::Duplicate(got) => format!("dup {}", text(&got)),
                    Claim::InFlight { until } => format!("inflight {}", millis(until)),
                };
                say(format!("C {answer}"));
                if answer.starts_with("acq") && rng.gen_bool(0.4) {
                    let (cid, token) = tokens.pop().expect("just pushed");
                    resolve(&store, &mut rng, &mut ids, now, short_phase, cid, token);
                }
            }
            70..=81 if !tokens.is_empty() => {
                let (cid, token) = tokens.swap_remove(rng.gen_range(0..tokens.len()));
                resolve(&store, &mut rng, &mut ids, now, short_phase, cid, token);
            }
            70..=89 => {
                let k = pick(&mut rng);
                say(format!("g {k}"));
                let got = store.get(k.as_bytes()).expect("get");
                say(format!(
                    "G {}",
                    got.map_or("none".to_string(), |v| text(&v))
                ));
            }
            90..=95 => {
                say("m".to_string());
                store.maintain().expect("maintain");
                let stats = store.stats();
                say(format!(
                    "M {} {} {}",
                    stats.segments_deleted, stats.segments_compacted, stats.segments_damaged
                ));
            }
            _ => {
                say("k".to_string());
                store.checkpoint().expect("checkpoint");
                say("K".to_string());
            }
        }
    }
}

/// One transaction: dedup checks of `keys`, state writes, deletions and counter additions, and
/// one or two positions moved forward, committed at once (see [`idem_tests::torture`]).
fn transaction(
    store: &Store,
    rng: &mut StdRng,
    ids: &mut Ids,
    now: u64,
    short_phase: bool,
    keys: Vec<String>,
) {
    let items: Vec<(String, Duration, String)> = keys
        .into_iter()
        .map(|k| {
            let v = value(&k, &ids.next("t"), rng.gen_range(8..200));
            (k, ttl(rng, short_phase), v)
        })
        .collect();
    let mut intent: Vec<String> = items
        .iter()
        .map(|(k, ttl, v)| format!("i:{k}/{}/{v}", now + ttl.as_millis() as u64))
        .collect();
    for _ in 0..rng.gen_range(0..4) {
        intent.push(match rng.gen_range(0..10) {
            0..=4 => {
                let k = state_key(rng.gen_range(0..8));
                format!("s:{k}:{}", value(&k, &ids.next("s"), rng.gen_range(0..80)))
            }
            5..=6 => format!("d:{}", state_key(rng.gen_range(0..8))),
            _ => format!(
                "a:{}:{}",
                counter(rng.gen_range(0..3)),
                rng.gen_range(1..100)
            ),
        });
    }
    for s in 0..rng.gen_range(1..3) {
        let s = source(s);
        let stored = store.position(s.as_bytes()).expect("position").unwrap_or(0);
        intent.push(format!("p:{s}:{}", stored + rng.gen_range(1..50)));
    }
    say(format!("t {}", intent.join(" ")));
    let mut tx = store.transaction();
    let mut answers = Vec::new();
    for (k, ttl, v) in &items {
        match tx.check_or_insert(k.as_bytes(), *ttl, v.as_bytes()) {
            Ok(Outcome::Inserted) => answers.push("ins".to_string()),
            Ok(Outcome::Duplicate(got)) => answers.push(format!("dup/{}", text(&got))),
            Err(Error::ClaimInFlight { until }) => {
                say(format!("A inflight {}", millis(until)));
                return;
            }
            Err(e) => panic!("transaction check_or_insert {k}: {e}"),
        }
    }
    for op in &intent {
        let mut fields = op.split(':');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("s"), Some(k), Some(v)) => tx.put_state(k.as_bytes(), v.as_bytes()),
            (Some("d"), Some(k), None) => tx.delete_state(k.as_bytes()),
            (Some("a"), Some(k), Some(n)) => {
                let old: u64 = tx
                    .get_state(k.as_bytes())
                    .expect("get_state")
                    .map_or(0, |v| text(&v).parse().expect("a counter"));
                answers.push(format!("r:{old}"));
                let new = old + n.parse::<u64>().expect("a number");
                tx.put_state(k.as_bytes(), new.to_string().as_bytes())
            }
            (Some("p"), Some(s), Some(p)) => {
                tx.set_position(s.as_bytes(), p.parse().expect("a position"))
            }
            _ => Ok(()),
        }
        .unwrap_or_else(|e| panic!("transaction {op}: {e}"));
    }
    match tx.commit() {
        Ok(()) => say(format!("A ok {}", answers.join(" ")).trim_end().to_string()),
        Err(Error::Conflict { reason }) => say(format!("A conflict {}", reason.replace(' ', "_"))),
        Err(e) => panic!("commit: {e}"),
    }
}

/// Completes (with a result TTL in the current phase, or shorter or longer than what is left of
/// the lease) or releases the claim of `token`.
fn resolve(
    store: &Store,
    rng: &mut StdRng,
    ids: &mut Ids,
    now: u64,
    short_phase: bool,
    cid: String,
    token: ClaimToken,
) {
    let k = String::from_utf8(token.key().to_vec()).expect("utf-8 key");
    let stale = |e: Error| match e {
        Error::StaleClaim { .. } => "stale",
        e => panic!("resolving {k}: {e}"),
    };
    if rng.gen_bool(0.2) {
        say(format!("x {k} {cid}"));
        let answer = store.release(token).map_or_else(stale, |()| "ok");
        say(format!("X {answer}"));
        return;
    }
    let left = millis(token.lease_until()).saturating_sub(now).max(1) as f64;
    let ttl = match rng.gen_range(0..10) {
        0..=3 => ttl(rng, short_phase),
        4..=6 => Duration::from_millis((left * rng.gen_range(0.02..0.95)).max(1.0) as u64),
        _ => Duration::from_millis((left * rng.gen_range(1.05..4.0)) as u64 + 1),
    };
    let v = value(&k, &ids.next(""), rng.gen_range(8..200));
    say(format!("f {k} {cid} {} {v}", now + ttl.as_millis() as u64));
    let answer = store
        .complete(token, ttl, v.as_bytes())
        .map_or_else(stale, |()| "ok");
    say(format!("F {answer}"));
}

fn text(value: &[u8]) -> String {
    String::from_utf8(value.to_vec()).expect("utf-8 value")
}

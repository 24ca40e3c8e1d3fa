//! The child process of the crash and locking tests (protocol: `idem_tests::crash`).
//!
//! `crash_child insert <dir> <round> <threads> <seed>` opens the store with `Sync` durability and
//! has `threads` threads insert keys until the parent kills it: single calls and batches, keys of
//! their own and keys all threads race for. Every key is announced before it is offered and
//! acknowledged after the store answered. `insert-never` does the same with `Never` durability.
//!
//! `crash_child open <dir>` tries to open the store and prints whether it could.

use std::io::Write;
use std::path::Path;

use idem::{Config, Durability, Store};
use idem_tests::crash::{self, own_key, shared_key, value};
use idem_tests::{value_of, LONG_TTL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A bound on each thread's work, so a child whose parent died does not run forever.
const MAX_OPERATIONS_PER_THREAD: u64 = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(mode @ (crash::MODE_INSERT | crash::MODE_INSERT_NEVER)) if args.len() == 6 => {
            let round = args[3].parse().expect("round");
            let threads = args[4].parse().expect("threads");
            let seed = args[5].parse().expect("seed");
            let durability = if mode == crash::MODE_INSERT {
                Durability::Sync
            } else {
                Durability::Never
            };
            insert_until_killed(Path::new(&args[2]), durability, round, threads, seed);
        }
        Some(crash::MODE_OPEN) if args.len() == 3 => try_open(Path::new(&args[2])),
        _ => {
            eprintln!(
                "usage: crash_child insert|insert-never <dir> <round> <threads> <seed> | open <dir>"
            );
            std::process::exit(2);
        }
    }
}

/// Writes `text` (whole lines) to stdout in one call and flushes it, so it reaches the pipe
/// before the caller goes on.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).expect("writing to stdout");
    out.flush().expect("flushing stdout");
}

fn try_open(dir: &Path) {
    match Store::open(dir) {
        Ok(store) => {
            say(&format!("{}\n", crash::OPEN_OK));
            store.close().expect("closing");
        }
        Err(idem::Error::Locked { .. }) => say(&format!("{}\n", crash::OPEN_LOCKED)),
        Err(error) => say(&format!("{} {error}\n", crash::OPEN_ERROR)),
    }
}

fn insert_until_killed(dir: &Path, durability: Durability, round: u32, threads: u32, seed: u64) {
    let config = Config::default()
        .durability(durability)
        .segment_size_bytes(crash::SEGMENT_SIZE_BYTES);
    let store = Store::open_with(dir, config).expect("opening the store");
    say("READY\n");
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let store = &store;
            scope.spawn(move || run_thread(store, durability, round, thread, seed));
        }
    });
}

/// One call a thread makes: a single key, or a batch.
enum Call {
    Single(String),
    Batch(Vec<String>),
}

/// Offers keys until killed. With `Sync`, every call is announced and acknowledged on its own;
/// with `Never` (whose calls are fast enough that a write to the pipe per call would be most of
/// their time), `calls_per_report` calls are announced together before the first of them and
/// acknowledged together after the last, so the threads append about as fast as they can.
fn run_thread(store: &Store, durability: Durability, round: u32, thread: u32, seed: u64) {
    let calls_per_report = if durability == Durability::Never {
        64
    } else {
        1
    };
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(round) << 32) ^ u64::from(thread));
    let offerer = format!("t{thread}");
    let mut next_own = 0u64;
    let mut next_shared = 0u64;
    let mut next_key = |rng: &mut StdRng| {
        if rng.gen_bool(0.3) {
            next_shared += 1;
            shared_key(round, next_shared - 1)
        } else {
            next_own += 1;
            own_key(round, thread, next_own - 1)
        }
    };
    for _ in 0..MAX_OPERATIONS_PER_THREAD / calls_per_report {
        let calls: Vec<Call> = (0..calls_per_report)
            .map(|_| {
                if rng.gen_bool(0.6) {
                    Call::Single(next_key(&mut rng))
                } else {
                    let mut keys: Vec<String> = (0..rng.gen_range(1..=16))
                        .map(|_| next_key(&mut rng))
                        .collect();
                    if rng.gen_bool(0.2) {
                        // A key repeated inside the batch is a duplicate of its first occurrence.
                        let again = keys[rng.gen_range(0..keys.len())].clone();
                        keys.push(again);
                    }
                    Call::Batch(keys)
                }
            })
            .collect();
        let mut attempts = String::new();
        for call in &calls {
            match call {
                Call::Single(key) => attempts.push_str(&format!("ATTEMPT {key}\n")),
                Call::Batch(keys) => {
                    for key in keys {
                        attempts.push_str(&format!("ATTEMPT {key}\n"));
                    }
                }
            }
        }
        say(&attempts);
        let mut acks = String::new();
        for call in &calls {
            match call {
                Call::Single(key) => {
                    let own = value(&offerer, key);
                    let outcome = store
                        .check_or_insert(key.as_bytes(), LONG_TTL, own.as_bytes())
                        .expect("check_or_insert");
                    let answered =
                        String::from_utf8(value_of(&outcome, own.as_bytes())).expect("utf-8");
                    acks.push_str(&format!("ACK {key} {answered}\n"));
                }
                Call::Batch(keys) => {
                    let items: Vec<(&[u8], std::time::Duration, String)> = keys
                        .iter()
                        .map(|key| (key.as_bytes(), LONG_TTL, value(&offerer, key)))
                        .collect();
                    let outcomes = store
                        .check_or_insert_batch(&items)
                        .expect("check_or_insert_batch");
                    for ((key, _, own), outcome) in items.iter().zip(&outcomes) {
                        let answered = value_of(outcome, own.as_bytes());
                        let answered = String::from_utf8(answered).expect("utf-8");
                        acks.push_str(&format!(
                            "ACK {} {answered}\n",
                            String::from_utf8_lossy(key)
                        ));
                    }
                }
            }
        }
        say(&acks);
    }
}

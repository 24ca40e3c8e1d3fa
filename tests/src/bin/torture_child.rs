//! The child process of the crash torture test (`tests/crash_torture.rs`).
//!
//! `torture_child <dir> <round> <seed>` opens the store (`Sync`, 256 KiB segments so that
//! compaction and whole-segment deletion have work, frequent checkpoints, background maintenance
//! on) and runs a random mix until it is killed: inserts, batches, removes, claims completed or
//! left open, explicit compaction rounds and checkpoints. Keys are `r<round>-<i>`; the value of
//! a key is a function of the key, so a wrong value is detectable. Protocol lines on stdout:
//!
//! - `I <key>`: acknowledged insert (the key is live with its value);
//! - `r <key>` before a removal is attempted, `R <key>` once it was acknowledged;
//! - `C <key>`: a claim was acquired (durable); `F <key>` once it was completed with its value;
//! - `A <i>`: every key with a number below `i` may have been attempted.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use idem::{Claim, Config, Durability, Outcome, Store};
use idem_tests::torture::{config, key, value, LEASE, TTL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, round, seed): (&Path, u64, u64) = match &args[..] {
        [_, dir, round, seed] => (
            Path::new(dir),
            round.parse().expect("round"),
            seed.parse().expect("seed"),
        ),
        _ => {
            eprintln!("usage: torture_child <dir> <round> <seed>");
            std::process::exit(2);
        }
    };
    let store = Store::open_with(dir, config()).expect("open");
    let mut rng = StdRng::seed_from_u64(seed);
    let stdout = std::io::stdout();
    let say = |line: String| {
        let mut out = stdout.lock();
        out.write_all(line.as_bytes()).expect("stdout");
        out.flush().expect("stdout");
    };
    let mut acked: Vec<u64> = Vec::new();
    let mut next = 0u64;
    // Bounded, so a child whose parent died ends by itself.
    while next < 2_000_000 {
        say(format!("A {}\n", next + 16));
        match rng.gen_range(0..100) {
            0..=49 => {
                let k = key(round, next);
                next += 1;
                if store.check_or_insert(&k, TTL, &value(&k)).expect("insert") == Outcome::Inserted
                {
                    say(format!("I {}\n", String::from_utf8_lossy(&k)));
                    acked.push(next - 1);
                }
            }
            50..=64 => {
                let keys: Vec<Vec<u8>> = (0..rng.gen_range(2..16))
                    .map(|i| key(round, next + i))
                    .collect();
                next += keys.len() as u64;
                let items: Vec<(&[u8], Duration, Vec<u8>)> =
                    keys.iter().map(|k| (&k[..], TTL, value(k))).collect();
                let outcomes = store.check_or_insert_batch(&items).expect("batch");
                let mut lines = String::new();
                for (k, outcome) in keys.iter().zip(outcomes) {
                    assert_eq!(outcome, Outcome::Inserted, "fresh keys");
                    lines.push_str(&format!("I {}\n", String::from_utf8_lossy(k)));
                }
                acked.extend(next - keys.len() as u64..next);
                say(lines);
            }
            65..=79 if !acked.is_empty() => {
                // Remove an earlier key: its segment thins out and becomes a compaction target.
                let i = acked.swap_remove(rng.gen_range(0..acked.len()));
                let k = key(round, i);
                say(format!("r {}\n", String::from_utf8_lossy(&k)));
                assert!(store.remove(&k).expect("remove"), "acked key present");
                say(format!("R {}\n", String::from_utf8_lossy(&k)));
            }
            80..=89 => {
                let k = key(round, next);
                next += 1;
                let Claim::Acquired(token) = store.claim(&k, LEASE).expect("claim") else {
                    panic!("fresh key not claimable");
                };
                say(format!("C {}\n", String::from_utf8_lossy(&k)));
                if rng.gen_bool(0.7) {
                    store.complete(token, TTL, &value(&k)).expect("complete");
                    say(format!("F {}\n", String::from_utf8_lossy(&k)));
                }
            }
            90..=94 => {
                store.maintain().expect("maintain");
            }
            _ => store.checkpoint().expect("checkpoint"),
        }
    }
    let _ = Durability::Sync;
    let _ = Config::default();
}

//! Crash torture: a child process runs a random mix of inserts, batches, removes, claims,
//! compaction and checkpoints with `Sync` durability, and is killed with SIGKILL at random
//! moments, round after round, on one store. After every kill the store is reopened: every
//! acknowledged insert is there with its value, every acknowledged removal stays removed, every
//! claim is either still in flight and listed in doubt or completed with its value, and nothing
//! the child never attempted exists. `IDEM_TORTURE_KILLS` sets the number of kills (default 100
//! in release builds, 20 in debug builds).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use idem::{Claim, Store};
use idem_tests::seeded_rng;
use idem_tests::torture::{config, key, value, LEASE, TTL};
use rand::Rng;

/// What the parent knows of a key from the child's acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Inserted,
    RemovalAttempted,
    Removed,
    Claimed,
    Completed,
}

#[test]
fn kill9_torture_loses_nothing_acknowledged() {
    let kills: u64 = std::env::var("IDEM_TORTURE_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 20 } else { 100 });
    let (mut rng, seed) = seeded_rng("crash torture");
    let dir = tempfile::tempdir().unwrap();
    let mut known: BTreeMap<Vec<u8>, Known> = BTreeMap::new();
    let mut attempted_below: BTreeMap<u64, u64> = BTreeMap::new();
    let mut totals = (0u64, 0u64, 0u64, 0u64); // acked inserts, removals, claims, in doubt resolved
    let started = Instant::now();
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_torture_child"))
            .arg(dir.path())
            .arg(round.to_string())
            .arg(rng.gen::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it work for a while (opening included), then kill it mid-flight.
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child ended by itself: {status}"
        );
        reader.join().unwrap();
        for line in received.try_iter() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let k = rest.as_bytes().to_vec();
            match tag {
                "A" => {
                    attempted_below.insert(round, rest.parse().unwrap());
                }
                "I" => {
                    known.insert(k, Known::Inserted);
                    totals.0 += 1;
                }
                "r" => {
                    known.insert(k, Known::RemovalAttempted);
                }
                "R" => {
                    known.insert(k, Known::Removed);
                    totals.1 += 1;
                }
                "C" => {
                    known.insert(k, Known::Claimed);
                    totals.2 += 1;
                }
                "F" => {
                    known.insert(k, Known::Completed);
                }
                other => panic!("round {round}: unknown line {other:?}"),
            }
        }

        let store = Store::open_with(dir.path(), config())
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopen failed: {e}"));
        let in_doubt: Vec<Vec<u8>> = store
            .in_doubt()
            .unwrap()
            .iter()
            .map(|t| t.key().to_vec())
            .collect();
        for (k, state) in &known {
            let got = store.get(k).unwrap();
            let what = format!(
                "round {round} (seed {seed}) key {}",
                String::from_utf8_lossy(k)
            );
            match state {
                Known::Inserted | Known::Completed => {
                    assert_eq!(
                        got.as_deref(),
                        Some(&value(k)[..]),
                        "{what}: acknowledged, {state:?}"
                    )
                }
                Known::Removed => assert_eq!(got, None, "{what}: removal acknowledged"),
                Known::RemovalAttempted => {
                    if let Some(got) = got {
                        assert_eq!(&got[..], &value(k)[..], "{what}");
                    }
                }
                Known::Claimed => match store.claim(k, LEASE).unwrap() {
                    Claim::InFlight { .. } => {
                        assert!(in_doubt.contains(k), "{what}: open claim not in doubt");
                    }
                    Claim::Duplicate(result) => assert_eq!(&result[..], &value(k)[..], "{what}"),
                    Claim::Acquired(_) => panic!("{what}: a durable claim was lost"),
                },
            }
        }
        // Nothing the child never attempted exists.
        for (&r, &below) in &attempted_below {
            for i in below..below + 50 {
                assert_eq!(
                    store.get(&key(r, i)).unwrap(),
                    None,
                    "round {r} key {i} was never attempted"
                );
            }
        }
        // Reconcile half the claims in doubt, as an application would after checking its ledger.
        for token in store.in_doubt().unwrap() {
            if rng.gen_bool(0.5) {
                let k = token.key().to_vec();
                store.complete(token, TTL, &value(&k)).unwrap();
                known.insert(k, Known::Completed);
                totals.3 += 1;
            }
        }
        store.close().unwrap();
    }
    println!(
        "crash torture: {kills} kills in {:.1} s; acknowledged {} inserts, {} removals, {} claims; {} claims in doubt reconciled",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2,
        totals.3
    );
}

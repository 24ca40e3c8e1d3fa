//! The child process of the transaction crash test (`tests/tests/transactions.rs`).
//!
//! `tx_child <dir> <seed>` opens the store (`Sync`, small segments) and plays a consumer of one
//! source: it resumes from the stored position, re-delivers the last few events (as a broker
//! does after a crash), and for each event commits one transaction: the dedup key `ev-<n>`, three
//! state counters incremented together, the state entry `last` = n, and the position n. A
//! re-delivered event answers `Duplicate` and changes nothing. After each commit it prints
//! `ack <n>`; the parent kills it with SIGKILL at a random moment.

use std::io::Write;
use std::path::Path;

use idem::{Config, Outcome, Store};
use idem_tests::LONG_TTL;

const COUNTERS: [&[u8]; 3] = [b"count/a", b"count/b", b"count/c"];

fn counter(store_value: Option<idem::Value>) -> u64 {
    store_value.map_or(0, |v| {
        u64::from_le_bytes(v.as_ref().try_into().expect("8 bytes"))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tx_child <dir> <seed>");
        std::process::exit(2);
    }
    let seed: u64 = args[2].parse().expect("seed");
    let config = Config::default().segment_size_bytes_for_testing(64 * 1024);
    let store = Store::open_with(Path::new(&args[1]), config).expect("open");
    let resume = store
        .position(b"src")
        .expect("position")
        .map_or(0, |p| p + 1);
    let mut out = std::io::stdout();
    writeln!(out, "ready {resume}").unwrap();
    out.flush().unwrap();
    // Re-deliver a few already-applied events first.
    let start = resume.saturating_sub(seed % 7);
    for n in start..start + 100_000 {
        let mut tx = store.transaction();
        let key = format!("ev-{n}");
        match tx
            .check_or_insert(key.as_bytes(), LONG_TTL, b"applied")
            .expect("check")
        {
            Outcome::Duplicate(_) => continue,
            Outcome::Inserted => {}
        }
        for name in COUNTERS {
            let old = counter(tx.get_state(name).expect("get_state"));
            tx.put_state(name, &(old + 1).to_le_bytes())
                .expect("put_state");
        }
        tx.put_state(b"last", &n.to_le_bytes()).expect("put_state");
        tx.set_position(b"src", n).expect("set_position");
        tx.commit().expect("commit");
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

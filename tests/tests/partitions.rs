//! Partitioned stores through the public API (`idem::partition`): one store per partition,
//! ownership epochs that only grow and survive reopens, handles fenced once their epoch is
//! old (nothing of a fenced write is written), and a partition moving back and forth.
//!
//! With `--features nats` the changelog tests (`partitions_changelog` below) run against a real
//! `nats-server` when it is on the PATH.

use std::time::Duration;

use idem::partition::{Partitions, EPOCH_SOURCE};
use idem::{Config, Durability, Error, Outcome};

const TTL: Duration = Duration::from_secs(3600);

fn open(dir: &std::path::Path) -> Partitions {
    Partitions::open(dir, Config::default()).unwrap()
}

#[test]
fn each_partition_has_its_own_store_and_a_growing_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = open(dir.path());
    let p0 = partitions.assign(0).unwrap();
    let p1 = partitions.assign(1).unwrap();
    assert_eq!((p0.epoch(), p1.epoch()), (1, 1));
    assert_eq!(
        p0.check_or_insert(b"k", TTL, b"zero").unwrap(),
        Outcome::Inserted
    );
    // The same key in another partition is another key: it lives in partition 0's store only.
    assert_eq!(
        p1.check_or_insert(b"k", TTL, b"one").unwrap(),
        Outcome::Inserted
    );
    assert_eq!(p0.get(b"k").unwrap().unwrap(), b"zero");
    assert_eq!(p1.get(b"k").unwrap().unwrap(), b"one");
    assert!(partitions.store_dir(0).exists() && partitions.store_dir(1).exists());
    assert_eq!(partitions.owned(), vec![0, 1]);
    assert_eq!(
        p0.store().position(EPOCH_SOURCE).unwrap(),
        Some(1),
        "the epoch is a position of the partition's store"
    );
}

#[test]
fn an_old_handle_is_fenced_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = open(dir.path());
    let old = partitions.assign(7).unwrap();
    old.check_or_insert(b"a", TTL, b"1").unwrap();
    // Assigned again (a rebalance that gave it back at once): the old handle is stale.
    let new = partitions.assign(7).unwrap();
    assert!(new.epoch() > old.epoch());
    match old.check_or_insert(b"b", TTL, b"2") {
        Err(Error::Fenced {
            partition,
            epoch,
            current,
        }) => assert_eq!((partition, epoch, current), (7, old.epoch(), new.epoch())),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(new.get(b"b").unwrap(), None, "a fenced write wrote nothing");
    // A transaction begun before the epoch moved is refused at commit, atomically.
    let mut tx = new.transaction().unwrap();
    tx.check_or_insert(b"c", TTL, b"3").unwrap();
    tx.put_state(b"balance", b"10").unwrap();
    let newer = partitions.assign(7).unwrap();
    assert!(matches!(tx.commit(), Err(Error::Fenced { .. })));
    assert_eq!(newer.get(b"c").unwrap(), None);
    assert_eq!(newer.store().get_state(b"balance").unwrap(), None);
    // Batches too.
    assert!(matches!(
        new.check_or_insert_batch(&[(b"d", TTL, b"4")]),
        Err(Error::Fenced { .. })
    ));
    assert_eq!(
        newer
            .check_or_insert_batch(&[
                (&b"a"[..], TTL, &b"x"[..]),
                (b"e", TTL, b"5"),
                (b"e", TTL, b"6")
            ])
            .unwrap(),
        vec![
            Outcome::Duplicate(idem::Value::from(&b"1"[..])),
            Outcome::Inserted,
            Outcome::Duplicate(idem::Value::from(&b"5"[..]))
        ]
    );
    // An epoch decided elsewhere must be above the stored one.
    assert!(matches!(
        partitions.assign_at(7, newer.epoch()),
        Err(Error::Fenced { .. })
    ));
    let far = partitions.assign_at(7, 100).unwrap();
    assert_eq!(far.epoch(), 100);
    assert!(matches!(
        newer.check_or_insert(b"f", TTL, b"6"),
        Err(Error::Fenced { .. })
    ));
}

#[test]
fn revoke_fences_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let partitions = open(dir.path());
    let handle = partitions.assign(2).unwrap();
    handle.check_or_insert(b"k", TTL, b"v").unwrap();
    partitions.revoke(2).unwrap();
    assert!(partitions.owned().is_empty());
    assert!(partitions.get(2).unwrap().is_none());
    assert!(matches!(
        handle.check_or_insert(b"k2", TTL, b"v"),
        Err(Error::Fenced { .. })
    ));
    drop(handle);
    // Closed: another process (here a plain Store) can open the directory now.
    let store = idem::Store::open(partitions.store_dir(2)).unwrap();
    assert_eq!(store.get(b"k").unwrap().unwrap(), b"v");
    assert_eq!(store.get(b"k2").unwrap(), None);
    assert_eq!(store.position(EPOCH_SOURCE).unwrap(), Some(2));
    drop(store);
    // Revoking what is not owned does nothing.
    partitions.revoke(2).unwrap();
    partitions.revoke(9).unwrap();
}

#[test]
fn reopen_keeps_epochs_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default().durability(Durability::Never);
    let epoch = {
        let partitions = Partitions::open(dir.path(), config.clone()).unwrap();
        let p = partitions.assign(4).unwrap();
        let p = {
            drop(p);
            partitions.assign(4).unwrap()
        };
        p.check_or_insert(b"k", TTL, b"v").unwrap();
        p.store().flush().unwrap();
        p.epoch()
        // Dropped without revoke, as a crash would leave it (the epoch was flushed by assign).
    };
    assert_eq!(epoch, 2);
    let partitions = Partitions::open(dir.path(), config).unwrap();
    assert_eq!(partitions.epoch(4).unwrap(), 2);
    let p = partitions.assign(4).unwrap();
    assert_eq!(p.epoch(), 3, "epochs never go back across reopens");
    assert_eq!(
        p.check_or_insert(b"k", TTL, b"other").unwrap(),
        Outcome::Duplicate(idem::Value::from(&b"v"[..]))
    );
}

/// A partition moving between two nodes (two directories) without replication, the documented
/// manual path: revoke, export, import into a fresh store on the other node, assign there. Each
/// move is a new epoch, the window moves with it and no event is answered `Inserted` twice.
#[test]
fn a_partition_moves_back_and_forth_by_export_and_import() {
    let (a_dir, b_dir, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let nodes = [open(a_dir.path()), open(b_dir.path())];
    let mut holder = nodes[0].assign(5).unwrap();
    let mut inserted = 0;
    for round in 0..6u32 {
        let (from, to) = (
            &nodes[(round % 2) as usize],
            &nodes[((round + 1) % 2) as usize],
        );
        // Each round: new keys and every earlier key again (all duplicates).
        for i in 0..=round * 10 + 9 {
            let key = format!("event-{i}");
            if holder
                .check_or_insert(key.as_bytes(), TTL, b"done")
                .unwrap()
                == Outcome::Inserted
            {
                inserted += 1;
            }
        }
        let epoch = holder.epoch();
        from.revoke(5).unwrap();
        let file = files.path().join(format!("round-{round}.idemx"));
        holder.store().export(&file).unwrap();
        drop(holder);
        // The receiving node's copy from an earlier round is stale: replace it.
        let target = to.store_dir(5);
        if target.exists() {
            std::fs::remove_dir_all(&target).unwrap();
        }
        idem::Store::open(&target).unwrap().import(&file).unwrap();
        holder = to.assign(5).unwrap();
        assert_eq!(
            holder.epoch(),
            epoch + 2,
            "revoke and assign each moved the epoch"
        );
    }
    assert_eq!(
        inserted, 60,
        "every event inserted exactly once across 6 moves"
    );
}

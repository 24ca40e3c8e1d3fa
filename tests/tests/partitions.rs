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

/// The changelog against a real `nats-server -js` (one server, replicas 1; the demo runs the
/// 3-node cluster). Skipped, saying so, when `nats-server` is not on the PATH.
#[cfg(feature = "nats")]
mod partitions_changelog {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use idem::partition::changelog::{Changelog, ChangelogConfig};
    use idem::partition::Partitions;
    use idem::{Config, Error, Outcome, Value};

    const TTL: Duration = Duration::from_secs(3600);

    /// A scratch JetStream server on a free loopback port, killed (by its pid) on drop.
    struct Server {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Option<Server> {
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = Server {
                child: spawn(dir.path(), port)?,
                port,
                dir,
            };
            server.wait();
            Some(server)
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// Starts it again on the same port and store.
        fn restart(&mut self) {
            self.stop();
            self.child = spawn(self.dir.path(), self.port).expect("nats-server ran before");
            self.wait();
        }

        fn wait(&mut self) {
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "nats-server did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn spawn(dir: &std::path::Path, port: u16) -> Option<Child> {
        match Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => Some(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "SKIPPED: nats-server is not on the PATH (apt-get install nats-server); \
                     the changelog tests need a real JetStream server"
                );
                None
            }
            Err(e) => panic!("starting nats-server: {e}"),
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn config(stream: &str) -> ChangelogConfig {
        ChangelogConfig {
            stream: stream.into(),
            subject_prefix: format!("cl.{stream}"),
            ..ChangelogConfig::default()
        }
    }

    fn node() -> (tempfile::TempDir, Partitions) {
        let dir = tempfile::tempdir().unwrap();
        let partitions = Partitions::open(dir.path(), Config::default()).unwrap();
        (dir, partitions)
    }

    fn dup(value: &[u8]) -> Outcome {
        Outcome::Duplicate(Value::from(value))
    }

    #[test]
    fn an_old_owner_is_refused_by_the_stream() {
        let Some(server) = Server::start() else {
            return;
        };
        runtime().block_on(async {
            let changelog = Changelog::connect(&server.url(), config("FENCE"))
                .await
                .unwrap();
            let ((_a_dir, a), (_b_dir, b)) = (node(), node());
            let old = changelog.take_ownership(&a, 1).await.unwrap();
            assert_eq!(
                old.check_or_insert(b"k1", TTL, b"a").await.unwrap(),
                Outcome::Inserted
            );
            // Node B takes the partition over while A still runs and believes it owns it.
            let new = changelog.take_ownership(&b, 1).await.unwrap();
            assert!(new.epoch() > old.epoch());
            match old.check_or_insert(b"k2", TTL, b"a").await {
                Err(Error::Fenced { partition: 1, .. }) => {}
                other => panic!("the old owner's append must be refused, got {other:?}"),
            }
            // Refused by the stream, so A wrote nothing locally either, and it stays fenced.
            assert_eq!(old.store().get(b"k2").unwrap(), None);
            assert!(matches!(
                old.check_or_insert(b"k3", TTL, b"a").await,
                Err(Error::Fenced { .. })
            ));
            assert_eq!(
                new.check_or_insert(b"k1", TTL, b"b").await.unwrap(),
                dup(b"a")
            );
            assert_eq!(
                new.check_or_insert(b"k2", TTL, b"b").await.unwrap(),
                Outcome::Inserted
            );
        });
    }

    #[test]
    fn a_standby_catches_up_and_takes_over() {
        let Some(server) = Server::start() else {
            return;
        };
        runtime().block_on(async {
            let changelog = Changelog::connect(&server.url(), config("STANDBY"))
                .await
                .unwrap();
            let ((_a_dir, a), (_b_dir, b)) = (node(), node());
            let owner = Arc::new(changelog.take_ownership(&a, 3).await.unwrap());
            let standby = changelog.follow(b.open_store(3).unwrap(), 3);
            // 400 writes from 50 concurrent tasks: grouped into fewer publishes.
            let mut tasks = Vec::new();
            for t in 0..50u32 {
                let owner = owner.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..8u32 {
                        let key = format!("event-{t}-{i}");
                        let outcome = owner
                            .transact(move |group| {
                                let outcome = group.check_or_insert(key.as_bytes(), TTL, b"ok")?;
                                let old = group.get_state(b"count")?.map_or(0, |v| {
                                    u64::from_le_bytes(v.as_ref().try_into().unwrap())
                                });
                                group.put_state(b"count", &(old + 1).to_le_bytes())?;
                                Ok::<_, Error>(outcome)
                            })
                            .await
                            .unwrap()
                            .unwrap();
                        assert_eq!(outcome, Outcome::Inserted);
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let stats = owner.stats().await.unwrap();
            assert_eq!(stats.writes, 400);
            assert!(
                stats.groups < 400,
                "concurrent writes share publishes: {stats:?}"
            );
            // Failover: the owner dies (dropped), the standby stops following and takes over.
            drop(owner);
            let started = Instant::now();
            let store = standby.stop().await.unwrap();
            drop(store);
            let new = changelog.take_ownership(&b, 3).await.unwrap();
            eprintln!("failover took {:?}", started.elapsed());
            for t in 0..50u32 {
                for i in 0..8u32 {
                    let key = format!("event-{t}-{i}");
                    assert_eq!(
                        new.check_or_insert(key.as_bytes(), TTL, b"x")
                            .await
                            .unwrap(),
                        dup(b"ok")
                    );
                }
            }
            let count = new.store().get_state(b"count").unwrap().unwrap();
            assert_eq!(u64::from_le_bytes(count.as_ref().try_into().unwrap()), 400);
        });
    }

    #[test]
    fn a_cold_node_restores_from_snapshot_and_tail() {
        let Some(server) = Server::start() else {
            return;
        };
        runtime().block_on(async {
            let changelog = Changelog::connect(&server.url(), config("COLD"))
                .await
                .unwrap();
            let ((_a_dir, a), (_c_dir, c)) = (node(), node());
            let owner = changelog.take_ownership(&a, 0).await.unwrap();
            for i in 0..100u32 {
                let key = format!("before-{i}");
                owner
                    .check_or_insert(key.as_bytes(), TTL, b"1")
                    .await
                    .unwrap();
            }
            owner
                .transact(|group| {
                    group.put_state(b"balance", b"100").unwrap();
                    group.set_position(b"input", 100).unwrap();
                })
                .await
                .unwrap();
            let snapshot = owner.snapshot().await.unwrap();
            assert_eq!(snapshot.entries, 102, "100 keys, a state entry, a position");
            assert!(
                snapshot.purged >= 101,
                "the messages before it were trimmed: {snapshot:?}"
            );
            for i in 0..50u32 {
                let key = format!("after-{i}");
                owner
                    .check_or_insert(key.as_bytes(), TTL, b"2")
                    .await
                    .unwrap();
            }
            drop(owner);
            // Node C never saw the partition: it replays the snapshot, then the tail.
            let restored = changelog.take_ownership(&c, 0).await.unwrap();
            for i in 0..100u32 {
                let key = format!("before-{i}");
                assert_eq!(
                    restored
                        .check_or_insert(key.as_bytes(), TTL, b"x")
                        .await
                        .unwrap(),
                    dup(b"1")
                );
            }
            for i in 0..50u32 {
                let key = format!("after-{i}");
                assert_eq!(
                    restored
                        .check_or_insert(key.as_bytes(), TTL, b"x")
                        .await
                        .unwrap(),
                    dup(b"2")
                );
            }
            assert_eq!(
                restored.store().get_state(b"balance").unwrap().unwrap(),
                b"100"
            );
            assert_eq!(restored.store().position(b"input").unwrap(), Some(100));
            assert_eq!(
                restored.check_or_insert(b"new", TTL, b"3").await.unwrap(),
                Outcome::Inserted
            );
        });
    }

    #[test]
    fn a_partition_moves_back_and_forth_through_the_changelog() {
        let Some(server) = Server::start() else {
            return;
        };
        runtime().block_on(async {
            let changelog = Changelog::connect(&server.url(), config("MOVES"))
                .await
                .unwrap();
            let nodes = [node(), node()];
            let mut epoch = 0;
            let mut inserted = 0;
            let mut previous: Option<idem::partition::changelog::ReplicatedPartition> = None;
            for round in 0..6u32 {
                let (_, partitions) = &nodes[(round % 2) as usize];
                let owner = changelog.take_ownership(partitions, 9).await.unwrap();
                assert!(owner.epoch() > epoch, "each move is a new epoch");
                epoch = owner.epoch();
                if let Some(previous) = previous.take() {
                    assert!(matches!(
                        previous.check_or_insert(b"late", TTL, b"x").await,
                        Err(Error::Fenced { .. })
                    ));
                }
                for i in 0..=round * 10 + 9 {
                    let key = format!("event-{i}");
                    if owner
                        .check_or_insert(key.as_bytes(), TTL, b"done")
                        .await
                        .unwrap()
                        == Outcome::Inserted
                    {
                        inserted += 1;
                    }
                }
                previous = Some(owner);
            }
            assert_eq!(inserted, 60, "every event inserted once across 6 moves");
        });
    }

    /// A publish that fails (the server is down) gives no answer, and the partition carries on
    /// once the stream is back, with the stream and the store in step.
    #[test]
    fn a_failed_publish_is_never_answered() {
        let Some(mut server) = Server::start() else {
            return;
        };
        runtime().block_on(async {
            let changelog = Changelog::connect(&server.url(), config("DOWN"))
                .await
                .unwrap();
            let (_a_dir, a) = node();
            let owner = changelog.take_ownership(&a, 2).await.unwrap();
            owner.check_or_insert(b"k1", TTL, b"1").await.unwrap();
            server.stop();
            match owner.check_or_insert(b"k2", TTL, b"2").await {
                Err(Error::Replication { .. }) => {}
                other => panic!("no answer without the stream's ack, got {other:?}"),
            }
            assert_eq!(owner.store().get(b"k2").unwrap(), None);
            server.restart();
            // The client reconnects; the committer resyncs from the stream first.
            let started = Instant::now();
            let outcome = loop {
                match owner.check_or_insert(b"k2", TTL, b"2").await {
                    Ok(outcome) => break outcome,
                    Err(Error::Replication { .. })
                        if started.elapsed() < Duration::from_secs(20) =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            // The failed publish may have landed after all (the client re-sends what it
            // buffered when it reconnects): then the resync applied it and the retry is its
            // duplicate. Either way the caller was never told anything the stream lacks.
            assert!(
                outcome == Outcome::Inserted || outcome == dup(b"2"),
                "{outcome:?}"
            );
            assert_eq!(
                owner.check_or_insert(b"k1", TTL, b"x").await.unwrap(),
                dup(b"1")
            );
            // The stream has what the owner has: a cold node agrees on both keys.
            let (_c_dir, c) = node();
            let restored = changelog.take_ownership(&c, 2).await.unwrap();
            assert_eq!(
                restored.check_or_insert(b"k1", TTL, b"x").await.unwrap(),
                dup(b"1")
            );
            assert_eq!(
                restored.check_or_insert(b"k2", TTL, b"x").await.unwrap(),
                dup(b"2")
            );
        });
    }
}

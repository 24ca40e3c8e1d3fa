//! The catalog: every row of the comparison, in report order. Adding a peer is a module under
//! `peers/` and a `RowSpec` here; the thread counts of the scaling rows come from `--threads`.

use std::sync::Arc;

use crate::peer::{Runnable, Shape};
use crate::peers::{ceiling, fjall, idem, moka, redb, redis, sled};

/// Operations per commit (per pipeline for Redis) of the batched rows.
pub const BATCH: usize = 1000;
/// Threads of the `Sync` single-key group-commit row.
pub const SYNC_THREADS: usize = 64;
/// Thread counts of the scaling rows (idem `Never` single-key and the ceiling) by default.
pub const DEFAULT_THREADS: &[usize] = &[1, 2];
/// `--peers` alias for every scaling row.
pub const SCALING: &str = "scaling";

/// Names of the rows the report's ratios and targets refer to.
pub mod names {
    pub const IDEM_NEVER_BATCH: &str = "idem-never-batch";
    pub const IDEM_NEVER_TX: &str = "idem-never-tx";
    pub const IDEM_NEVER_DELTAS: &str = "idem-never-deltas";
    pub const IDEM_NEVER_PRESIZED: &str = "idem-never-presized";
    pub const IDEM_NEVER_BATCH_PRESIZED: &str = "idem-never-batch-presized";
    pub const CEILING_PRESIZED: &str = "hashbrown-1t-presized";
    pub const IDEM_SYNC_BATCH: &str = "idem-sync-batch";
    pub const IDEM_SYNC_MANY: &str = "idem-sync-64t";
    pub const IDEM_RAM: &str = "idem-ram";
    pub const SLED: &str = "sled";
    pub const FJALL: &str = "fjall";
    pub const REDB_NONE: &str = "redb-none";
    pub const REDB_NONE_BATCH: &str = "redb-none-batch";
    pub const REDB_DURABLE_BATCH: &str = "redb-durable-batch";
    pub const MOKA: &str = "moka";
    pub const REDIS: &str = "redis";

    /// idem `Never`, single-key calls from `threads` threads (a scaling row).
    pub fn idem_never(threads: usize) -> String {
        format!("idem-never-{threads}t")
    }

    /// The hashbrown ceiling at `threads` threads (a scaling row).
    pub fn ceiling(threads: usize) -> String {
        format!("hashbrown-{threads}t")
    }

    /// The weak (SipHash) ceiling at `threads` threads.
    pub fn weak_ceiling(threads: usize) -> String {
        format!("std-siphash-{threads}t")
    }
}

/// Which durability a row runs at (the "group" column): rows compare fairly within a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Written to the OS (or an engine buffer) without an fsync per operation or batch.
    NoFsync,
    /// Durable when each batch of 1000 returns.
    DurableBatch,
    /// Durable when each single operation returns.
    DurableOp,
    /// Memory only: reference points, not durable at all.
    Memory,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group::NoFsync,
        Group::DurableBatch,
        Group::DurableOp,
        Group::Memory,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Group::NoFsync => "N",
            Group::DurableBatch => "B",
            Group::DurableOp => "S",
            Group::Memory => "M",
        }
    }

    pub fn color(self) -> &'static str {
        match self {
            Group::NoFsync => "#4878d0",
            Group::DurableBatch => "#ee854a",
            Group::DurableOp => "#d65f5f",
            Group::Memory => "#8c8c8c",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Group::NoFsync => "no fsync per operation: the OS (or the engine's buffer) holds recent writes; power loss can lose them",
            Group::DurableBatch => "durable per batch: the call returns after the batch of 1000 is fsynced",
            Group::DurableOp => "durable per operation: each call returns after its record is fsynced (group commit across threads)",
            Group::Memory => "memory only: not durable at all; reference points",
        }
    }
}

/// Which operation count a row runs (`--ops`, `--sync-ops`, `--ram-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Ops,
    SyncOps,
    /// Until exactly this many distinct keys exist (the RAM target is stated per live key).
    RamKeys,
}

/// One row of the comparison: a peer, how it is called, and how many operations it runs.
#[derive(Clone)]
pub struct RowSpec {
    /// The `--peer` / `--peers` name, unique.
    pub name: String,
    pub label: &'static str,
    pub group: Group,
    pub shape: Shape,
    pub size: Size,
    /// Part of the thread-scaling table (`--threads`, `--peers scaling`).
    pub scaling: bool,
    pub peer: Arc<dyn Runnable>,
}

impl RowSpec {
    fn new(
        name: impl Into<String>,
        label: &'static str,
        group: Group,
        peer: &Arc<dyn Runnable>,
    ) -> Self {
        RowSpec {
            name: name.into(),
            label,
            group,
            shape: Shape {
                threads: 1,
                batch: 1,
            },
            size: Size::Ops,
            scaling: false,
            peer: Arc::clone(peer),
        }
    }

    fn threads(mut self, threads: usize) -> Self {
        self.shape.threads = threads;
        self
    }

    fn batch(mut self, batch: usize) -> Self {
        self.shape.batch = batch;
        self
    }

    fn size(mut self, size: Size) -> Self {
        self.size = size;
        self
    }

    fn scaling(mut self) -> Self {
        self.scaling = true;
        self
    }
}

fn peer(p: impl Runnable + 'static) -> Arc<dyn Runnable> {
    Arc::new(p)
}

/// Every row, in report order; the scaling rows at each of `threads`.
pub fn catalog(threads: &[usize]) -> Vec<RowSpec> {
    use Group::*;
    let never = peer(idem::Idem {
        durability: ::idem::Durability::Never,
        transactional: false,
        delta_every_bytes: 0,
        presized: false,
    });
    let never_deltas = peer(idem::Idem {
        durability: ::idem::Durability::Never,
        transactional: false,
        delta_every_bytes: idem_bench::DELTA_EVERY_BYTES,
        presized: false,
    });
    let never_tx = peer(idem::Idem {
        durability: ::idem::Durability::Never,
        transactional: true,
        delta_every_bytes: 0,
        presized: false,
    });
    let sync = peer(idem::Idem {
        durability: ::idem::Durability::Sync,
        transactional: false,
        delta_every_bytes: 0,
        presized: false,
    });
    let redb_none = peer(redb::Redb {
        durability: ::redb::Durability::None,
    });
    let redb_durable = peer(redb::Redb {
        durability: ::redb::Durability::Immediate,
    });
    let never_presized = peer(idem::Idem {
        durability: ::idem::Durability::Never,
        transactional: false,
        delta_every_bytes: 0,
        presized: true,
    });
    let hashbrown = peer(ceiling::Hashbrown { presized: false });
    let hashbrown_presized = peer(ceiling::Hashbrown { presized: true });
    let siphash = peer(ceiling::StdSipHash);
    let mut rows = Vec::new();
    for &t in threads {
        rows.push(
            RowSpec::new(names::idem_never(t), "idem Never", NoFsync, &never)
                .threads(t)
                .scaling(),
        );
    }
    rows.extend([
        RowSpec::new(
            names::IDEM_NEVER_DELTAS,
            "idem Never, delta checkpoints every 8 MiB",
            NoFsync,
            &never_deltas,
        ),
        RowSpec::new(
            names::IDEM_NEVER_TX,
            "idem Never, transaction (dedup + state + position)",
            NoFsync,
            &never_tx,
        ),
        RowSpec::new(
            names::IDEM_NEVER_BATCH,
            "idem Never, batch",
            NoFsync,
            &never,
        )
        .batch(BATCH),
        RowSpec::new(
            names::IDEM_NEVER_PRESIZED,
            "idem Never, Config::expected_keys set",
            NoFsync,
            &never_presized,
        ),
        RowSpec::new(
            names::IDEM_NEVER_BATCH_PRESIZED,
            "idem Never, batch, Config::expected_keys set",
            NoFsync,
            &never_presized,
        )
        .batch(BATCH),
        RowSpec::new(
            names::SLED,
            "sled 0.34 (default flush)",
            NoFsync,
            &peer(sled::Sled),
        ),
        RowSpec::new(
            names::FJALL,
            "fjall 3 (default)",
            NoFsync,
            &peer(fjall::Fjall),
        ),
        RowSpec::new(
            names::REDB_NONE,
            "redb, Durability::None, txn/op",
            NoFsync,
            &redb_none,
        ),
        RowSpec::new(
            names::REDB_NONE_BATCH,
            "redb, Durability::None, txn/batch",
            NoFsync,
            &redb_none,
        )
        .batch(BATCH),
        RowSpec::new(
            names::IDEM_SYNC_BATCH,
            "idem Sync, batch",
            DurableBatch,
            &sync,
        )
        .batch(BATCH),
        RowSpec::new(
            names::REDB_DURABLE_BATCH,
            "redb, Immediate, txn/batch",
            DurableBatch,
            &redb_durable,
        )
        .batch(BATCH),
        RowSpec::new(
            names::IDEM_SYNC_MANY,
            "idem Sync, single-key",
            DurableOp,
            &sync,
        )
        .threads(SYNC_THREADS)
        .size(Size::SyncOps),
        RowSpec::new(names::IDEM_RAM, "idem Never (RAM check)", NoFsync, &never)
            .size(Size::RamKeys),
        RowSpec::new(
            names::MOKA,
            "moka sync::Cache (TTL 1 h)",
            Memory,
            &peer(moka::Moka),
        ),
        RowSpec::new(
            names::REDIS,
            "Redis SET NX PX (pipelined)",
            Memory,
            &peer(redis::Redis),
        )
        .batch(BATCH),
    ]);
    for &t in threads {
        rows.push(
            RowSpec::new(
                names::ceiling(t),
                "sharded hashbrown (ceiling)",
                Memory,
                &hashbrown,
            )
            .threads(t)
            .scaling(),
        );
    }
    rows.push(RowSpec::new(
        names::CEILING_PRESIZED,
        "sharded hashbrown, with_capacity (ceiling)",
        Memory,
        &hashbrown_presized,
    ));
    for t in [1, 2] {
        rows.push(
            RowSpec::new(
                names::weak_ceiling(t),
                "sharded std HashMap, SipHash (weak ceiling)",
                Memory,
                &siphash,
            )
            .threads(t),
        );
    }
    rows
}

//! The exactly-once consumer whose state lives in idem (`--mode state`): a balance per customer,
//! changed in the same transaction as the event's dedup record and the channel's position.
//!
//! Per delivery, one [`idem::Transaction`]:
//! 1. `check_or_insert(event id)`: `Duplicate` means the event was applied already (its dedup
//!    record and its balance change were committed together), so nothing else is changed;
//! 2. if `Inserted`: `get_state(balance/<customer>)` plus the amount → `put_state`;
//! 3. `set_position(channel, offset + 1)`: the next offset to read;
//! 4. `commit`, retried from step 1 on `Error::Conflict`.
//!
//! Invariants: a balance holds exactly the events whose dedup records exist, and the position
//! says how far the channel was consumed into them, because the three change in one commit
//! or not at all. So a restarted consumer asks the producer for deliveries from
//! [`Balances::position`] and needs no file of its own: deliveries applied before the crash are
//! not sent again, and those whose transaction did not commit are applied when re-sent.
//!
//! Before acknowledging a batch the consumer flushes the store, so an acknowledged delivery is
//! durable (the position never falls behind the acknowledgements, even at a power loss).

use std::time::{Duration, Instant};

use idem::{Error, Outcome, Store};

use crate::cli_error::{CliError, CliResult, Context};
use crate::consumer::receipt;
use crate::protocol::{BatchReport, Delivery};

/// The position key of the demo's channel.
pub const CHANNEL: &[u8] = b"channel/charges";

/// How many times one delivery's transaction is retried after a `Conflict` before giving up
/// (with one consumer there is no one to conflict with: a retry would be news).
const MAX_RETRIES: u32 = 100;

/// The state key of a customer's balance.
pub fn balance_key(customer: u32) -> String {
    format!("balance/cust-{customer:07}")
}

/// A customer's balance: the cents charged and the number of charges. The count lets the check
/// at the end tell a double charge from a wrong amount. Stored as 16 bytes, two u64 LE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub cents: u64,
    pub charges: u64,
}

impl Balance {
    pub fn encode(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.cents.to_le_bytes());
        bytes[8..].copy_from_slice(&self.charges.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Balance> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (cents, charges) = bytes.split_at(8);
        Some(Balance {
            cents: u64::from_le_bytes(cents.try_into().ok()?),
            charges: u64::from_le_bytes(charges.try_into().ok()?),
        })
    }

    /// This balance with one more charge of `cents`.
    pub fn charged(self, cents: u32) -> Balance {
        Balance {
            cents: self.cents + u64::from(cents),
            charges: self.charges + 1,
        }
    }
}

/// Reads a customer's balance from a store (none recorded: zero).
pub fn read_balance(store: &Store, customer: u32) -> CliResult<Balance> {
    let key = balance_key(customer);
    match store
        .get_state(key.as_bytes())
        .context(format_args!("reading {key}"))?
    {
        None => Ok(Balance::default()),
        Some(value) => Balance::decode(&value)
            .ok_or_else(|| CliError::new(format!("{key} holds {} bytes, not 16", value.len()))),
    }
}

/// The state-mode consumer: balances, dedup records and the channel position in one store.
pub struct Balances {
    store: Store,
    ttl: Duration,
    pid: u32,
}

impl Balances {
    pub fn new(store: Store, ttl: Duration) -> Balances {
        Balances {
            store,
            ttl,
            pid: std::process::id(),
        }
    }

    #[cfg(test)]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The channel offset to consume from: the position committed with the last transaction.
    pub fn position(&self) -> CliResult<u64> {
        let position = self
            .store
            .position(CHANNEL)
            .context("reading the channel position")?;
        Ok(position.unwrap_or(0))
    }

    /// Applies batch `seq`, whose first delivery is at channel offset `offset`: one transaction
    /// per delivery, then a flush, so that the batch may be acknowledged.
    pub fn apply_batch(
        &mut self,
        seq: u64,
        offset: u64,
        items: &[Delivery],
    ) -> CliResult<BatchReport> {
        let started = Instant::now();
        let mut report = BatchReport::default();
        for (at, item) in (offset..).zip(items) {
            let mut retries = 0;
            let outcome = loop {
                let applied = self.apply(seq, at, item).context(format_args!(
                    "idem transaction of {} at channel offset {at}",
                    item.event_id
                ))?;
                match applied {
                    Some(outcome) => break outcome,
                    None if retries < MAX_RETRIES => retries += 1,
                    None => {
                        return Err(CliError::new(format!(
                            "idem transaction of {} at channel offset {at}: {MAX_RETRIES} conflicts in a row",
                            item.event_id
                        )))
                    }
                }
            };
            report.retried += u64::from(retries);
            match outcome {
                Outcome::Inserted => report.inserted += 1,
                Outcome::Duplicate(_) => report.duplicates += 1,
            }
        }
        self.store.flush().context("flushing the idem store")?;
        report.commit_nanos = started.elapsed().as_nanos() as u64;
        Ok(report)
    }

    /// One delivery's transaction: dedup record, balance and position, all or nothing. `None`:
    /// the commit lost a race (`Error::Conflict`) and wrote nothing; try again.
    fn apply(&self, seq: u64, offset: u64, item: &Delivery) -> CliResult<Option<Outcome>> {
        let mut tx = self.store.transaction();
        let receipt = receipt(item.amount_cents, self.pid, seq);
        let outcome = tx.check_or_insert(item.event_id.as_bytes(), self.ttl, receipt.as_bytes())?;
        if outcome == Outcome::Inserted {
            let key = balance_key(item.customer);
            let old = match tx.get_state(key.as_bytes())? {
                None => Balance::default(),
                Some(value) => Balance::decode(&value).ok_or_else(|| {
                    CliError::new(format!("{key} holds {} bytes, not a balance", value.len()))
                })?,
            };
            tx.put_state(key.as_bytes(), &old.charged(item.amount_cents).encode())?;
        }
        // A position behind the committed one fails with PositionRegressed: the producer
        // re-sent what this store had consumed already, which it must never do.
        tx.set_position(CHANNEL, offset + 1)?;
        match tx.commit() {
            Ok(()) => Ok(Some(outcome)),
            Err(Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the store; returns its final counters (fsyncs, disk bytes, live keys).
    pub fn finish(self) -> CliResult<(u64, u64, u64)> {
        let stats = self.store.stats();
        self.store.close().context("closing the idem store")?;
        Ok((stats.fsyncs, stats.disk_bytes, stats.live_keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::event_id;

    const TTL: Duration = Duration::from_secs(3600);

    fn delivery(event: u32, amount_cents: u32, customer: u32) -> Delivery {
        Delivery {
            event_id: event_id(event),
            amount_cents,
            customer,
        }
    }

    fn balance(store: &Store, customer: u32) -> (u64, u64) {
        let b = read_balance(store, customer).unwrap();
        (b.cents, b.charges)
    }

    #[test]
    fn balance_round_trips() {
        let b = Balance::default().charged(250).charged(100);
        assert_eq!(
            b,
            Balance {
                cents: 350,
                charges: 2
            }
        );
        assert_eq!(Balance::decode(&b.encode()), Some(b));
        assert_eq!(Balance::decode(&[0; 15]), None);
        assert_eq!(balance_key(42), "balance/cust-0000042");
    }

    #[test]
    fn each_event_is_applied_once_and_a_restart_resumes_from_the_position() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut balances = Balances::new(Store::open(dir.path()).unwrap(), TTL);
            assert_eq!(balances.position().unwrap(), 0);
            let batch = [
                delivery(1, 100, 0),
                delivery(2, 200, 1),
                delivery(1, 100, 0),
            ];
            let report = balances.apply_batch(0, 0, &batch).unwrap();
            assert_eq!((report.inserted, report.duplicates), (2, 1));
            assert_eq!(report.retried, 0);
            assert_eq!(balances.position().unwrap(), 3);
            assert_eq!(balance(balances.store(), 0), (100, 1));
            // Killed: dropped without close.
        }
        let mut balances = Balances::new(Store::open(dir.path()).unwrap(), TTL);
        assert_eq!(balances.position().unwrap(), 3);
        let report = balances
            .apply_batch(1, 3, &[delivery(2, 200, 1), delivery(3, 50, 0)])
            .unwrap();
        assert_eq!((report.inserted, report.duplicates), (1, 1));
        assert_eq!(balances.position().unwrap(), 5);
        // Re-sending from behind the committed position is refused, and changes nothing.
        let behind = balances
            .apply_batch(2, 1, &[delivery(4, 70, 0)])
            .unwrap_err()
            .to_string();
        assert!(behind.contains("offset 1"), "{behind}");
        assert_eq!(balances.position().unwrap(), 5);
        assert_eq!(balance(balances.store(), 0), (150, 2));
        assert_eq!(balance(balances.store(), 1), (200, 1));
        assert_eq!(balance(balances.store(), 2), (0, 0));
        assert!(balances
            .store()
            .get(event_id(4).as_bytes())
            .unwrap()
            .is_none());
        let (_, _, live_keys) = balances.finish().unwrap();
        assert_eq!(live_keys, 3);
    }
}

//! The demo's producer and its at-least-once channel: N charge events, and the order in which
//! the channel delivers them, duplicates included. Deterministic for a seed.
//!
//! Of the events, a fraction `dup_rate` is delivered more than once:
//! - half of them in one *network blip*: a contiguous slice of the stream whose acknowledgements
//!   were lost, so the producer re-sends the whole slice right after it (as in the incident where
//!   0.2% of charge events arrived twice);
//! - the other half as scattered *retries*: single events whose ack timed out, re-sent a little
//!   later (1 to 5,000 deliveries on, so sometimes in the same batch, mostly in a later one).
//!
//! One duplicated event in ten arrives a third time. The re-sends after a consumer crash are not
//! in this schedule: the demo adds them when it re-sends what was not acknowledged.
//!
//! Each event also names the customer it charges ([`Workload::assign_customers`], drawn from a
//! random stream of its own so that a seed gives the same amounts and deliveries with or without
//! customers): `--mode state` keeps a balance per customer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The key of event `index`: its idempotency key, also the ledger's event id.
pub fn event_id(index: u32) -> String {
    format!("evt-{index:010}")
}

/// The index in an event id made by [`event_id`].
pub fn parse_event_id(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("evt-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The producer's events and the channel's delivery order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The amount of each event, in cents (100 to 50,000), indexed by event.
    pub amounts: Vec<u32>,
    /// Event indices in the order the channel delivers them; every event at least once.
    pub deliveries: Vec<u32>,
    /// Events delivered more than once by the channel.
    pub duplicated_events: u64,
    /// The events of the network blip (re-sent as a slice).
    pub blip: std::ops::Range<u32>,
    /// The customer each event charges, indexed by event; empty until
    /// [`Workload::assign_customers`] (then every event charges customer 0).
    pub customers: Vec<u32>,
}

impl Workload {
    pub fn events(&self) -> u32 {
        self.amounts.len() as u32
    }

    /// Deliveries beyond the first of each event.
    pub fn extra_deliveries(&self) -> u64 {
        self.deliveries.len() as u64 - u64::from(self.events())
    }

    /// The sum every event charged exactly once comes to.
    pub fn total_cents(&self) -> u64 {
        self.amounts.iter().map(|&a| u64::from(a)).sum()
    }

    /// Spreads the events uniformly over `customers` customers (at least one).
    pub fn assign_customers(&mut self, customers: u32, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed ^ CUSTOMER_STREAM);
        let customers = customers.max(1);
        self.customers = (0..self.events())
            .map(|_| rng.gen_range(0..customers))
            .collect();
    }

    /// The customer event `event` charges.
    pub fn customer(&self, event: u32) -> u32 {
        self.customers.get(event as usize).copied().unwrap_or(0)
    }
}

/// Salt of the customers' random stream (independent of the amounts' and the schedule's).
const CUSTOMER_STREAM: u64 = 0x6375_7374_6f6d_6572;

/// How many extra copies a duplicated event gets: 1, or 2 for one in ten.
fn extra_copies(rng: &mut StdRng) -> u32 {
    if rng.gen_bool(0.1) {
        2
    } else {
        1
    }
}

/// Builds the workload for `events` events of which `dup_rate` are delivered more than once.
pub fn generate(events: u32, dup_rate: f64, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let amounts: Vec<u32> = (0..events).map(|_| rng.gen_range(100..=50_000)).collect();

    let duplicated = ((f64::from(events) * dup_rate.clamp(0.0, 1.0)).round() as u32).min(events);
    let blip_len = duplicated.div_ceil(2);
    let scattered = duplicated - blip_len;
    let blip_start = rng.gen_range(0..=events - blip_len);
    let blip = blip_start..blip_start + blip_len;

    // Scattered retries: distinct events outside the blip.
    let mut retried = vec![0u8; events as usize];
    let outside = events - blip_len;
    for pick in rand::seq::index::sample(&mut rng, outside as usize, scattered as usize) {
        let mut event = pick as u32;
        if event >= blip.start {
            event += blip_len;
        }
        retried[event as usize] = extra_copies(&mut rng) as u8;
    }

    let mut deliveries = Vec::with_capacity(events as usize + duplicated as usize * 2);
    // Retries waiting for their moment: (due after this many originals, tie-break, event).
    let mut pending: BinaryHeap<Reverse<(u64, u64, u32)>> = BinaryHeap::new();
    let mut tie = 0u64;
    for event in 0..events {
        deliveries.push(event);
        for _ in 0..retried[event as usize] {
            let due = u64::from(event) + rng.gen_range(1..=5_000u64);
            pending.push(Reverse((due, tie, event)));
            tie += 1;
        }
        if blip_len > 0 && event + 1 == blip.end {
            // The blip ends: the producer re-sends the whole slice, a few events twice more.
            let mut third = Vec::new();
            for again in blip.clone() {
                deliveries.push(again);
                if extra_copies(&mut rng) == 2 {
                    third.push(again);
                }
            }
            deliveries.extend(third);
        }
        while let Some(&Reverse((due, _, retry))) = pending.peek() {
            if due > u64::from(event) {
                break;
            }
            pending.pop();
            deliveries.push(retry);
        }
    }
    while let Some(Reverse((_, _, retry))) = pending.pop() {
        deliveries.push(retry);
    }

    Workload {
        amounts,
        deliveries,
        duplicated_events: u64::from(duplicated),
        blip,
        customers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(w: &Workload) -> Vec<u32> {
        let mut seen = vec![0u32; w.events() as usize];
        for &d in &w.deliveries {
            seen[d as usize] += 1;
        }
        seen
    }

    #[test]
    fn every_event_delivered_and_the_right_share_duplicated() {
        let w = generate(100_000, 0.002, 7);
        let seen = copies(&w);
        assert!(seen.iter().all(|&c| (1..=3).contains(&c)));
        let duplicated = seen.iter().filter(|&&c| c > 1).count() as u64;
        assert_eq!(duplicated, 200);
        assert_eq!(w.duplicated_events, 200);
        let extra: u64 = seen.iter().map(|&c| u64::from(c - 1)).sum();
        assert_eq!(extra, w.extra_deliveries());
        assert!((200..=400).contains(&extra), "{extra}");
        // The blip is a contiguous slice, all delivered at least twice.
        assert_eq!(w.blip.len(), 100);
        assert!(w.blip.clone().all(|e| seen[e as usize] >= 2));
        assert!(w.amounts.iter().all(|&a| (100..=50_000).contains(&a)));
    }

    #[test]
    fn first_deliveries_come_in_order() {
        let w = generate(10_000, 0.05, 3);
        let mut first_seen = vec![false; 10_000];
        let mut last_first = None;
        for &d in &w.deliveries {
            if !first_seen[d as usize] {
                first_seen[d as usize] = true;
                assert!(
                    last_first.is_none_or(|l| l < d),
                    "originals out of order at {d}"
                );
                last_first = Some(d);
            }
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let a = generate(5_000, 0.01, 11);
        let b = generate(5_000, 0.01, 11);
        let c = generate(5_000, 0.01, 12);
        assert_eq!(a.deliveries, b.deliveries);
        assert_eq!(a.amounts, b.amounts);
        assert_ne!(a.deliveries, c.deliveries);
    }

    #[test]
    fn customers_do_not_change_the_schedule() {
        let plain = generate(5_000, 0.01, 11);
        let mut with = generate(5_000, 0.01, 11);
        with.assign_customers(40, 11);
        assert_eq!(with.deliveries, plain.deliveries);
        assert_eq!(with.amounts, plain.amounts);
        assert_eq!(with.customers.len(), 5_000);
        assert!(with.customers.iter().all(|&c| c < 40));
        // Every customer gets some events (5,000 over 40: about 125 each).
        let mut seen = [false; 40];
        for e in 0..5_000 {
            seen[with.customer(e) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(plain.customer(17), 0);
    }

    #[test]
    fn edge_rates() {
        let none = generate(1_000, 0.0, 1);
        assert_eq!(none.deliveries, (0..1_000).collect::<Vec<_>>());
        assert_eq!(none.extra_deliveries(), 0);
        let all = generate(1_000, 1.0, 1);
        assert!(copies(&all).iter().all(|&c| c >= 2));
        let tiny = generate(1, 0.5, 1);
        assert!(!tiny.deliveries.is_empty());
    }

    #[test]
    fn event_ids_round_trip() {
        assert_eq!(event_id(42), "evt-0000000042");
        assert_eq!(parse_event_id(&event_id(42)), Some(42));
        assert_eq!(parse_event_id(&event_id(u32::MAX)), Some(u32::MAX));
        for bad in ["", "evt-", "evt-12a", "ord-12", "evt--1"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}

//! The line protocol between `idem demo` (the producer's side) and its consumer process.
//!
//! Producer → consumer, on the consumer's stdin:
//! - `B <seq> <n> <offset>` followed by `n` lines `<event-id> <amount-cents> <customer>`: a batch
//!   of deliveries, the first at channel offset `offset` (the next ones follow it);
//! - `E`: no more deliveries; close the store and report.
//!
//! Consumer → producer, on the consumer's stdout, each line starting with `@idem ` (anything
//! else on stdout is ignored, so a test harness may share the stream):
//! - `@idem R <ledger-lines-read> <records-replayed> <bytes-cut> <open-micros>
//!   <reconcile-micros> <in-doubt> <in-ledger> <charged-now> <released> <position>`: ready, after
//!   recovery and the reconciliation of the claims in doubt; `position` is the channel offset the
//!   consumer wants its deliveries from (state mode: the position committed in idem; else 0);
//! - `@idem A <seq> <inserted> <duplicates> <in-doubt> <charged-blindly> <retried>
//!   <commit-nanos> <redelivered> <late-duplicates>`: batch `seq` is charged and in the ledger
//!   (fsynced): acknowledged (`redelivered`: of its deliveries, those the broker had delivered
//!   before, over NATS; 0 on the pipe; `late-duplicates`: deliveries whose key's entry had expired
//!   shortly before);
//! - `@idem S <fsyncs> <disk-bytes> <live-keys>`: the store's final stats, before exit.

use std::io::{self, BufRead, Write};

use crate::workload::{event_id, Workload};

pub const PREFIX: &str = "@idem ";

/// One delivery of a charge event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    pub amount_cents: u32,
    /// The customer the event charges.
    pub customer: u32,
}

/// What a consumer says about one acknowledged batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Deliveries charged: first seen (claim `Acquired`, or batch mode's `Inserted`).
    pub inserted: u64,
    /// Deliveries idem answered `Duplicate` (batch mode: and whose charge is in the ledger): not
    /// charged again.
    pub duplicates: u64,
    /// Batch mode only: deliveries idem answered `Duplicate` whose charge was missing from the
    /// ledger (the previous consumer crashed between idem's commit and the ledger write):
    /// charged now.
    pub in_doubt: u64,
    /// Deliveries charged without asking idem (the naive consumer).
    pub charged_blindly: u64,
    /// Claims mode: deliveries first answered `InFlight` (their event's claim was not completed
    /// yet), asked again once it was (then counted in `duplicates`).
    pub retried: u64,
    /// Time spent in idem: the batch's claims, or its `check_or_insert_batch` (0 for the naive
    /// consumer).
    pub commit_nanos: u64,
    /// Over NATS (`idem demo --broker nats`): deliveries JetStream had delivered before (to a
    /// consumer that did not acknowledge them in time, e.g. one killed). 0 on the pipe.
    pub redelivered: u64,
    /// Deliveries idem inserted or claimed although their key's entry had expired shortly
    /// before (late duplicates: the TTL was shorter than the retry delay). Claims and batch
    /// modes; transactions (state mode) are not counted.
    pub late_duplicates: u64,
}

/// What the reconciliation of the claims left open by a crashed consumer found (claims mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Claims listed by `in_doubt()`.
    pub in_doubt: u64,
    /// Of them, charges found in the ledger: completed with the ledger's receipt.
    pub in_ledger: u64,
    /// Of them, charges missing from the ledger: charged now, then completed.
    pub charged_now: u64,
    /// Of them, claims with no amount to charge: released, for the re-sent delivery to charge.
    pub released: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToConsumer {
    Batch {
        seq: u64,
        /// The channel offset of the first delivery.
        offset: u64,
        items: Vec<Delivery>,
    },
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToProducer {
    Ready {
        /// Ledger lines the consumer read on start (to reconcile claims, or batch mode's load).
        ledger_lines_read: u64,
        records_replayed: u64,
        bytes_cut: u64,
        open_micros: u64,
        /// Of `open_micros`, the time spent reconciling the claims in doubt.
        reconcile_micros: u64,
        reconciled: Reconciled,
        /// The channel offset to deliver from: state mode's committed position, else 0.
        position: u64,
    },
    Ack {
        seq: u64,
        report: BatchReport,
    },
    Summary {
        fsyncs: u64,
        disk_bytes: u64,
        live_keys: u64,
    },
}

/// Writes batch `seq` of the given event indices, the first at channel offset `offset` (amounts
/// and customers looked up in `workload`).
pub fn write_batch(
    out: &mut impl Write,
    seq: u64,
    offset: u64,
    events: &[u32],
    workload: &Workload,
) -> io::Result<()> {
    writeln!(out, "B {seq} {} {offset}", events.len())?;
    for &event in events {
        write_delivery(out, event, workload)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Writes the delivery of `event`, `<event-id> <amount-cents> <customer>` (no newline): a line
/// of a batch, or the body of a NATS message.
pub fn write_delivery(out: &mut impl Write, event: u32, workload: &Workload) -> io::Result<()> {
    let amount = workload.amounts[event as usize];
    let customer = workload.customer(event);
    write!(out, "{} {amount} {customer}", event_id(event))
}

/// Parses a delivery written by [`write_delivery`].
pub fn parse_delivery(text: &str) -> io::Result<Delivery> {
    let mut fields = text.split(' ');
    let (Some(id), Some(amount), Some(customer), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad(format!("malformed delivery {text:?}")));
    };
    let amount_cents = amount
        .parse()
        .map_err(|_| bad(format!("malformed amount in {text:?}")))?;
    let customer = customer
        .parse()
        .map_err(|_| bad(format!("malformed customer in {text:?}")))?;
    Ok(Delivery {
        event_id: id.to_string(),
        amount_cents,
        customer,
    })
}

pub fn write_end(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "E")
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("protocol error: {what}"),
    )
}

fn number<'a>(parts: &mut impl Iterator<Item = &'a str>, line: &str) -> io::Result<u64> {
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| bad(format!("malformed line {line:?}")))
}

/// Reads the next message for the consumer; `None` at end of input.
pub fn read_to_consumer(
    input: &mut impl BufRead,
    line: &mut String,
) -> io::Result<Option<ToConsumer>> {
    line.clear();
    if input.read_line(line)? == 0 {
        return Ok(None);
    }
    let header = line.trim_end().to_string();
    let mut parts = header.split(' ');
    match parts.next() {
        Some("E") => Ok(Some(ToConsumer::End)),
        Some("B") => {
            let seq = number(&mut parts, &header)?;
            let n = number(&mut parts, &header)? as usize;
            let offset = number(&mut parts, &header)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                line.clear();
                if input.read_line(line)? == 0 {
                    return Err(bad(format!("input ended inside batch {seq}")));
                }
                items.push(parse_delivery(line.trim_end())?);
            }
            Ok(Some(ToConsumer::Batch { seq, offset, items }))
        }
        _ => Err(bad(format!("unknown message {header:?}"))),
    }
}

pub fn write_to_producer(out: &mut impl Write, message: &ToProducer) -> io::Result<()> {
    match message {
        ToProducer::Ready {
            ledger_lines_read,
            records_replayed,
            bytes_cut,
            open_micros,
            reconcile_micros,
            reconciled: r,
            position,
        } => writeln!(
            out,
            "{PREFIX}R {ledger_lines_read} {records_replayed} {bytes_cut} {open_micros} {reconcile_micros} {} {} {} {} {position}",
            r.in_doubt, r.in_ledger, r.charged_now, r.released
        )?,
        ToProducer::Ack { seq, report } => writeln!(
            out,
            "{PREFIX}A {seq} {} {} {} {} {} {} {} {}",
            report.inserted,
            report.duplicates,
            report.in_doubt,
            report.charged_blindly,
            report.retried,
            report.commit_nanos,
            report.redelivered,
            report.late_duplicates
        )?,
        ToProducer::Summary {
            fsyncs,
            disk_bytes,
            live_keys,
        } => writeln!(out, "{PREFIX}S {fsyncs} {disk_bytes} {live_keys}")?,
    }
    out.flush()
}

/// Reads the next consumer message, skipping lines without the prefix; `None` at end of input.
pub fn read_to_producer(input: &mut impl BufRead) -> io::Result<Option<ToProducer>> {
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let Some(body) = line.trim_end().strip_prefix(PREFIX) else {
            continue;
        };
        let body = body.to_string();
        let mut parts = body.split(' ');
        let message = match parts.next() {
            Some("R") => ToProducer::Ready {
                ledger_lines_read: number(&mut parts, &body)?,
                records_replayed: number(&mut parts, &body)?,
                bytes_cut: number(&mut parts, &body)?,
                open_micros: number(&mut parts, &body)?,
                reconcile_micros: number(&mut parts, &body)?,
                reconciled: Reconciled {
                    in_doubt: number(&mut parts, &body)?,
                    in_ledger: number(&mut parts, &body)?,
                    charged_now: number(&mut parts, &body)?,
                    released: number(&mut parts, &body)?,
                },
                position: number(&mut parts, &body)?,
            },
            Some("A") => ToProducer::Ack {
                seq: number(&mut parts, &body)?,
                report: BatchReport {
                    inserted: number(&mut parts, &body)?,
                    duplicates: number(&mut parts, &body)?,
                    in_doubt: number(&mut parts, &body)?,
                    charged_blindly: number(&mut parts, &body)?,
                    retried: number(&mut parts, &body)?,
                    commit_nanos: number(&mut parts, &body)?,
                    redelivered: number(&mut parts, &body)?,
                    late_duplicates: number(&mut parts, &body)?,
                },
            },
            Some("S") => ToProducer::Summary {
                fsyncs: number(&mut parts, &body)?,
                disk_bytes: number(&mut parts, &body)?,
                live_keys: number(&mut parts, &body)?,
            },
            _ => return Err(bad(format!("unknown message {body:?}"))),
        };
        return Ok(Some(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_messages_round_trip() {
        let mut wire = Vec::new();
        let workload = Workload {
            amounts: vec![100, 200, 300],
            deliveries: Vec::new(),
            duplicated_events: 0,
            blip: 0..0,
            customers: vec![5, 6, 7],
        };
        write_batch(&mut wire, 7, 40, &[2, 0], &workload).unwrap();
        write_end(&mut wire).unwrap();
        let mut input = &wire[..];
        let mut line = String::new();
        assert_eq!(
            read_to_consumer(&mut input, &mut line).unwrap(),
            Some(ToConsumer::Batch {
                seq: 7,
                offset: 40,
                items: vec![
                    Delivery {
                        event_id: "evt-0000000002".into(),
                        amount_cents: 300,
                        customer: 7,
                    },
                    Delivery {
                        event_id: "evt-0000000000".into(),
                        amount_cents: 100,
                        customer: 5,
                    },
                ]
            })
        );
        assert_eq!(
            read_to_consumer(&mut input, &mut line).unwrap(),
            Some(ToConsumer::End)
        );
        assert_eq!(read_to_consumer(&mut input, &mut line).unwrap(), None);
    }

    #[test]
    fn truncated_batch_is_an_error() {
        let mut line = String::new();
        for wire in [
            &b"B 1 2 0\nevt-0000000001 5 1\n"[..],
            b"B 1 1\nevt-0000000001 5 1\n",
            b"B 1 1 0\nevt-0000000001 5\n",
            b"B 1 1 0\nevt-0000000001 5 1 9\n",
        ] {
            let mut input = wire;
            assert!(read_to_consumer(&mut input, &mut line).is_err());
        }
        let mut input = &b"Q\n"[..];
        assert!(read_to_consumer(&mut input, &mut line).is_err());
    }

    #[test]
    fn producer_messages_round_trip_and_skip_noise() {
        let messages = [
            ToProducer::Ready {
                ledger_lines_read: 1,
                records_replayed: 2,
                bytes_cut: 3,
                open_micros: 4,
                reconcile_micros: 5,
                reconciled: Reconciled {
                    in_doubt: 13,
                    in_ledger: 14,
                    charged_now: 15,
                    released: 16,
                },
                position: 18,
            },
            ToProducer::Ack {
                seq: 9,
                report: BatchReport {
                    inserted: 5,
                    duplicates: 6,
                    in_doubt: 7,
                    charged_blindly: 8,
                    retried: 17,
                    commit_nanos: 123_456,
                    redelivered: 9,
                    late_duplicates: 3,
                },
            },
            ToProducer::Summary {
                fsyncs: 10,
                disk_bytes: 11,
                live_keys: 12,
            },
        ];
        let mut wire = b"running 1 test\n".to_vec();
        for m in &messages {
            write_to_producer(&mut wire, m).unwrap();
            wire.extend_from_slice(b"noise\n");
        }
        let mut input = &wire[..];
        for m in &messages {
            assert_eq!(read_to_producer(&mut input).unwrap().as_ref(), Some(m));
        }
        assert_eq!(read_to_producer(&mut input).unwrap(), None);
        let mut input = &b"@idem A 1 2\n"[..];
        assert!(read_to_producer(&mut input).is_err());
    }
}

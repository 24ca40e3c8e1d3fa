//! Writes the committed seed corpus: `fuzz/corpus/<target>/seed-*`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds` (from the repo root). The
//! output is deterministic, so rerunning it leaves the committed seeds unchanged, except where
//! the engine's on-disk bytes changed, and except the checkpoint seed (a checkpoint holds the
//! store's random hash seeds).

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use idem::record::{encode_into, encode_segment_header, Record, RecordKind, SEGMENT_HEADER_LEN};
use idem::{Config, Durability, ManualClock, Store};
use idem_fuzz::ops::{Op, OpsInput};
use idem_fuzz::recover::SEPARATOR;

fn corpus_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    dir
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let path = corpus_dir(target).join(format!("seed-{name}"));
    std::fs::write(&path, bytes).expect("writing a seed");
    println!("{:>6} bytes  {}", bytes.len(), path.display());
}

fn encode(kind: RecordKind, key: &[u8], value: &[u8], expires_at_millis: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(
        &mut out,
        &Record {
            kind,
            key,
            value,
            expires_at_millis,
            fingerprint: &[],
        },
    );
    out
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn record_seeds() {
    let now = ManualClock::DEFAULT_START_MILLIS;
    write_seed(
        "record",
        "insert",
        &encode(
            RecordKind::Insert,
            b"order-17",
            b"charged 5 EUR",
            now + 3_600_000,
        ),
    );
    write_seed(
        "record",
        "remove",
        &encode(RecordKind::Remove, b"order-17", b"", now + 3_600_000),
    );
    write_seed(
        "record",
        "max-key",
        &encode(RecordKind::Insert, &[b'k'; 1024], b"v", u64::MAX),
    );
    let mut two = encode(RecordKind::Insert, b"a", b"1", 1);
    two.extend(encode(RecordKind::Insert, b"b", b"22", 2));
    write_seed("record", "two-records", &two);
    write_seed("record", "segment-header", &encode_segment_header(7));
    write_seed("record", "junk", &Rng(7).bytes(64));
}

/// A real store's segment file and the checkpoint its close wrote: inserts with several TTLs,
/// duplicates, removals, expiry and re-inserts, written by the engine itself.
fn real_segment() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let config = Config::default()
        .durability(Durability::Never)
        .clock(clock.clone())
        // As the recover target opens it, so the checkpoint is used.
        .shard_count(idem_fuzz::recover::SHARDS);
    let store = Store::open_with(dir.path(), config).expect("open");
    let ttls = [1, 1000, 5_000, 3_600_000, 86_400_000];
    for i in 0..24u64 {
        let key = format!("key-{}", i % 8);
        let ttl = Duration::from_millis(ttls[i as usize % ttls.len()]);
        store
            .check_or_insert(key.as_bytes(), ttl, format!("value-{i}").as_bytes())
            .expect("insert");
        if i % 5 == 4 {
            store
                .remove(format!("key-{}", i % 3).as_bytes())
                .expect("remove");
        }
        clock.advance(Duration::from_millis(400));
    }
    store.close().expect("close");
    let segment =
        std::fs::read(dir.path().join(idem_fuzz::segment_file_name(1))).expect("segment 1");
    let checkpoint =
        std::fs::read(dir.path().join(idem_fuzz::recover::CHECKPOINT)).expect("checkpoint");
    (segment, checkpoint)
}

/// Splits a segment's records into two segments, ids 1 and 2, at a record boundary; the first
/// ends with its seal, as every segment but the newest does.
fn split_in_two(segment: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut boundaries = Vec::new();
    while offset < segment.len() {
        let len = idem::record::peek_len(&segment[offset..]).expect("a real record");
        boundaries.push(offset);
        offset += len;
    }
    let cut = boundaries[boundaries.len() / 2];
    let mut first = encode_segment_header(1).to_vec();
    first.extend(&segment[SEGMENT_HEADER_LEN..cut]);
    first.extend(idem::record::encode_seal(first.len() as u64));
    let mut second = encode_segment_header(2).to_vec();
    second.extend(&segment[cut..]);
    (first, second)
}

fn recover_input(flags: u8, options: u8, param: u16, files: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![flags, options];
    input.extend(param.to_le_bytes());
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            input.extend(SEPARATOR);
        }
        input.extend(*file);
    }
    input
}

/// The options byte of a recover input: durability, hash mask 0, index into
/// `recover::ADVANCES_MS` and into `recover::TTLS_MS`.
fn options(sync: bool, mask_zero: bool, advance: u8, ttl: u8) -> u8 {
    u8::from(sync) | u8::from(mask_zero) << 1 | (advance & 0x7) << 2 | (ttl & 0x7) << 5
}

fn recover_seeds() {
    let (segment, checkpoint) = real_segment();
    write_seed(
        "recover",
        "real-segment",
        &recover_input(0, options(false, false, 2, 1), 0, &[&segment]),
    );
    // With CRC fix-ups on, so byte mutations of keys and lengths still replay.
    write_seed(
        "recover",
        "real-segment-fixups-sync",
        &recover_input(0x0C, options(true, true, 5, 3), 0, &[&segment]),
    );
    // A torn tail: the last record cut short.
    write_seed(
        "recover",
        "real-segment-torn",
        &recover_input(0x40, options(false, false, 1, 2), 7, &[&segment]),
    );
    // With the checkpoint the store wrote at close (a section starting with its magic).
    write_seed(
        "recover",
        "real-segment-with-checkpoint",
        &recover_input(0, options(false, false, 2, 1), 0, &[&segment, &checkpoint]),
    );
    // The same with the checkpoint's CRCs fixed up after mutation (bit 7 of p1).
    write_seed(
        "recover",
        "real-segment-with-checkpoint-fixups",
        &recover_input(
            0x04,
            options(true, false, 3, 2),
            0x8000,
            &[&segment, &checkpoint],
        ),
    );
    let (first, second) = split_in_two(&segment);
    write_seed(
        "recover",
        "two-segments",
        &recover_input(0x0C, options(false, true, 3, 4), 0, &[&first, &second]),
    );
    // Two segments and a third torn at creation (zero-filled).
    write_seed(
        "recover",
        "two-segments-and-torn-creation",
        &recover_input(
            0x04,
            options(true, false, 6, 0),
            0,
            &[&first, &second, &[0; 32]],
        ),
    );
    // Structured bodies (flag bit 7): files built by the harness from an arbitrary description.
    let mut rng = Rng(0x5EED);
    for (i, len) in [96, 200, 400].into_iter().enumerate() {
        let mut input = vec![0x80 | (i as u8) << 4, rng.next() as u8, 0, 0];
        input.extend(rng.bytes(len));
        write_seed("recover", &format!("structured-{i}"), &input);
    }
}

/// Random byte strings that decode into op sequences using every op kind the seed should show.
fn ops_seeds() {
    let mut rng = Rng(0x0D5);
    let mut written = 0;
    let mut tries = 0;
    while written < 4 {
        tries += 1;
        assert!(tries < 1_000_000, "no seed found");
        let len = 128 + 128 * written;
        let bytes = rng.bytes(len);
        let Ok(input) = OpsInput::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let has = |pred: fn(&Op) -> bool| input.ops.iter().any(pred);
        let varied = input.ops.len() >= 12
            && has(|op| matches!(op, Op::CheckOrInsert(_)))
            && has(|op| matches!(op, Op::Advance(_)))
            && has(|op| matches!(op, Op::Reopen(_) | Op::DropReopen))
            && has(|op| matches!(op, Op::Remove(_) | Op::Batch(_)))
            && has(|op| matches!(op, Op::Claim { .. }));
        if varied {
            // The seed must pass: it is run as is by every fuzz run.
            idem_fuzz::ops::run(&input);
            write_seed("ops", &format!("mixed-{written}"), &bytes);
            written += 1;
        }
    }
}

fn main() {
    record_seeds();
    recover_seeds();
    ops_seeds();
    // Every seed must pass its target as it is.
    for seed in seeds("record") {
        idem_fuzz::record::run(&seed);
    }
    for seed in seeds("recover") {
        idem_fuzz::recover::run(&seed);
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .expect("listing the corpus")
        .map(|entry| entry.expect("listing the corpus").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("reading a seed"))
        .collect()
}

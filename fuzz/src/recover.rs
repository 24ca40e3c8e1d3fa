//! The `recover` target: arbitrary bytes laid out as segment files, opened as a store.
//!
//! # Input layout
//!
//! `[flags, options, p0, p1, body...]`. `flags`:
//! - bits 0-1: the first segment id: 1, 0 (an invalid id), or ids counting down to the largest
//!   id (`u32::MAX`) or to the largest 8-digit id (`segment-99999999.idem`, whose successor has a
//!   9-digit name);
//! - bit 2: fix up record CRCs (walk each file from its header, rewrite every record CRC while
//!   the lengths decode), so mutated keys, values, deadlines and lengths still replay;
//! - bit 3: fix up headers (write a valid header for the file's id over its first 32 bytes, of
//!   format 1 if the file's header names version 1, else of the current format);
//! - bit 4: ids step by 2 instead of 1 (gaps);
//! - bits 5-6: damage after the fix-ups, at position `p = p0 | p1 << 8`: none, flip bit `p` of the
//!   newest file, cut `p % 64` bytes off the newest file, flip bit `p` of the oldest file;
//! - bit 7: the body is a [`Structured`] description (via `arbitrary`) instead of raw bytes.
//!
//! `options`: bit 0 `Sync` (else `Never`) durability; bit 1 `hash_mask_for_testing(0)`;
//! bits 2-4 how far the clock moves after open (see [`ADVANCES_MS`]); bits 5-7 the TTL of the
//! records written after open. Bit 7 of `p1`: fix up the checkpoint's CRCs (and entry count).
//!
//! In raw mode the body is the files' bytes separated by [`SEPARATOR`]; a real store's segment
//! file prefixed by 4 control bytes is a valid input. A section starting with the checkpoint
//! magic `IDEMCKPT` is laid down as `checkpoint.idem` instead of a segment.
//!
//! # Oracle
//!
//! An independent model of recovery ([`replay`], written from `engine/FORMAT.md`) decides what
//! open must do: fail (and with which error; for damage found in the records, at which file and
//! offset), or succeed with an exact set of live keys and an exact recovery report, leaving an
//! exact set of files.
//!
//! Segments of all three formats are modelled: a format-1 segment (records of the 20-byte header,
//! a format-1 seal) and a format-2 one as older builds wrote them; when the newest segment kept
//! is of an older format and not sealed, open seals it in its own format and the log goes on in a
//! new format-3 segment. Atomic groups are applied only whole: in format 3 a run of records
//! carrying the continuation flag closed by one that does not, in format 2 a Group record
//! announcing the length and record count of the records that follow it (each format refuses the
//! other's kind of group). A group that is not all there and intact is a torn tail at its first
//! record (format 3) or its group record (format 2) in the newest segment, `Corrupt` there in an
//! older one. Structured inputs build groups of Insert, Claim and Remove records, whole or damaged
//! on purpose (cut anywhere, a bit flipped, a wrong length or count or a flag that runs on, a seal
//! or a group nested in it), and the model is checked against that intent ([`GroupFact`]). State records (StatePut,
//! StateRemove, Position) are replayed by the model only for what the public API shows of them
//! today: they count as replayed records, never touch the dedup entries of the same key, and a
//! Position without an 8-byte value is `Corrupt`; their values are not compared until the store
//! can be asked for them. The store must agree: every key the
//! model knows, every key found at any offset of the input, and keys never in the input are
//! asked for. Then the clock moves, keys are re-inserted and removed, the store is closed, the
//! files on disk must be exactly the model's, and a reopen must agree again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use idem::record::{
    self, continues_group, decode, decode_segment_header, decode_sized, encode_group,
    encode_group_member, encode_into, encode_segment_header, encode_segment_header_version,
    encode_v1_into, group_extent, layout_of, layout_of_format, peek_len, HeaderError, Record,
    RecordKind, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_2, FORMAT_VERSION_3,
    GROUP_RECORD_LEN, NEVER_EXPIRES, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use idem::{Config, Durability, Error, ManualClock, Outcome, Store};

/// The store's clock at open.
pub const NOW: u64 = ManualClock::DEFAULT_START_MILLIS;
/// Separates files in a raw body.
pub const SEPARATOR: &[u8] = b"\n%%IDEM-NEXT-SEGMENT%%\n";
/// The segment size of the store (the smallest allowed).
pub const SEGMENT_SIZE: u32 = Config::MIN_SEGMENT_SIZE_BYTES;
/// Index shards of the store (a checkpoint is used only by a store with as many).
pub const SHARDS: usize = 4;
/// The largest id with an 8-digit file name.
pub const MAX_NAMED_ID: u32 = 99_999_999;
/// Clock steps after open, in ms.
pub const ADVANCES_MS: [u64; 8] = [0, 1, 999, 1000, 1001, 10_000, 3_600_000, 86_400_000];
/// TTLs of the records written after open, in ms.
pub const TTLS_MS: [u64; 8] = [1, 2, 1000, 1001, 10_000, 3_600_000, 86_400_000, 1];

/// A decoded input: files by id, and how to open them.
#[derive(Debug, Clone)]
pub struct Input {
    /// Segment files, by id.
    pub files: BTreeMap<u32, Vec<u8>>,
    /// `Sync` durability instead of `Never`.
    pub sync: bool,
    /// Force every key hash alike.
    pub mask_zero: bool,
    /// Clock step after open.
    pub advance_ms: u64,
    /// TTL of the records written after open.
    pub ttl_ms: u64,
    /// A `checkpoint.idem` to lay beside the segments.
    pub checkpoint: Option<Vec<u8>>,
    /// The groups of a structured body, when no fix-up or damage changed its bytes since.
    pub groups: Vec<GroupFact>,
}

/// A structured body: files built from records the harness encodes itself (valid CRCs), with
/// damage placed on purpose.
#[derive(Arbitrary, Debug, Clone)]
pub struct Structured {
    /// One to a few files, oldest first.
    pub files: Vec<FileSpec>,
}

/// One structured file.
#[derive(Arbitrary, Debug, Clone)]
pub struct FileSpec {
    /// Written in format 1 (header version 1, `encode_v1_into`, format-1 seals), as an older
    /// build did; such a file has no groups (their records are written plainly).
    pub v1: bool,
    /// Written in format 2 (unless `v1`): groups open with a Group record, as the build before
    /// format 3 wrote them.
    pub v2: bool,
    /// Its header.
    pub header: HeaderSpec,
    /// Its body.
    pub records: Vec<RecordSpec>,
    /// Bytes cut off its end (0: none).
    pub cut: u8,
}

/// How a structured file starts.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum HeaderSpec {
    /// The right header.
    Valid,
    /// A valid header naming another segment id.
    WrongId,
    /// A bad header CRC.
    BadCrc,
    /// Not the magic.
    BadMagic,
    /// A valid header of the next format version.
    NewerVersion,
    /// 32 zero bytes.
    Zero,
    /// Only this many (< 32) bytes of the right header.
    Short(u8),
}

/// One structured record, or junk.
#[derive(Arbitrary, Debug, Clone)]
pub enum RecordSpec {
    /// A valid insert.
    Insert {
        /// One of a few keys.
        key: u8,
        /// Up to 16 bytes.
        value: Vec<u8>,
        /// Its deadline.
        expires: Expiry,
        /// With a request fingerprint.
        fingerprinted: bool,
    },
    /// A valid claim: the value is a claim id (8 bytes), the deadline the lease end.
    Claim {
        /// One of a few keys.
        key: u8,
        /// The claim id.
        id: u64,
        /// The lease end.
        expires: Expiry,
        /// A value of another length than 8 (not a well-formed claim id).
        odd_value: bool,
    },
    /// A valid removal.
    Remove {
        /// One of a few keys.
        key: u8,
        /// Its deadline.
        expires: Expiry,
    },
    /// An insert with one bit flipped.
    Flipped {
        /// One of a few keys.
        key: u8,
        /// The bit.
        bit: u16,
    },
    /// A seal: vouching for its own offset (`true`), or for another one.
    Seal(bool),
    /// A record of the state namespace (formats 2 and 3; none in a format-1 file).
    State {
        /// One of a few keys (the dedup entries' keys too: the namespaces must not meet).
        key: u8,
        /// StatePut, StateRemove, or Position (by `kind % 3`).
        kind: u8,
        /// A Position whose value is not 8 bytes (open fails: `Corrupt`).
        odd_value: bool,
    },
    /// An atomic group of records, whole or damaged.
    Group {
        /// Its records (at most 8).
        records: Vec<GroupItem>,
        /// What is wrong with it.
        damage: GroupDamage,
    },
    /// Junk bytes.
    Junk(Vec<u8>),
    /// Zero bytes.
    Zeros(u8),
}

/// One record of a structured group (the kinds a transaction writes to dedup entries).
#[derive(Arbitrary, Debug, Clone)]
pub enum GroupItem {
    /// An insert.
    Insert {
        /// One of a few keys.
        key: u8,
        /// Up to 16 bytes.
        value: Vec<u8>,
        /// Its deadline.
        expires: Expiry,
    },
    /// A claim with an 8-byte claim id.
    Claim {
        /// One of a few keys.
        key: u8,
        /// The claim id.
        id: u64,
        /// The lease end.
        expires: Expiry,
    },
    /// A removal.
    Remove {
        /// One of a few keys.
        key: u8,
        /// Its deadline.
        expires: Expiry,
    },
}

/// How a structured group is damaged. In format 3, which has no group record, `Cut` and `Flip`
/// apply to the group's records, `Count(true)` and `BodyLen` make the last record say the group
/// goes on (into whatever follows: not necessarily damage), `Count(false)` takes the flag off
/// the first record (two groups: no damage), and the nested seal or group record follows a
/// record that says the group goes on.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupDamage {
    /// Whole and intact.
    None,
    /// The file ends inside the group: this many bytes of its body are kept (modulo the body's
    /// length; with an empty body, of the group record's).
    Cut(u16),
    /// One bit of the body flipped (modulo the body's bits; the group record's if it is empty).
    Flip(u16),
    /// The announced record count is off by one (more, or fewer).
    Count(bool),
    /// The announced body length is off by this much (0: by one more), wrapping.
    BodyLen(i8),
    /// A seal record inside the body (announced and counted).
    NestedSeal,
    /// A group record inside the body (announced and counted).
    NestedGroup,
}

/// Where the generator put a group and whether it left it whole: the model must replay a whole
/// group of a replayed segment entirely, and stop at a damaged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupFact {
    /// The position of its file among the input's files.
    pub file: usize,
    /// The group's offset: its group record's (format 2) or its first record's (format 3).
    pub offset: usize,
    /// Where its records start (after the group record in format 2).
    pub body: usize,
    /// Where its body ends (as announced when whole).
    pub end: usize,
    /// Left whole by the generator (and not cut by the file's cut).
    pub whole: bool,
}

/// A deadline relative to [`NOW`].
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Expiry {
    /// `NOW - ms`.
    Past(u16),
    /// Exactly `NOW` (expired: live iff now < deadline).
    Now,
    /// `NOW + 1 + ms`.
    Future(u16),
    /// Zero.
    Epoch,
    /// `u64::MAX`.
    Max,
    /// Beyond the index's 32-bit seconds.
    Beyond32BitSeconds,
    /// The largest deadline format 2 stores.
    Never,
    /// One past it (format 2 stores it as [`NEVER_EXPIRES`], format 1 as it is).
    PastNever,
}

impl Expiry {
    fn millis(self) -> u64 {
        match self {
            Expiry::Past(ms) => NOW - u64::from(ms),
            Expiry::Now => NOW,
            Expiry::Future(ms) => NOW + 1 + u64::from(ms),
            Expiry::Epoch => 0,
            Expiry::Max => u64::MAX,
            Expiry::Beyond32BitSeconds => (u64::from(u32::MAX) + 5) * 1000,
            Expiry::Never => NEVER_EXPIRES,
            Expiry::PastNever => NEVER_EXPIRES + 1,
        }
    }
}

fn structured_key(key: u8) -> Vec<u8> {
    match key % 8 {
        7 => vec![b'K'; record::MAX_KEY_BYTES],
        n => format!("key-{n}").into_bytes(),
    }
}

fn header_bytes(spec: HeaderSpec, id: u32, version: u32) -> Vec<u8> {
    let mut header = encode_segment_header_version(u64::from(id), version).to_vec();
    match spec {
        HeaderSpec::Valid => {}
        HeaderSpec::WrongId => {
            header = encode_segment_header_version(u64::from(id) + 1, version).to_vec();
        }
        HeaderSpec::BadCrc => header[29] ^= 0x40,
        HeaderSpec::BadMagic => header[0] = b'X',
        HeaderSpec::NewerVersion => {
            header[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
            let crc = crc32fast::hash(&header[..28]);
            header[28..32].copy_from_slice(&crc.to_le_bytes());
        }
        HeaderSpec::Zero => header = vec![0; SEGMENT_HEADER_LEN],
        HeaderSpec::Short(len) => header.truncate(usize::from(len) % SEGMENT_HEADER_LEN),
    }
    header
}

/// Encodes one record in the layout of a format-1 file (`v1`) or of the current format.
fn encode(
    v1: bool,
    kind: RecordKind,
    key: &[u8],
    value: &[u8],
    expires_at_millis: u64,
    fingerprint: &[u8],
) -> Vec<u8> {
    encode_flagged(v1, false, kind, key, value, expires_at_millis, fingerprint)
}

/// As [`encode`], with the continuation flag if `continues` (format 3's groups).
fn encode_flagged(
    v1: bool,
    continues: bool,
    kind: RecordKind,
    key: &[u8],
    value: &[u8],
    expires_at_millis: u64,
    fingerprint: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let record = Record {
        kind,
        key,
        value,
        expires_at_millis,
        fingerprint,
        refresh_cap_millis: 0,
    };
    if v1 {
        encode_v1_into(&mut out, &record);
    } else {
        encode_group_member(&mut out, &record, continues);
    }
    out
}

impl GroupItem {
    fn encode(&self, v1: bool) -> Vec<u8> {
        self.encode_as(v1, false)
    }

    /// Encoded with the continuation flag if `continues`.
    fn encode_as(&self, v1: bool, continues: bool) -> Vec<u8> {
        let encode = |kind, key: &[u8], value: &[u8], expires_at_millis, fingerprint: &[u8]| {
            encode_flagged(
                v1,
                continues,
                kind,
                key,
                value,
                expires_at_millis,
                fingerprint,
            )
        };
        match self {
            GroupItem::Insert {
                key,
                value,
                expires,
            } => encode(
                RecordKind::Insert,
                &structured_key(*key),
                &value[..value.len().min(16)],
                expires.millis(),
                &[],
            ),
            GroupItem::Claim { key, id, expires } => encode(
                RecordKind::Claim,
                &structured_key(*key),
                &id.to_le_bytes(),
                expires.millis(),
                &[],
            ),
            GroupItem::Remove { key, expires } => encode(
                RecordKind::Remove,
                &structured_key(*key),
                &[],
                expires.millis(),
                &[],
            ),
        }
    }
}

/// Appends a group of `items` to `bytes` (a format-2 file) damaged as `damage` says. Returns the
/// group's fact (its file position left for the caller) and whether the file ends here (a cut).
fn encode_v2_group(
    bytes: &mut Vec<u8>,
    items: &[GroupItem],
    damage: GroupDamage,
) -> (GroupFact, bool) {
    let mut body: Vec<u8> = Vec::new();
    let mut count = 0u32;
    for item in items.iter().take(8) {
        body.extend(item.encode(false));
        count += 1;
    }
    match damage {
        GroupDamage::NestedSeal => {
            body.extend(record::encode_seal(bytes.len() as u64));
            count += 1;
        }
        GroupDamage::NestedGroup => {
            encode_group(&mut body, 0, 0);
            count += 1;
        }
        _ => {}
    }
    let (mut body_len, mut announced) = (body.len() as u32, count);
    match damage {
        GroupDamage::Count(more) => {
            announced = if more {
                announced.wrapping_add(1)
            } else {
                announced.wrapping_sub(1)
            }
        }
        GroupDamage::BodyLen(delta) => {
            let delta = if delta == 0 { 1 } else { i32::from(delta) };
            body_len = body_len.wrapping_add_signed(delta);
        }
        _ => {}
    }
    let offset = bytes.len();
    encode_group(bytes, body_len, announced);
    bytes.extend(&body);
    let end = bytes.len();
    let mut ends_file = false;
    match damage {
        GroupDamage::Cut(n) => {
            let keep = if body.is_empty() {
                usize::from(n) % GROUP_RECORD_LEN
            } else {
                GROUP_RECORD_LEN + usize::from(n) % body.len()
            };
            bytes.truncate(offset + keep);
            ends_file = true;
        }
        GroupDamage::Flip(bit) => {
            let (start, len) = if body.is_empty() {
                (offset, GROUP_RECORD_LEN)
            } else {
                (offset + GROUP_RECORD_LEN, body.len())
            };
            let bit = usize::from(bit) % (len * 8);
            bytes[start + bit / 8] ^= 1 << (bit % 8);
        }
        _ => {}
    }
    let fact = GroupFact {
        file: 0,
        offset,
        body: offset + GROUP_RECORD_LEN,
        end,
        whole: damage == GroupDamage::None,
    };
    (fact, ends_file)
}

/// Appends a group of `items` to `bytes` (a format-3 file: the continuation flag) damaged as
/// `damage` says (see [`GroupDamage`]). Returns the group's fact, if its damage leaves one to
/// check (a flag that runs on into what follows, or one taken off, makes no promise of its
/// own: the model judges it), and whether the file ends here (a cut).
fn encode_v3_group(
    bytes: &mut Vec<u8>,
    items: &[GroupItem],
    damage: GroupDamage,
) -> (Option<GroupFact>, bool) {
    let items = &items[..items.len().min(8)];
    let nested = matches!(damage, GroupDamage::NestedSeal | GroupDamage::NestedGroup);
    let runs_on = matches!(damage, GroupDamage::Count(true) | GroupDamage::BodyLen(_));
    let mut body: Vec<u8> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        let continues = match damage {
            GroupDamage::Count(false) if i == 0 => false,
            _ => !last || runs_on || nested,
        };
        body.extend(item.encode_as(false, continues));
    }
    let offset = bytes.len();
    match damage {
        GroupDamage::NestedSeal => body.extend(record::encode_seal(offset as u64)),
        GroupDamage::NestedGroup => encode_group(&mut body, 0, 0),
        _ => {}
    }
    bytes.extend(&body);
    let end = bytes.len();
    let mut ends_file = false;
    match damage {
        GroupDamage::Cut(n) if !body.is_empty() => {
            bytes.truncate(offset + usize::from(n) % body.len());
            ends_file = true;
        }
        GroupDamage::Flip(bit) if !body.is_empty() => {
            let bit = usize::from(bit) % (body.len() * 8);
            bytes[offset + bit / 8] ^= 1 << (bit % 8);
        }
        _ => {}
    }
    // A group needs a record that says it goes on; a lone seal or group record is other damage.
    let is_group = !items.is_empty() && (items.len() > 1 || runs_on || nested);
    let fact = match damage {
        _ if !is_group && !matches!(damage, GroupDamage::Cut(_) | GroupDamage::Flip(_)) => None,
        _ if items.is_empty() => None,
        GroupDamage::Count(_) | GroupDamage::BodyLen(_) => None,
        _ => Some(GroupFact {
            file: 0,
            offset,
            body: offset,
            end,
            whole: damage == GroupDamage::None,
        }),
    };
    (fact, ends_file)
}

impl Structured {
    /// The files' bytes, and where the groups are.
    fn bodies(&self, ids: &[u32]) -> (Vec<Vec<u8>>, Vec<GroupFact>) {
        let mut facts = Vec::new();
        let bodies = self
            .files
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(position, (file, &id))| {
                let v1 = file.v1;
                let version = if v1 {
                    FORMAT_VERSION_1
                } else if file.v2 {
                    FORMAT_VERSION_2
                } else {
                    FORMAT_VERSION
                };
                let mut bytes = header_bytes(file.header, id, version);
                // A header cut short shifts every record off the boundaries the store reads
                // records at (one that still checks out by chance is followed by junk): no fact
                // about this file's groups would hold.
                let aligned = bytes.len() == SEGMENT_HEADER_LEN;
                let mut file_facts = Vec::new();
                for spec in file.records.iter().take(64) {
                    match spec {
                        RecordSpec::Insert {
                            key,
                            value,
                            expires,
                            fingerprinted,
                        } => {
                            let value = &value[..value.len().min(16)];
                            let fingerprint: &[u8] = if *fingerprinted { b"fp" } else { &[] };
                            bytes.extend(encode(
                                v1,
                                RecordKind::Insert,
                                &structured_key(*key),
                                value,
                                expires.millis(),
                                fingerprint,
                            ));
                        }
                        RecordSpec::Claim {
                            key,
                            id,
                            expires,
                            odd_value,
                        } => {
                            let id = id.to_le_bytes();
                            let value = if *odd_value { &id[..5] } else { &id[..] };
                            bytes.extend(encode(
                                v1,
                                RecordKind::Claim,
                                &structured_key(*key),
                                value,
                                expires.millis(),
                                &[],
                            ));
                        }
                        RecordSpec::Remove { key, expires } => bytes.extend(encode(
                            v1,
                            RecordKind::Remove,
                            &structured_key(*key),
                            &[],
                            expires.millis(),
                            &[],
                        )),
                        RecordSpec::Flipped { key, bit } => {
                            let mut encoded = encode(
                                v1,
                                RecordKind::Insert,
                                &structured_key(*key),
                                b"flipped",
                                NOW + 5000,
                                &[],
                            );
                            let bit = usize::from(*bit) % (encoded.len() * 8);
                            encoded[bit / 8] ^= 1 << (bit % 8);
                            bytes.extend(encoded);
                        }
                        RecordSpec::Seal(own_offset) => {
                            let at = bytes.len() as u64;
                            let vouched = if *own_offset { at } else { at + 1 };
                            bytes.extend(if v1 {
                                record::encode_seal_v1(vouched)
                            } else {
                                record::encode_seal(vouched)
                            })
                        }
                        RecordSpec::State { .. } if v1 => {}
                        RecordSpec::State {
                            key,
                            kind,
                            odd_value,
                        } => {
                            let (kind, value) = match kind % 3 {
                                0 => (RecordKind::StatePut, &b"state"[..]),
                                1 => (RecordKind::StateRemove, &b""[..]),
                                _ if *odd_value => (RecordKind::Position, &b"odd"[..]),
                                _ => (RecordKind::Position, &b"position"[..]),
                            };
                            bytes.extend(encode(
                                false,
                                kind,
                                &structured_key(*key),
                                value,
                                NEVER_EXPIRES,
                                &[],
                            ));
                        }
                        RecordSpec::Group { records, damage } if v1 => {
                            // Format 1 had no groups: an older build wrote the records plainly.
                            let _ = damage;
                            for item in records.iter().take(8) {
                                bytes.extend(item.encode(true));
                            }
                        }
                        RecordSpec::Group { records, damage } => {
                            let (fact, ends_file) = if version == FORMAT_VERSION_2 {
                                let (fact, ends_file) =
                                    encode_v2_group(&mut bytes, records, *damage);
                                (Some(fact), ends_file)
                            } else {
                                encode_v3_group(&mut bytes, records, *damage)
                            };
                            if let Some(fact) = fact {
                                file_facts.push(GroupFact {
                                    file: position,
                                    ..fact
                                });
                            }
                            if ends_file {
                                break;
                            }
                        }
                        RecordSpec::Junk(junk) => bytes.extend(junk.iter().take(64)),
                        RecordSpec::Zeros(n) => {
                            bytes.extend(std::iter::repeat_n(0, usize::from(*n)))
                        }
                    }
                }
                let cut = usize::from(file.cut).min(bytes.len());
                bytes.truncate(bytes.len() - cut);
                // A cut into a whole group damages it; one that removes it leaves no fact.
                for fact in file_facts.into_iter().filter(|_| aligned) {
                    if fact.offset < bytes.len() {
                        facts.push(GroupFact {
                            whole: fact.whole && fact.end <= bytes.len(),
                            ..fact
                        });
                    }
                }
                bytes
            })
            .collect();
        (bodies, facts)
    }
}

/// Splits `body` at every [`SEPARATOR`].
fn split_files(body: &[u8]) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut rest = body;
    while let Some(at) = rest
        .windows(SEPARATOR.len())
        .position(|window| window == SEPARATOR)
    {
        files.push(rest[..at].to_vec());
        rest = &rest[at + SEPARATOR.len()..];
    }
    files.push(rest.to_vec());
    files
}

/// Rewrites every CRC of a checkpoint (FORMAT.md layout, versions 1 to 3) whose section still
/// fits in the bytes, and its header's entry count, so that mutations of its fields are parsed
/// deeply.
pub fn fix_checkpoint_crcs(bytes: &mut [u8]) {
    const HEADER_LEN: usize = 80;
    const HEADER_CRC: usize = 76;
    let u32_at = |bytes: &[u8], at: usize| -> Option<usize> {
        let word = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes(word.try_into().expect("4 bytes")) as usize)
    };
    let put_crc = |bytes: &mut [u8], range: std::ops::Range<usize>, at: usize| {
        let crc = crc32fast::hash(&bytes[range]);
        bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    };
    if bytes.len() < HEADER_LEN {
        return;
    }
    let shard_count = u32_at(bytes, 12).unwrap_or(0);
    // Version 3 blocks hold compact entries behind a body length (FORMAT.md).
    let compact = u32_at(bytes, 8) == Some(3);
    let segment_count = u32_at(bytes, 64).unwrap_or(0);
    let mut at = HEADER_LEN;
    let mut total = 0u64;
    let mut walk = || -> Option<()> {
        let table_end = at.checked_add(segment_count.checked_mul(24)?)?;
        bytes.get(table_end..table_end + 4)?;
        put_crc(bytes, at..table_end, table_end);
        at = table_end + 4;
        for _ in 0..shard_count.min(1 << 16) {
            let entries = u32_at(bytes, at)?;
            if compact {
                // Version 3: entries, body length, then a CRC of those 8 bytes and the body.
                let body = at + 12;
                let end = body.checked_add(u32_at(bytes, at + 4)?)?;
                bytes.get(body..end)?;
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&bytes[at..at + 8]);
                hasher.update(&bytes[body..end]);
                let crc = hasher.finalize();
                bytes[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
                total += entries as u64;
                at = end;
                continue;
            }
            let body = at + 8;
            let end = body.checked_add(entries.checked_mul(16)?)?;
            bytes.get(body..end)?;
            put_crc(bytes, body..end, at + 4);
            total += entries as u64;
            at = end;
        }
        let claims_start = at;
        let count = u32_at(bytes, at)?;
        at += 4;
        for _ in 0..count.min(1 << 16) {
            let len = bytes.get(at..at + 2)?;
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            at += 2 + len;
        }
        bytes.get(at..at + 4)?;
        put_crc(bytes, claims_start..at, at);
        Some(())
    };
    let walked = walk().is_some();
    if walked {
        bytes[68..76].copy_from_slice(&total.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[..HEADER_CRC]);
    bytes[HEADER_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the CRC of every record whose lengths decode, from the header on.
pub fn fix_record_crcs(bytes: &mut [u8]) {
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < bytes.len() {
        let Ok(len) = peek_len(&bytes[offset..]) else {
            return;
        };
        if offset + len > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[offset + 4..offset + len]);
        bytes[offset..offset + 4].copy_from_slice(&crc.to_le_bytes());
        offset += len;
    }
}

impl Input {
    /// Decodes a fuzz input. At most 8 files.
    pub fn parse(data: &[u8]) -> Input {
        let (control, body) = if data.len() >= 4 {
            data.split_at(4)
        } else {
            (&[0u8, 0, 0, 0][..], data)
        };
        let (flags, options) = (control[0], control[1]);
        let param = u16::from_le_bytes([control[2], control[3]]) as usize;
        let structured = flags & 0x80 != 0;
        let step = if flags & 0x10 != 0 { 2 } else { 1 };
        let spec = structured
            .then(|| Structured::arbitrary_take_rest(Unstructured::new(body)).ok())
            .flatten();
        let mut raw = if structured {
            Vec::new()
        } else {
            split_files(body)
        };
        // A raw section that starts with the checkpoint magic is the checkpoint (the last one).
        let mut checkpoint = raw
            .iter()
            .rposition(|file| file.starts_with(CHECKPOINT_MAGIC))
            .map(|at| raw.remove(at));
        if control[3] & 0x80 != 0 {
            if let Some(checkpoint) = &mut checkpoint {
                fix_checkpoint_crcs(checkpoint);
            }
        }
        let count = spec
            .as_ref()
            .map_or(raw.len(), |spec| spec.files.len())
            .clamp(1, 8);
        let ids: Vec<u32> = match flags & 0x3 {
            0 => (0..count).map(|k| 1 + step * k as u32).collect(),
            1 => (0..count).map(|k| step * k as u32).collect(),
            2 => (0..count)
                .map(|k| u32::MAX - step * (count - 1 - k) as u32)
                .collect(),
            _ => (0..count)
                .map(|k| MAX_NAMED_ID - step * (count - 1 - k) as u32)
                .collect(),
        };
        let (mut bodies, mut groups) = match &spec {
            Some(spec) => spec.bodies(&ids),
            None => (raw, Vec::new()),
        };
        if flags & 0x64 != 0 {
            // CRC fix-ups may mend a damaged group, damage may break a whole one.
            groups.clear();
        }
        bodies.truncate(count);
        bodies.resize(count, Vec::new());
        for (body, &id) in bodies.iter_mut().zip(&ids) {
            if flags & 0x08 != 0 && body.len() >= SEGMENT_HEADER_LEN {
                let named = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
                let version = if (FORMAT_VERSION_1..FORMAT_VERSION).contains(&named) {
                    named
                } else {
                    FORMAT_VERSION
                };
                body[..SEGMENT_HEADER_LEN]
                    .copy_from_slice(&encode_segment_header_version(u64::from(id), version));
            }
            if flags & 0x04 != 0 {
                fix_record_crcs(body);
            }
        }
        let damaged = match (flags >> 5) & 0x3 {
            1 | 2 => bodies.last_mut(),
            3 => bodies.first_mut(),
            _ => None,
        };
        if let Some(body) = damaged {
            if !body.is_empty() {
                if (flags >> 5) & 0x3 == 2 {
                    let cut = (param % 64).min(body.len());
                    body.truncate(body.len() - cut);
                } else {
                    let bit = param % (body.len() * 8);
                    body[bit / 8] ^= 1 << (bit % 8);
                }
            }
        }
        Input {
            files: ids.into_iter().zip(bodies).collect(),
            sync: options & 0x1 != 0,
            mask_zero: options & 0x2 != 0,
            advance_ms: ADVANCES_MS[usize::from((options >> 2) & 0x7)],
            ttl_ms: TTLS_MS[usize::from(options >> 5)],
            checkpoint,
            groups,
        }
    }
}

/// How open must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedError {
    /// `Error::Corrupt` (a header: somewhere in it).
    Corrupt,
    /// `Error::Corrupt` naming this segment and byte offset: a damaged record (or group, at its
    /// group record) in an older segment, a bad seal, a segment ending without its seal, a
    /// malformed Position record.
    CorruptAt {
        /// The segment.
        id: u32,
        /// The offset of the damaged structure.
        offset: u64,
    },
    /// `Error::NotASegment`.
    NotASegment,
    /// `Error::UnsupportedVersion`.
    UnsupportedVersion,
    /// `Error::Corrupt` because the log would need a segment past id `u32::MAX` (open may have
    /// deleted a torn newest segment before it finds out).
    IdsExhausted,
}

impl ExpectedError {
    fn matches(self, error: &Error) -> bool {
        if let (
            ExpectedError::CorruptAt { id, offset },
            Error::Corrupt {
                path, offset: at, ..
            },
        ) = (self, error)
        {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            return name.as_deref() == Some(&crate::segment_file_name(id)[..]) && *at == offset;
        }
        matches!(
            (self, error),
            (ExpectedError::Corrupt, Error::Corrupt { .. })
                | (ExpectedError::NotASegment, Error::NotASegment { .. })
                | (
                    ExpectedError::UnsupportedVersion,
                    Error::UnsupportedVersion { .. }
                )
                | (ExpectedError::IdsExhausted, Error::Corrupt { .. })
        )
    }
}

/// A live entry after replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Its value.
    pub value: Vec<u8>,
    /// Its deadline (after the replay clock).
    pub expires_at_millis: u64,
    /// A claim (the key is occupied, with no result yet): `get` answers `None`,
    /// `check_or_insert` fails with `ClaimInFlight`.
    pub claim: bool,
    /// A recorded failure (a claim's back-off, kind 9): the key is occupied and `get` answers
    /// `None`, as for a claim, but it is no claim in doubt.
    pub failure: bool,
    /// The location of its record (segment id << 32 | offset): a removal carrying an origin
    /// removes only entries located before it.
    pub location: u64,
    /// Its record's refresh cap (0: none): a duplicate of a sliding key (cap past its
    /// deadline) rewrites it with a later deadline, as `refresh` does.
    pub refresh_cap_millis: u64,
    /// Its record's fingerprint, which such a rewrite keeps.
    pub fingerprint: Vec<u8>,
}

/// The location of the record at `offset` of segment `id`, as the index holds it.
pub fn location(id: u32, offset: usize) -> u64 {
    u64::from(id) << 32 | offset as u64
}

/// What a successful open must produce.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Live entries at the replay clock.
    pub live: HashMap<Vec<u8>, Live>,
    /// Every key of every replayed record.
    pub keys: BTreeSet<Vec<u8>>,
    /// `RecoveryReport::segments_replayed`.
    pub segments_replayed: u64,
    /// `RecoveryReport::records_replayed`.
    pub records_replayed: u64,
    /// `RecoveryReport::expired_records_skipped`.
    pub expired_records_skipped: u64,
    /// `(segment id, offset, bytes cut)` of a torn tail.
    pub truncated_tail: Option<(u32, u64, u64)>,
    /// A deleted torn newest segment.
    pub removed_empty_segment: Option<u32>,
    /// The files as open leaves them.
    pub files: BTreeMap<u32, Vec<u8>>,
    /// Where the last file's records end when zeros (prepared space) follow them there: the
    /// log appends over them, and cuts them before a seal and at close.
    pub zeros_from: Option<usize>,
}

impl Replayed {
    /// The value a store must answer for `key` at `now`.
    pub fn get(&self, key: &[u8], now: u64) -> Option<&[u8]> {
        self.entry(key, now)
            .filter(|live| !live.claim && !live.failure)
            .map(|live| live.value.as_slice())
    }

    /// The live entry of `key` at `now`: a result or a claim.
    pub fn entry(&self, key: &[u8], now: u64) -> Option<&Live> {
        self.live
            .get(key)
            .filter(|live| now < live.expires_at_millis)
    }

    /// Keys whose live entry at `now` is a well-formed claim: what `Store::in_doubt` lists.
    pub fn in_doubt(&self, now: u64) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .live
            .iter()
            .filter(|(_, live)| live.claim && live.value.len() == 8 && now < live.expires_at_millis)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Appends `record` where the store appends: at the end of the newest file, or, sealing that
    /// one, in a new segment when it (and a seal after it) would pass the segment size.
    /// Cuts the zeros after the last file's records (the writer does before its first seal
    /// and at close; after the first append no comparison sees them before then).
    pub fn cut_prepared_zeros(&mut self) {
        if let (Some(end), Some(tail)) =
            (self.zeros_from.take(), self.files.values_mut().next_back())
        {
            tail.truncate(end);
        }
    }

    pub fn append(&mut self, record: &Record<'_>) -> u64 {
        self.cut_prepared_zeros();
        let (&tail_id, tail) = self.files.last_key_value().expect("a tail segment");
        // Open never leaves a format-1 segment to append to: it seals it and goes on in a new one.
        assert_eq!(
            decode_segment_header(tail).map(|header| header.version),
            Ok(FORMAT_VERSION),
            "the model appends to a segment of an older format"
        );
        let room = tail.len() + record.encoded_len() + record::SEAL_RECORD_LEN;
        let tail_id = if room > SEGMENT_SIZE as usize {
            let next = tail_id.checked_add(1).expect("segment ids exhausted");
            let sealed = self.files.get_mut(&tail_id).expect("tail");
            let seal = record::encode_seal(sealed.len() as u64);
            sealed.extend(seal);
            self.files
                .insert(next, encode_segment_header(u64::from(next)).to_vec());
            next
        } else {
            tail_id
        };
        let tail = self.files.get_mut(&tail_id).expect("tail");
        let at = location(tail_id, tail.len());
        encode_into(tail, record);
        at
    }
}

/// Whether `bytes` start with a record that decodes in a segment of format `version`: intact, of
/// the segment's layout, neither a group record outside format 2, nor carrying the continuation
/// flag before format 3, nor a padding record before format 4.
fn decodes_in(bytes: &[u8], version: u32) -> Option<(Record<'_>, usize)> {
    let (record, len) = decode_sized(bytes).ok()?;
    if layout_of(bytes) != Some(layout_of_format(version))
        || (record.kind == RecordKind::Group && version != FORMAT_VERSION_2)
        || (continues_group(bytes) && version < FORMAT_VERSION_3)
        || (record.kind == RecordKind::Padding && version < FORMAT_VERSION)
    {
        return None;
    }
    Some((record, len))
}

/// Where the format-3 (or 4) group whose first record (`len` bytes, carrying the continuation
/// flag) is at the start of `bytes` ends, if all of it is there: records that decode, none a
/// seal or padding, up to and including the first without the flag.
fn v3_group_len(bytes: &[u8], len: usize) -> Option<usize> {
    let mut offset = len;
    loop {
        let (record, inner_len) = decodes_in(bytes.get(offset..)?, FORMAT_VERSION)?;
        if matches!(record.kind, RecordKind::Seal | RecordKind::Padding) {
            return None;
        }
        let continues = continues_group(&bytes[offset..]);
        offset += inner_len;
        if !continues {
            return Some(offset);
        }
    }
}

/// Whether the record decoded at the start of `bytes` (`len` bytes) may be applied as far as
/// format-2 groups go: anything but a group record may; a group record only if it is well formed
/// (key `group`, an 8-byte value) and the body it announces follows whole: exactly `body_len`
/// bytes of intact records of the segment's format, neither a seal nor a group among them, as
/// many as it announces.
fn group_whole(record: &Record<'_>, bytes: &[u8], len: usize, version: u32) -> bool {
    if record.kind != RecordKind::Group {
        return true;
    }
    let Some((body_len, count)) = group_extent(record) else {
        return false;
    };
    let Some(body) = bytes
        .get(len..)
        .and_then(|rest| rest.get(..body_len as usize))
    else {
        return false;
    };
    let mut offset = 0;
    let mut found = 0u64;
    while offset < body.len() {
        match decodes_in(&body[offset..], version) {
            Some((inner, inner_len))
                if !matches!(inner.kind, RecordKind::Seal | RecordKind::Group) =>
            {
                offset += inner_len;
                found += 1;
            }
            _ => return false,
        }
    }
    found == u64::from(count)
}

/// The model of recovery: what open does with `files` at `now`, from FORMAT.md's table.
pub fn replay(files: &BTreeMap<u32, Vec<u8>>, now: u64) -> Result<Replayed, ExpectedError> {
    let mut out = Replayed {
        live: HashMap::new(),
        keys: BTreeSet::new(),
        segments_replayed: 0,
        records_replayed: 0,
        expired_records_skipped: 0,
        truncated_tail: None,
        removed_empty_segment: None,
        files: BTreeMap::new(),
        zeros_from: None,
    };
    let newest_id = files.keys().next_back().copied();
    let header_error = |error: HeaderError| match error {
        HeaderError::BadMagic => ExpectedError::NotASegment,
        HeaderError::UnsupportedVersion(_) => ExpectedError::UnsupportedVersion,
        HeaderError::Truncated | HeaderError::BadChecksum => ExpectedError::Corrupt,
    };
    // Every header first: a foreign file is named as such before anything else is judged; the
    // newest file may be a torn creation (shorter than a header, or a zero header), judged below.
    for (&id, bytes) in files {
        let newest = Some(id) == newest_id;
        let header = &bytes[..bytes.len().min(SEGMENT_HEADER_LEN)];
        if newest && (header.len() < SEGMENT_HEADER_LEN || header.iter().all(|&b| b == 0)) {
            continue;
        }
        match decode_segment_header(header) {
            Ok(named) if named.segment_id == u64::from(id) => {}
            Ok(_) => return Err(ExpectedError::Corrupt),
            Err(error) => return Err(header_error(error)),
        }
    }
    // Ids start at 1 (location 0 means "no record" in the index): a segment 0 is corrupt (judged
    // after the headers, so a foreign file named segment 0 is NotASegment).
    if files.contains_key(&0) {
        return Err(ExpectedError::Corrupt);
    }
    // Whether the last segment kept ends with its seal (then the log goes on in a new one), and
    // its format.
    let mut last_sealed = false;
    let mut last_version = FORMAT_VERSION;
    // Where the last segment kept ends its records (prepared zeros may follow on disk).
    let mut last_records_end = 0;
    for (&id, bytes) in files {
        let newest = Some(id) == newest_id;
        let torn_creation = bytes.len() < SEGMENT_HEADER_LEN || bytes.iter().all(|&b| b == 0);
        let version = match decode_segment_header(bytes) {
            Ok(named) if named.segment_id == u64::from(id) => named.version,
            Ok(_) => return Err(ExpectedError::Corrupt),
            Err(_) if newest && torn_creation => {
                out.removed_empty_segment = Some(id);
                continue;
            }
            Err(error) => return Err(header_error(error)),
        };
        out.segments_replayed += 1;
        let corrupt_at = |offset: usize| ExpectedError::CorruptAt {
            id,
            offset: offset as u64,
        };
        let mut offset = SEGMENT_HEADER_LEN;
        let mut sealed = false;
        // A newest segment's zeros after its last record stay on disk (prepared space).
        let mut zeros_kept = false;
        // Where the format-3 group being replayed ends (checked whole at its first record).
        let mut group_end = 0;
        while offset < bytes.len() {
            // A segment holds records of its own format only: a record of another layout
            // (intact as it may be) does not decode there. Scans step by the decoded length.
            let decoded = decodes_in(&bytes[offset..], version)
                .filter(|(record, len)| group_whole(record, &bytes[offset..], *len, version))
                .filter(|(_, len)| {
                    if offset < group_end || !continues_group(&bytes[offset..]) {
                        return true;
                    }
                    match v3_group_len(&bytes[offset..], *len) {
                        Some(group_len) => {
                            group_end = offset + group_len;
                            true
                        }
                        None => false,
                    }
                });
            let Some((record, len)) = decoded else {
                if !newest {
                    return Err(corrupt_at(offset));
                }
                // A prepared segment's unused zeros: kept, neither damage nor a torn tail.
                if bytes[offset..].iter().all(|&b| b == 0) {
                    zeros_kept = true;
                    break;
                }
                let cut = (bytes.len() - offset) as u64;
                out.truncated_tail = Some((id, offset as u64, cut));
                break;
            };
            if record.kind == RecordKind::Seal {
                // A seal must vouch for its own offset and end the file, in any segment.
                // (In the newest segment, zeros may follow it: a prepared segment's unused
                // space, cut by recovery.)
                let zeros_after = bytes[offset + len..].iter().all(|&b| b == 0);
                if record::seal_length(&record) != Some(offset as u64)
                    || (offset + len != bytes.len() && !(newest && zeros_after))
                {
                    return Err(corrupt_at(offset));
                }
                sealed = true;
                offset += len;
                break;
            }
            // The unused end of an append lane's chunk (format 4): nobody's record.
            if record.kind == RecordKind::Padding {
                offset += len;
                continue;
            }
            out.records_replayed += 1;
            out.keys.insert(record.key.to_vec());
            let live = now < record.expires_at_millis;
            let at = location(id, offset);
            match record.kind {
                // A Failure (a claim's back-off) occupies its key like an Insert.
                RecordKind::Insert | RecordKind::Claim | RecordKind::Failure if live => {
                    let entry = Live {
                        value: record.value.to_vec(),
                        expires_at_millis: record.expires_at_millis,
                        claim: record.kind == RecordKind::Claim,
                        failure: record.kind == RecordKind::Failure,
                        location: at,
                        refresh_cap_millis: record.refresh_cap_millis,
                        fingerprint: record.fingerprint.to_vec(),
                    };
                    out.live.insert(record.key.to_vec(), entry);
                }
                RecordKind::Insert | RecordKind::Claim | RecordKind::Failure => {
                    if out.live.remove(record.key).is_none() {
                        out.expired_records_skipped += 1;
                    }
                }
                RecordKind::Remove => {
                    // A removal carrying an origin (8 bytes) hides only what lies before it.
                    let before = <[u8; 8]>::try_from(record.value).map_or(at, u64::from_le_bytes);
                    if out
                        .live
                        .get(record.key)
                        .is_some_and(|e| e.location < before)
                    {
                        out.live.remove(record.key);
                    }
                }
                // State records live in their own namespace: no dedup entry changes.
                RecordKind::StatePut | RecordKind::StateRemove => {}
                RecordKind::Position => {
                    if record.value.len() != 8 {
                        return Err(corrupt_at(offset));
                    }
                }
                // Its body, checked whole above, is replayed record by record after it.
                RecordKind::Group => {}
                RecordKind::Seal | RecordKind::Padding => unreachable!("handled above"),
            }
            offset += len;
        }
        if !newest && !sealed {
            return Err(corrupt_at(bytes.len()));
        }
        last_sealed = sealed;
        last_version = version;
        last_records_end = offset;
        // A seal ends the file (zeros after a newest segment's seal are cut: `offset` is past
        // the seal); a torn tail is cut at `offset`; prepared zeros stay.
        out.zeros_from = zeros_kept.then_some(offset);
        let kept = if zeros_kept { bytes.len() } else { offset };
        out.files
            .insert(id, bytes[..kept.min(bytes.len())].to_vec());
    }
    // A store of an older format goes on in the current one: its newest segment is sealed in its
    // own format where its records end.
    if !last_sealed && last_version != FORMAT_VERSION {
        if let Some((_, tail)) = out.files.iter_mut().next_back() {
            // Zeros after the records are cut: the seal ends the file.
            tail.truncate(last_records_end);
            out.zeros_from = None;
            let seal = if last_version == FORMAT_VERSION_1 {
                record::encode_seal_v1(tail.len() as u64)
            } else {
                record::encode_seal(tail.len() as u64)
            };
            tail.extend(seal);
            last_sealed = true;
        }
    }
    if out.files.is_empty() || last_sealed {
        let Some(id) = newest_id.map_or(Some(1), |id| id.checked_add(1)) else {
            return Err(ExpectedError::IdsExhausted);
        };
        out.files
            .insert(id, encode_segment_header(u64::from(id)).to_vec());
        out.zeros_from = None;
    }
    Ok(out)
}

/// Keys of records that decode at any offset of any file (torn tails, junk, broken files too):
/// none of them may be served unless the model replayed it.
pub fn keys_anywhere(files: &BTreeMap<u32, Vec<u8>>) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    for bytes in files.values() {
        for offset in 0..bytes.len().saturating_sub(RECORD_HEADER_LEN) {
            if let Ok(record) = decode(&bytes[offset..]) {
                keys.insert(record.key.to_vec());
            }
        }
    }
    keys
}

/// The name of the index checkpoint a store may write (FORMAT.md); an optimisation only, so the
/// file comparisons leave it out.
pub const CHECKPOINT: &str = "checkpoint.idem";
/// The magic a checkpoint file starts with.
pub const CHECKPOINT_MAGIC: &[u8] = b"IDEMCKPT";

/// Every value of a well-formed Insert record of each key, at any offset of any file.
pub fn values_anywhere(files: &BTreeMap<u32, Vec<u8>>) -> HashMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    values_of_kind(files, |kind| kind == RecordKind::Insert)
}

/// Every value of a well-formed record of a kind `pick` accepts, by key, at any offset.
fn values_of_kind(
    files: &BTreeMap<u32, Vec<u8>>,
    pick: impl Fn(RecordKind) -> bool,
) -> HashMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut values: HashMap<Vec<u8>, BTreeSet<Vec<u8>>> = HashMap::new();
    for bytes in files.values() {
        for offset in 0..bytes.len().saturating_sub(RECORD_HEADER_LEN) {
            if let Ok(record) = decode(&bytes[offset..]) {
                if pick(record.kind) {
                    let key = record.key.to_vec();
                    values.entry(key).or_default().insert(record.value.to_vec());
                }
            }
        }
    }
    values
}

/// The weak oracle for a store opened from a checkpoint of the input: every value it serves is
/// the value of a well-formed Insert record of that key somewhere in the input (or written by
/// the harness), and keys never in the input are absent; then writes, close and reopen.
fn check_with_checkpoint(store: Store, input: &Input, clock: &ManualClock, dir: &Path) {
    let mut values = values_anywhere(&input.files);
    let mut probe: BTreeSet<Vec<u8>> = keys_anywhere(&input.files);
    let mut fresh = b"fresh".to_vec();
    while probe.contains(&fresh) {
        fresh.push(b'!');
    }
    probe.insert(fresh.clone());
    let check = |store: &Store, values: &HashMap<Vec<u8>, BTreeSet<Vec<u8>>>, when: &str| {
        for key in &probe {
            // The log before the checkpoint's replay start is read only when asked: a damaged
            // record there is reported as `Corrupt` for that call (FORMAT.md), never served.
            let got = match store.get(key) {
                Ok(got) => got,
                Err(Error::Corrupt { .. }) => continue,
                Err(e) => panic!("{when}: get({}) failed: {e}", crate::show(key)),
            };
            if let Some(value) = got {
                assert!(
                    values.get(key).is_some_and(|v| v.contains(value.as_ref())),
                    "{when}: get({}) served {}, a value no Insert record of the key holds",
                    crate::show(key),
                    crate::show(&value)
                );
            }
        }
    };
    check(&store, &values, "after open from a checkpoint");
    clock.advance(Duration::from_millis(input.advance_ms));
    let key = &fresh[..];
    let ttl = Duration::from_millis(input.ttl_ms);
    match store.check_or_insert(key, ttl, b"after-open") {
        Ok(outcome) => assert_eq!(outcome, Outcome::Inserted, "a fresh key"),
        // A probe met a damaged record of a key sharing the fresh key's tag.
        Err(Error::Corrupt { .. }) => return,
        Err(e) => panic!("check_or_insert of a fresh key failed: {e}"),
    }
    values
        .entry(fresh.clone())
        .or_default()
        .insert(b"after-open".to_vec());
    check(&store, &values, "after a write");
    store.close().expect("close");
    // The reopen starts from the checkpoint close wrote. If it is not used, the whole log is
    // replayed and may now meet the damage the first open skipped: any error, or a cut tail
    // that loses the fresh key, is then the documented answer to a damaged log.
    let Ok(store) = Store::open_with(dir, config(input, clock)) else {
        return;
    };
    check(&store, &values, "after reopen");
    if store.recovery_report().checkpoint_ignored.is_none() {
        match store.get(key) {
            Ok(got) => assert_eq!(
                got.as_deref(),
                Some(&b"after-open"[..]),
                "a key written after open"
            ),
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("get of the fresh key failed: {e}"),
        }
    }
    store.close().expect("close after reopen");
}

/// The files of a store directory (every name but `LOCK` and the checkpoint), by name.
fn files_on_disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("listing the store directory")
        .map(|entry| entry.expect("listing the store directory"))
        .filter(|entry| entry.file_name() != "LOCK" && entry.file_name() != CHECKPOINT)
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).expect("reading a file"))
        })
        .collect()
}

fn named(files: &BTreeMap<u32, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(&id, bytes)| (crate::segment_file_name(id), bytes.clone()))
        .collect()
}

fn assert_same_files(dir: &Path, expected: &BTreeMap<u32, Vec<u8>>, when: &str) {
    let actual = files_on_disk(dir);
    let expected = named(expected);
    if actual != expected {
        let describe = |files: &BTreeMap<String, Vec<u8>>| -> Vec<(String, usize)> {
            files.iter().map(|(n, b)| (n.clone(), b.len())).collect()
        };
        panic!(
            "{when}: files on disk differ from the model\n  disk:  {:?}\n  model: {:?}",
            describe(&actual),
            describe(&expected)
        );
    }
}

fn config(input: &Input, clock: &ManualClock) -> Config {
    let config = Config::default()
        .durability(if input.sync {
            Durability::Sync
        } else {
            Durability::Never
        })
        .clock(clock.clone())
        .segment_size_bytes(SEGMENT_SIZE)
        // Few shards: an open allocates every shard's table, which dominated the run time.
        .shard_count(SHARDS)
        // No background thread: files change only when the harness acts (so no prepared
        // segment either: recovery of a prepared tail is fuzzed through the bytes, zeros after
        // the last record or the seal, which the model covers).
        .background_maintenance(false)
        .preallocate_segments(false)
        // Every segment replayed by two threads (the default shares only long stretches): the
        // model is the same either way; the one-thread replay is what every other test runs.
        .parallel_replay_min_bytes_for_testing(0)
        // Half the inputs (by the clock step's parity: no byte of its own, so the corpus keeps
        // its meaning) replay through reads instead of the simulated disk's maps: the model is
        // the same either way.
        .map_segments_at_open(input.advance_ms.is_multiple_of(2));
    if input.mask_zero {
        config.hash_mask_for_testing(0)
    } else {
        config
    }
}

/// Asks `store` about every key in `probe` and compares with the model at `now`.
fn check_answers(store: &Store, model: &Replayed, probe: &BTreeSet<Vec<u8>>, now: u64, when: &str) {
    for key in probe {
        let got = store
            .get(key)
            .unwrap_or_else(|e| panic!("{when}: get({}) failed: {e}", crate::show(key)));
        let want = model.get(key, now);
        assert_eq!(
            got.as_deref(),
            want,
            "{when}: get({}) at now={now}",
            crate::show(key)
        );
    }
    let mut in_doubt: Vec<Vec<u8>> = store
        .in_doubt()
        .unwrap_or_else(|e| panic!("{when}: in_doubt failed: {e}"))
        .iter()
        .map(|token| token.key().to_vec())
        .collect();
    in_doubt.sort();
    assert_eq!(in_doubt, model.in_doubt(now), "{when}: claims in doubt");
}

/// Whether the report must match the model's replay exactly (no checkpoint was used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Full,
    FromCheckpoint,
}

fn check_report(store: &Store, model: &Replayed, dir: &Path, replay: Replay, when: &str) {
    let report = store.recovery_report();
    let stats = store.stats();
    assert_eq!(stats.segments, model.files.len() as u64, "{when}: segments");
    let bytes: usize = model.files.values().map(Vec::len).sum();
    assert_eq!(
        stats.disk_bytes,
        bytes as u64,
        "{when}: disk bytes (model files {:?}, on disk {:?})",
        model
            .files
            .iter()
            .map(|(id, b)| (*id, b.len()))
            .collect::<Vec<_>>(),
        files_on_disk(dir)
            .iter()
            .map(|(n, b)| (n.clone(), b.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        report.removed_empty_segment,
        model
            .removed_empty_segment
            .map(|id| dir.join(crate::segment_file_name(id))),
        "{when}: removed_empty_segment ({report:?})"
    );
    let tail = report.truncated_tail.as_ref().map(|t| {
        assert!(!t.reason.is_empty());
        let name = t.path.file_name().expect("a file name").to_string_lossy();
        (name.into_owned(), t.offset, t.bytes_cut)
    });
    let want_tail = model
        .truncated_tail
        .map(|(id, offset, cut)| (crate::segment_file_name(id), offset, cut));
    assert_eq!(tail, want_tail, "{when}: truncated_tail ({report:?})");
    if replay == Replay::FromCheckpoint {
        assert_eq!(
            report.checkpoint_ignored, None,
            "{when}: the checkpoint the store wrote at close was not used"
        );
        // Entries expired by milliseconds may stay in the index until their rounded-up second.
        assert!(
            stats.live_keys >= model.live.len() as u64,
            "{when}: index entries after replay"
        );
        return;
    }
    assert_eq!(report.checkpoint_entries_loaded, 0, "{when}: no checkpoint");
    assert_eq!(
        report.segments_replayed, model.segments_replayed,
        "{when}: segments_replayed ({report:?})"
    );
    assert_eq!(
        report.records_replayed, model.records_replayed,
        "{when}: records_replayed ({report:?})"
    );
    assert_eq!(
        report.expired_records_skipped, model.expired_records_skipped,
        "{when}: expired_records_skipped ({report:?})"
    );
    assert_eq!(
        stats.live_keys,
        model.live.len() as u64,
        "{when}: index entries after replay"
    );
}

/// The model against the generator's intent for the groups it built (a check of the model, so
/// that it cannot drift into agreeing with whatever the store does): a damaged group in an older
/// segment makes open fail; in the newest segment, the log is cut at the group record or before
/// it (or the segment, its header cut short, is removed whole), so nothing of the group is
/// applied; a whole group in a segment replayed past its end was applied whole (every key of its
/// body was replayed).
fn check_group_facts(input: &Input, expected: &Result<Replayed, ExpectedError>) {
    let ids: Vec<u32> = input.files.keys().copied().collect();
    for fact in &input.groups {
        let id = ids[fact.file];
        let newest = fact.file + 1 == ids.len();
        let Ok(model) = expected else {
            continue;
        };
        let cut_at = model
            .truncated_tail
            .filter(|(tail_id, _, _)| *tail_id == id)
            .map(|(_, offset, _)| offset as usize);
        if !fact.whole {
            assert!(
                newest,
                "the model replayed a damaged group in an older segment: {fact:?}"
            );
            // Cut at or before the group record, or the whole file removed as a torn creation
            // (a header cut short takes the group with it).
            assert!(
                cut_at.is_some_and(|offset| offset <= fact.offset)
                    || model.removed_empty_segment == Some(id),
                "the model did not cut the newest segment at or before a damaged group: {fact:?}, \
                 {:?}",
                model.truncated_tail
            );
        } else if model.files.contains_key(&id) && cut_at.is_none_or(|at| at >= fact.end) {
            let body = &input.files[&id][fact.body..fact.end];
            let mut offset = 0;
            while offset < body.len() {
                let (record, len) = decode_sized(&body[offset..]).expect("a whole group's record");
                assert!(
                    model.keys.contains(record.key),
                    "a whole group not applied: {fact:?}"
                );
                offset += len;
            }
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let input = Input::parse(data);
    let dir = crate::scratch_dir();
    for (&id, bytes) in &input.files {
        std::fs::write(dir.path().join(crate::segment_file_name(id)), bytes)
            .expect("writing a segment file");
    }
    if let Some(checkpoint) = &input.checkpoint {
        std::fs::write(dir.path().join(CHECKPOINT), checkpoint).expect("writing the checkpoint");
    }
    let clock = ManualClock::new();
    let expected = replay(&input.files, NOW);
    check_group_facts(&input, &expected);
    let opened = Store::open_with(dir.path(), config(&input, &clock));
    let opened = if input.checkpoint.is_none() {
        opened
    } else {
        match opened {
            // With the checkpoint used, the log before its replay start is not read: only the
            // weak oracle holds (see `check_with_checkpoint`).
            Ok(store) if store.recovery_report().checkpoint_ignored.is_none() => {
                return check_with_checkpoint(store, &input, &clock, dir.path());
            }
            Ok(store) => drop(store),
            // It may have failed for the checkpoint's sake (a segment shorter than its replay
            // start); whether it should have is not modelled.
            Err(_) => return,
        }
        // The checkpoint was ignored: the store must be exactly the log's. Open again without
        // it (the open above changed the files exactly as the model says, or the next checks
        // fail on those files).
        std::fs::remove_file(dir.path().join(CHECKPOINT)).expect("removing the checkpoint");
        for (&id, bytes) in &input.files {
            let path = dir.path().join(crate::segment_file_name(id));
            std::fs::write(path, bytes).expect("rewriting a segment file");
        }
        for name in files_on_disk(dir.path()).keys() {
            if !named(&input.files).contains_key(name) {
                std::fs::remove_file(dir.path().join(name)).expect("removing a created file");
            }
        }
        Store::open_with(dir.path(), config(&input, &clock))
    };
    let (store, mut model) = match (expected, opened) {
        (Err(want), Err(error)) => {
            assert!(
                want.matches(&error),
                "open failed with {error:?}, the model expected {want:?}"
            );
            // A failed open changes no file (but a torn newest segment it deletes first).
            if want != ExpectedError::IdsExhausted {
                assert_same_files(dir.path(), &input.files, "after a failed open");
            }
            return;
        }
        (Err(want), Ok(store)) => panic!(
            "open succeeded ({:?}), the model expected {want:?}",
            store.recovery_report()
        ),
        (Ok(model), Err(error)) => panic!(
            "open failed with {error}; the model expected success: {:?}",
            (
                model.records_replayed,
                model.truncated_tail,
                model.removed_empty_segment
            )
        ),
        (Ok(model), Ok(store)) => (store, model),
    };

    // Every key the input could be read to contain, plus keys never in it.
    let mut probe = keys_anywhere(&input.files);
    probe.extend(model.keys.iter().cloned());
    let mut never = Vec::new();
    for key in probe.iter().take(32) {
        if key.len() < record::MAX_KEY_BYTES {
            let mut longer = key.clone();
            longer.push(0);
            never.push(longer);
        }
        if key.len() > 1 {
            never.push(key[..key.len() - 1].to_vec());
        }
    }
    never.push(b"never-in-the-input".to_vec());
    for key in never {
        if !probe.contains(&key) {
            assert!(model.entry(&key, NOW).is_none());
            probe.insert(key);
        }
    }

    check_report(&store, &model, dir.path(), Replay::Full, "after open");
    assert_same_files(dir.path(), &model.files, "after open");
    check_answers(&store, &model, &probe, NOW, "after open");

    // Time passes; every key re-checked.
    clock.advance(Duration::from_millis(input.advance_ms));
    let now = NOW + input.advance_ms;
    check_answers(&store, &model, &probe, now, "after the clock moved");

    // Writes after recovery: a fresh key, re-inserts of a few known keys, one removal.
    let ttl = Duration::from_millis(input.ttl_ms);
    let mut fresh = b"fresh".to_vec();
    while probe.contains(&fresh) {
        fresh.push(b'!');
    }
    let mut written: Vec<Vec<u8>> = vec![fresh];
    written.extend(model.keys.iter().take(3).cloned());
    for key in &written {
        let got = store.check_or_insert(key, ttl, b"after-open");
        match model.entry(key, now) {
            Some(live) if live.claim => assert!(
                matches!(got, Err(Error::ClaimInFlight { .. })),
                "check_or_insert of a claimed key: {got:?}"
            ),
            Some(live) if live.failure => assert!(
                matches!(got, Err(Error::RecentFailure { .. })),
                "check_or_insert of a key with a recorded failure: {got:?}"
            ),
            Some(live) => {
                assert_eq!(
                    got.expect("check_or_insert of a live key"),
                    Outcome::Duplicate(idem::Value::from(&live.value[..])),
                    "check_or_insert of a live key"
                );
                // A sliding key's duplicate extends it to min(now + ttl, cap) by rewriting
                // its record (`refresh`), when that is later than its deadline.
                let extended = (now + input.ttl_ms).min(live.refresh_cap_millis);
                if live.refresh_cap_millis > live.expires_at_millis
                    && extended > live.expires_at_millis
                {
                    let (value, fingerprint, cap) = (
                        live.value.clone(),
                        live.fingerprint.clone(),
                        live.refresh_cap_millis,
                    );
                    let location = model.append(&Record {
                        kind: RecordKind::Insert,
                        key,
                        value: &value,
                        expires_at_millis: extended,
                        fingerprint: &fingerprint,
                        refresh_cap_millis: cap,
                    });
                    let entry = model.live.get_mut(key).expect("the live key");
                    entry.expires_at_millis = extended;
                    entry.location = location;
                }
            }
            None => {
                let got = got.expect("check_or_insert of an absent key");
                assert_eq!(got, Outcome::Inserted, "check_or_insert of an absent key");
                let expires_at_millis = now + input.ttl_ms;
                let location = model.append(&Record {
                    kind: RecordKind::Insert,
                    key,
                    value: b"after-open",
                    expires_at_millis,
                    fingerprint: &[],
                    refresh_cap_millis: 0,
                });
                model.live.insert(
                    key.clone(),
                    Live {
                        value: b"after-open".to_vec(),
                        expires_at_millis,
                        claim: false,
                        failure: false,
                        location,
                        refresh_cap_millis: 0,
                        fingerprint: Vec::new(),
                    },
                );
            }
        }
    }
    probe.extend(written);
    let removable = probe
        .iter()
        .find(|key| model.entry(key, now).is_some())
        .cloned();
    if let Some(key) = removable {
        assert!(store.remove(&key).expect("remove"), "remove of a live key");
        let expires_at_millis = model.live[&key].expires_at_millis;
        model.append(&Record {
            kind: RecordKind::Remove,
            key: &key,
            value: &[],
            expires_at_millis,
            fingerprint: &[],
            refresh_cap_millis: 0,
        });
        model.live.remove(&key);
    }
    check_answers(&store, &model, &probe, now, "after the writes");
    store.close().expect("close");
    model.cut_prepared_zeros();
    assert_same_files(dir.path(), &model.files, "after close");

    // A reopen agrees with the model: first from the checkpoint written at close (if any), then,
    // with the checkpoint deleted, by replaying the whole log, which the model predicts exactly.
    let again = replay(&model.files, now).expect("the files a store leaves always open");
    assert_eq!(again.truncated_tail, None);
    let checkpoint = dir.path().join(CHECKPOINT);
    for replay in [Replay::FromCheckpoint, Replay::Full] {
        if replay == Replay::Full {
            match std::fs::remove_file(&checkpoint) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing the checkpoint: {e}"),
            }
        } else if !checkpoint.exists() {
            continue;
        }
        let when = format!("after reopen ({replay:?})");
        let store = Store::open_with(dir.path(), config(&input, &clock))
            .unwrap_or_else(|e| panic!("{when}: reopen failed: {e}"));
        check_report(&store, &again, dir.path(), replay, &when);
        check_answers(&store, &again, &probe, now, &when);
        store.close().expect("close after reopen");
        assert_same_files(dir.path(), &model.files, &when);
    }
}

#[cfg(test)]
mod tests {
    //! The model's answers for the cases the format names, each also run against the store.

    use super::*;

    fn raw_input(flags: u8, files: &[&[u8]]) -> Vec<u8> {
        let mut input = vec![flags, 0, 0, 0];
        for (i, file) in files.iter().enumerate() {
            if i > 0 {
                input.extend(SEPARATOR);
            }
            input.extend(*file);
        }
        input
    }

    fn insert(v1: bool, key: &[u8]) -> Vec<u8> {
        encode(v1, RecordKind::Insert, key, b"v", NOW + 60_000, &[])
    }

    /// Segment 1 of format `version` (2 or 3): an insert of key-0, then a group (insert key-1,
    /// remove key-0, insert key-2). Returns the file and the group's offset.
    fn segment_with_group(version: u32) -> (Vec<u8>, usize) {
        let mut file = encode_segment_header_version(1, version).to_vec();
        file.extend(insert(false, b"key-0"));
        let at = file.len();
        let v3 = version == FORMAT_VERSION;
        let member = |continues: bool, kind, key: &[u8], value: &[u8]| {
            encode_flagged(false, continues && v3, kind, key, value, NOW + 60_000, &[])
        };
        let body = [
            member(true, RecordKind::Insert, b"key-1", b"v"),
            member(true, RecordKind::Remove, b"key-0", b""),
            member(false, RecordKind::Insert, b"key-2", b"v"),
        ]
        .concat();
        if !v3 {
            encode_group(&mut file, body.len() as u32, 3);
        }
        file.extend(body);
        (file, at)
    }

    fn files(list: &[&[u8]]) -> BTreeMap<u32, Vec<u8>> {
        (1..).zip(list.iter().map(|file| file.to_vec())).collect()
    }

    #[test]
    fn a_whole_group_is_applied_entirely() {
        for version in [FORMAT_VERSION, FORMAT_VERSION_2] {
            let (file, _) = segment_with_group(version);
            let model = replay(&files(&[&file]), NOW).expect("opens");
            assert_eq!(model.truncated_tail, None);
            let group_records = if version == FORMAT_VERSION { 3 } else { 4 };
            assert_eq!(model.records_replayed, 1 + group_records);
            assert!(model.get(b"key-0", NOW).is_none());
            assert!(model.get(b"key-1", NOW).is_some() && model.get(b"key-2", NOW).is_some());
            run(&raw_input(0, &[&file]));
        }
    }

    #[test]
    fn a_group_cut_anywhere_in_the_newest_segment_is_a_torn_tail_at_its_record() {
        for version in [FORMAT_VERSION, FORMAT_VERSION_2] {
            let (file, at) = segment_with_group(version);
            for keep in at + 1..file.len() {
                let cut = &file[..keep];
                let model = replay(&files(&[cut]), NOW).expect("opens");
                assert_eq!(
                    model.truncated_tail,
                    Some((1, at as u64, (keep - at) as u64)),
                    "format {version}, kept {keep}"
                );
                assert_eq!(model.records_replayed, 1);
                assert!(model.get(b"key-0", NOW).is_some(), "kept {keep}");
                assert!(model.get(b"key-1", NOW).is_none(), "kept {keep}");
                run(&raw_input(0, &[cut]));
            }
        }
    }

    #[test]
    fn a_damaged_group_in_an_older_segment_is_corrupt_at_its_offset() {
        for version in [FORMAT_VERSION, FORMAT_VERSION_2] {
            let (file, at) = segment_with_group(version);
            let mut older = file[..file.len() - 3].to_vec();
            older.extend(record::encode_seal(older.len() as u64));
            let newer = encode_segment_header(2).to_vec();
            let files = files(&[&older, &newer]);
            assert_eq!(
                replay(&files, NOW).map(|_| ()),
                Err(ExpectedError::CorruptAt {
                    id: 1,
                    offset: at as u64
                })
            );
            run(&raw_input(0, &[&older, &newer]));
        }
    }

    #[test]
    fn each_format_refuses_the_other_s_groups() {
        for (written, named) in [
            (FORMAT_VERSION, FORMAT_VERSION_2),
            (FORMAT_VERSION_2, FORMAT_VERSION),
        ] {
            let (file, at) = segment_with_group(written);
            let mut older = encode_segment_header_version(1, named).to_vec();
            older.extend(&file[SEGMENT_HEADER_LEN..]);
            older.extend(record::encode_seal(older.len() as u64));
            let newer = encode_segment_header(2).to_vec();
            assert_eq!(
                replay(&files(&[&older, &newer]), NOW).map(|_| ()),
                Err(ExpectedError::CorruptAt {
                    id: 1,
                    offset: at as u64
                }),
                "format-{written} group in a format-{named} segment"
            );
            run(&raw_input(0, &[&older, &newer]));
        }
    }

    #[test]
    fn a_newest_format_2_segment_is_sealed_in_place_and_followed_by_format_3() {
        let (file, _) = segment_with_group(FORMAT_VERSION_2);
        let model = replay(&files(&[&file]), NOW).expect("opens");
        let mut sealed = file.clone();
        sealed.extend(record::encode_seal(file.len() as u64));
        assert_eq!(model.files[&1], sealed);
        assert_eq!(model.files[&2], encode_segment_header(2).to_vec());
        run(&raw_input(0, &[&file]));
    }

    #[test]
    fn a_newest_format_1_segment_is_sealed_in_format_1_and_followed_by_format_3() {
        let mut older = encode_segment_header_version(1, FORMAT_VERSION_1).to_vec();
        older.extend(insert(true, b"key-0"));
        older.extend(record::encode_seal_v1(older.len() as u64));
        let mut newest = encode_segment_header_version(2, FORMAT_VERSION_1).to_vec();
        newest.extend(insert(true, b"key-1"));
        let end = newest.len();
        newest.extend(&insert(true, b"key-2")[..7]);
        let model = replay(&files(&[&older, &newest]), NOW).expect("opens");
        assert_eq!(model.truncated_tail, Some((2, end as u64, 7)));
        let mut sealed = newest[..end].to_vec();
        sealed.extend(record::encode_seal_v1(end as u64));
        assert_eq!(model.files[&2], sealed);
        assert_eq!(model.files[&3], encode_segment_header(3).to_vec());
        assert!(model.get(b"key-0", NOW).is_some() && model.get(b"key-1", NOW).is_some());
        run(&raw_input(0, &[&older, &newest]));
    }

    #[test]
    fn state_records_leave_dedup_entries_alone_and_a_bad_position_is_corrupt() {
        let mut file = encode_segment_header(1).to_vec();
        file.extend(insert(false, b"key-0"));
        for (kind, value) in [
            (RecordKind::StatePut, &b"state"[..]),
            (RecordKind::StateRemove, &b""[..]),
            (RecordKind::Position, &7u64.to_le_bytes()[..]),
        ] {
            file.extend(encode(false, kind, b"key-0", value, NEVER_EXPIRES, &[]));
        }
        let model = replay(&files(&[&file]), NOW).expect("opens");
        assert_eq!(model.records_replayed, 4);
        assert_eq!(model.get(b"key-0", NOW), Some(&b"v"[..]));
        run(&raw_input(0, &[&file]));
        let at = file.len();
        file.extend(encode(false, RecordKind::Position, b"src", b"odd", 0, &[]));
        assert_eq!(
            replay(&files(&[&file]), NOW).map(|_| ()),
            Err(ExpectedError::CorruptAt {
                id: 1,
                offset: at as u64
            })
        );
        run(&raw_input(0, &[&file]));
    }
}

//! Fencing tokens: claim ids that only grow over the store's whole life, across reopens and
//! crashes (as Chubby's sequencers and Kafka's producer epochs do), so that the system a side
//! effect goes to can refuse a stale holder by comparing two numbers.
//!
//! Ids are handed out from a block whose end is first written durably to `fence.idem` (a
//! temporary file, fsynced, renamed over the old one, then the directory fsynced). A crash loses
//! at most the unused rest of a block; the next open starts after it.
//!
//! Invariants:
//! - Every id handed out is below the `reserved_below` that `fence.idem` durably holds.
//! - After an open, the first id handed out is at least the durable `reserved_below` of the
//!   previous open: ids never repeat and never go backwards.
//!
//! Layout of `fence.idem` (24 bytes, little-endian; also in `engine/FORMAT.md`): magic
//! `IDEMFNCE` (8), version u32 = 1, `reserved_below` u64, CRC-32 (IEEE) of the first 20 bytes.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::io::Storage;

pub(crate) const FENCE_FILE_NAME: &str = "fence.idem";
const FENCE_TMP_FILE_NAME: &str = "fence.idem.tmp";
const FENCE_MAGIC: [u8; 8] = *b"IDEMFNCE";
const FENCE_VERSION: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + FENCE_MAGIC.len();
const RESERVED_BELOW_OFFSET: usize = VERSION_OFFSET + 4;
const CRC_OFFSET: usize = RESERVED_BELOW_OFFSET + 8;
const FENCE_FILE_LEN: usize = CRC_OFFSET + 4;
const _: () = assert!(FENCE_FILE_LEN == 24);

/// Ids reserved by one write of `fence.idem`: one fsync'd rename per million claims.
const BLOCK_IDS: u64 = 1 << 20;

#[derive(Debug)]
struct Allocation {
    next: u64,
    reserved_below: u64,
}

/// The store's source of claim ids.
#[derive(Debug)]
pub(crate) struct FencingTokens {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    allocation: Mutex<Allocation>,
}

impl FencingTokens {
    /// Reads `fence.idem` in `dir` (absent in a new store, or one written before fencing tokens
    /// existed: ids then start at 1).
    pub(crate) fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<FencingTokens> {
        let path = dir.join(FENCE_FILE_NAME);
        let reserved_below = match storage.open(&path) {
            Ok(file) => {
                let mut bytes = [0u8; FENCE_FILE_LEN + 1];
                let got = file
                    .read_at(&mut bytes, 0)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                decode(&path, &bytes[..got])?
            }
            Err(e) if e.kind() == ErrorKind::NotFound => 1,
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        Ok(FencingTokens {
            storage,
            dir: dir.to_path_buf(),
            allocation: Mutex::new(Allocation {
                next: reserved_below,
                reserved_below,
            }),
        })
    }

    /// The next id: larger than every id handed out before, in this open or any earlier one.
    pub(crate) fn next(&self) -> Result<u64> {
        let mut allocation = self.allocation.lock();
        if allocation.next >= allocation.reserved_below {
            let reserved_below =
                allocation
                    .next
                    .checked_add(BLOCK_IDS)
                    .ok_or_else(|| Error::Corrupt {
                        path: self.dir.join(FENCE_FILE_NAME),
                        offset: RESERVED_BELOW_OFFSET as u64,
                        reason: "fencing tokens are exhausted".into(),
                    })?;
            self.persist(reserved_below)?;
            allocation.reserved_below = reserved_below;
        }
        let id = allocation.next;
        allocation.next += 1;
        debug_assert!(id < allocation.reserved_below);
        Ok(id)
    }

    /// Makes every id handed out from now on larger than `id` (a claim id that came from
    /// another store, by import), durably before returning.
    pub(crate) fn advance_past(&self, id: u64) -> Result<()> {
        let mut allocation = self.allocation.lock();
        if allocation.next > id {
            return Ok(());
        }
        let exhausted = || Error::Corrupt {
            path: self.dir.join(FENCE_FILE_NAME),
            offset: RESERVED_BELOW_OFFSET as u64,
            reason: "fencing tokens are exhausted".into(),
        };
        let next = id.checked_add(1).ok_or_else(exhausted)?;
        let reserved_below = next.checked_add(BLOCK_IDS).ok_or_else(exhausted)?;
        self.persist(reserved_below)?;
        *allocation = Allocation {
            next,
            reserved_below,
        };
        Ok(())
    }

    fn persist(&self, reserved_below: u64) -> Result<()> {
        let tmp_path = self.dir.join(FENCE_TMP_FILE_NAME);
        let final_path = self.dir.join(FENCE_FILE_NAME);
        // Every failure names fence.idem: callers (and tests) can tell it from a log failure.
        let io = |what: &str, e| {
            let context = format!("reserving fencing tokens in {FENCE_FILE_NAME}: {what}");
            Error::io(context, e)
        };
        let file = self
            .storage
            .create_truncate(&tmp_path)
            .map_err(|e| io("creating the temporary file", e))?;
        file.write_all_at(&encode(reserved_below), 0)
            .map_err(|e| io("writing the temporary file", e))?;
        file.sync_data()
            .map_err(|e| io("fsyncing the temporary file", e))?;
        drop(file);
        self.storage
            .rename(&tmp_path, &final_path)
            .map_err(|e| io("renaming it into place", e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| io("fsyncing the directory", e))
    }
}

fn encode(reserved_below: u64) -> [u8; FENCE_FILE_LEN] {
    let mut bytes = [0u8; FENCE_FILE_LEN];
    bytes[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&FENCE_MAGIC);
    bytes[VERSION_OFFSET..RESERVED_BELOW_OFFSET].copy_from_slice(&FENCE_VERSION.to_le_bytes());
    bytes[RESERVED_BELOW_OFFSET..CRC_OFFSET].copy_from_slice(&reserved_below.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
    bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(path: &Path, bytes: &[u8]) -> Result<u64> {
    let corrupt = |offset: usize, reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() != FENCE_FILE_LEN {
        return Err(corrupt(
            bytes.len().min(FENCE_FILE_LEN),
            format!("fence file is {} bytes, not {FENCE_FILE_LEN}", bytes.len()),
        ));
    }
    if bytes[MAGIC_OFFSET..VERSION_OFFSET] != FENCE_MAGIC {
        return Err(corrupt(MAGIC_OFFSET, "bad magic".into()));
    }
    let crc = u32::from_le_bytes(bytes[CRC_OFFSET..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&bytes[..CRC_OFFSET]) {
        return Err(corrupt(CRC_OFFSET, "checksum mismatch".into()));
    }
    let version = u32::from_le_bytes(
        bytes[VERSION_OFFSET..RESERVED_BELOW_OFFSET]
            .try_into()
            .expect("4 bytes"),
    );
    if version != FENCE_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FENCE_VERSION,
        });
    }
    Ok(u64::from_le_bytes(
        bytes[RESERVED_BELOW_OFFSET..CRC_OFFSET]
            .try_into()
            .expect("8 bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;

    fn open(storage: &SimStorage) -> FencingTokens {
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        crate::io::create_dir_durably(&*storage, Path::new("/f")).unwrap();
        FencingTokens::open(storage, Path::new("/f")).unwrap()
    }

    #[test]
    fn ids_grow_across_reopens_and_power_loss() {
        let storage = SimStorage::new(3);
        let mut last = 0;
        for round in 0..5 {
            let tokens = open(&storage);
            for _ in 0..(round * 7 + 1) {
                let id = tokens.next().unwrap();
                assert!(id > last, "round {round}: {id} after {last}");
                last = id;
            }
            if round % 2 == 0 {
                storage.crash();
            }
        }
    }

    #[test]
    fn a_damaged_fence_file_is_a_typed_error_naming_the_file() {
        let storage = SimStorage::new(3);
        open(&storage).next().unwrap();
        let path = Path::new("/f").join(FENCE_FILE_NAME);
        let file = Storage::open(&storage, &path).unwrap();
        file.write_all_at(&[0xff], RESERVED_BELOW_OFFSET as u64)
            .unwrap();
        let storage: Arc<dyn Storage> = Arc::new(storage);
        let Err(Error::Corrupt {
            path: named,
            offset,
            ..
        }) = FencingTokens::open(storage, Path::new("/f"))
        else {
            panic!("a damaged fence file was accepted");
        };
        assert_eq!(named, path);
        assert_eq!(offset, CRC_OFFSET as u64);
    }
}

//! Harness logic of idem's fuzz targets (`fuzz/fuzz_targets/*.rs` are thin wrappers).
//!
//! - [`record`]: the record and segment-header codec, on arbitrary bytes and arbitrary records.
//! - [`recover`]: arbitrary bytes laid out as segment files, opened as a store, checked against an
//!   independent model of recovery (spec: `engine/FORMAT.md`).
//! - [`ops`]: arbitrary operation sequences run against a store and an in-memory model.
//!
//! Every check panics on a violated property, which libFuzzer reports as a crash.

pub mod ops;
pub mod record;
pub mod recover;

use std::path::PathBuf;

/// A fresh scratch directory for one fuzz input, on a RAM-backed file system where possible
/// (every store open fsyncs; on tmpfs that costs nothing). `IDEM_FUZZ_TMPDIR` overrides the place.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = std::env::var_os("IDEM_FUZZ_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            shm.is_dir().then_some(shm)
        })
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("idem-fuzz-")
        .tempdir_in(&base)
        .or_else(|_| tempfile::tempdir())
        .expect("creating a scratch directory")
}

/// Whether checks for known, already reported engine bugs are on (`IDEM_FUZZ_STRICT=1`). Off by
/// default so that a short fuzz run keeps looking for new bugs instead of finding a known one.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("IDEM_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// The file name of segment `id`, as FORMAT.md spells it.
pub fn segment_file_name(id: u32) -> String {
    format!("segment-{id:08}.idem")
}

/// A key for messages: text if it is text, shortened if it is long.
pub fn show(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(&key[..key.len().min(24)]);
    if key.len() > 24 {
        format!("{text:?}…({} bytes)", key.len())
    } else {
        format!("{text:?}")
    }
}

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
/// No guard is active at present (`.ci/fuzz.sh` replays regressions with strict checks on and
/// reports each known bug that still reproduces).
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

#[cfg(test)]
mod tests {
    //! `cargo test --manifest-path fuzz/Cargo.toml`: every committed seed and regression input
    //! passes its target's harness, without libFuzzer.

    use std::path::{Path, PathBuf};

    fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(kind)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .map(|entry| entry.expect("listing inputs").path())
            .filter(|path| kind != "corpus" || path.to_string_lossy().contains("/seed-"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).expect("reading an input");
                (path, bytes)
            })
            .collect()
    }

    fn run_all(target: &str, run: impl Fn(&[u8])) {
        for kind in ["corpus", "regressions"] {
            for (path, bytes) in inputs(kind, target) {
                eprintln!("{}", path.display());
                run(&bytes);
            }
        }
    }

    #[test]
    fn record_inputs_pass() {
        run_all("record", crate::record::run);
    }

    #[test]
    fn recover_inputs_pass() {
        run_all("recover", crate::recover::run);
    }

    #[test]
    fn ops_inputs_pass() {
        run_all("ops", crate::ops::run_bytes);
    }
}

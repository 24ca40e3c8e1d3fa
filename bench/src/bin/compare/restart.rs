//! The restart targets of issue #10, measured after the rows (`--peers restart` alone): the
//! worst reopen after a kill at `--ram-keys` live keys (10 M by default), the store in its
//! default configuration killed just before its next full checkpoint was due (see
//! `idem_bench::restart::write_worst`), and the held-out replay check: `--ops` keys inserted and
//! never checkpointed, then reopened, the replay's rate against the insert rate.
//!
//! Every step runs in a child process of its own (`compare --restart-step STEP DIR N`), as a
//! restart after a kill does: each reopen starts from a fresh process's memory, and the
//! writing process's memory is gone. The page cache is warm (the files were just written).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use idem::Store;
use idem_bench::restart::{insert_keys, reopen_config, timed_reopen, write_worst};

/// `--peers` name of the restart measurements.
pub const RESTART: &str = "restart";
/// Reopens of the worst case's files (each in a fresh process); the verdict is their median.
const WORST_OPENS: usize = 5;
/// Reopens of the replay check's files.
const REPLAY_OPENS: usize = 3;

/// What the restart steps measured.
#[derive(Debug, Clone, Default)]
pub struct RestartResult {
    pub live: u64,
    /// The worst case: entries its checkpoint held, records replayed after it.
    pub checkpoint_entries: u64,
    pub replayed: u64,
    /// Each reopen of the worst case, in seconds.
    pub worst_opens: Vec<f64>,
    /// The replay check: keys inserted without a checkpoint, the insert loop's time, and each
    /// reopen's.
    pub replay_keys: u64,
    pub insert_secs: f64,
    pub replay_opens: Vec<f64>,
}

/// The median of `values`; 0 for none.
pub fn median_of(values: &[f64]) -> f64 {
    crate::report::median(values).unwrap_or(0.0)
}

/// Child side: one step, printed as a `RESTART` line of `key=value` fields.
pub fn run_step(step: &str, dir: &Path, n: u64) -> Result<(), String> {
    let line = match step {
        "prepare-worst" => {
            let worst = write_worst(dir, n, None);
            format!("since={}", worst.records_since_checkpoint)
        }
        "prepare-replay" => {
            let store = Store::open_with(dir, reopen_config()).map_err(|e| e.to_string())?;
            let insert = insert_keys(&store, 0..n);
            // Dropped without `close`: flushed, no checkpoint; the reopen replays every record.
            drop(store);
            format!("insert_secs={:.6}", insert.as_secs_f64())
        }
        "open" => {
            let reopen = timed_reopen(dir);
            format!(
                "secs={:.6}\tentries={}\treplayed={}\tlive={}",
                reopen.took.as_secs_f64(),
                reopen.checkpoint_entries_loaded,
                reopen.records_replayed,
                reopen.live_keys
            )
        }
        other => return Err(format!("unknown restart step {other:?}")),
    };
    println!("RESTART\t{line}");
    Ok(())
}

/// Parent side: every step, each in a child process; the data directories go afterwards
/// unless `keep`.
pub fn measure(
    exe: &Path,
    scratch: &Path,
    live: u64,
    replay_keys: u64,
    keep: bool,
) -> Result<RestartResult, String> {
    let pid = std::process::id();
    let worst_dir = scratch.join(format!("restart-worst-{pid}"));
    let replay_dir = scratch.join(format!("restart-replay-{pid}"));
    for dir in [&worst_dir, &replay_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let mut result = RestartResult {
        live,
        replay_keys,
        ..RestartResult::default()
    };
    eprint!("compare: {RESTART:<20} ");
    let started = Instant::now();
    let since = field(&step(exe, "prepare-worst", &worst_dir, live)?, "since")? as u64;
    for _ in 0..WORST_OPENS {
        let fields = step(exe, "open", &worst_dir, 0)?;
        check_live(&fields, live)?;
        result.worst_opens.push(field(&fields, "secs")?);
        result.checkpoint_entries = field(&fields, "entries")? as u64;
        result.replayed = field(&fields, "replayed")? as u64;
        if result.replayed != since {
            // The checkpoint was not where the schedule put it: not the worst case.
            return Err(format!(
                "the worst case replayed {} records, not the {since} written after its checkpoint",
                result.replayed
            ));
        }
    }
    let fields = step(exe, "prepare-replay", &replay_dir, replay_keys)?;
    result.insert_secs = field(&fields, "insert_secs")?;
    for _ in 0..REPLAY_OPENS {
        let fields = step(exe, "open", &replay_dir, 0)?;
        check_live(&fields, replay_keys)?;
        result.replay_opens.push(field(&fields, "secs")?);
    }
    if !keep {
        for dir in [&worst_dir, &replay_dir] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    eprintln!(
        "worst reopen median {:.0} ms, replay {:.2}x the insert rate ({:.1} s wall)",
        median_of(&result.worst_opens) * 1e3,
        result.insert_secs / median_of(&result.replay_opens),
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}

/// The `RESTART` line's fields.
type Fields = HashMap<String, String>;

fn step(exe: &Path, name: &str, dir: &Path, n: u64) -> Result<Fields, String> {
    let output = Command::new(exe)
        .arg("--restart-step")
        .arg(name)
        .arg(dir)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {} --restart-step {name}: {e}", exe.display()))?;
    crate::result_fields(&String::from_utf8_lossy(&output.stdout), "RESTART")
        .ok_or(format!("restart step {name} failed ({})", output.status))
}

fn field(fields: &Fields, key: &str) -> Result<f64, String> {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("restart step: no {key} in {fields:?}"))
}

fn check_live(fields: &Fields, live: u64) -> Result<(), String> {
    let found = field(fields, "live")? as u64;
    if found != live {
        return Err(format!("a reopen found {found} live keys, not {live}"));
    }
    Ok(())
}

//! Number formatting and the machine facts the report records.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn fmt_int(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

pub fn fmt_nanos(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

pub fn fmt_bytes(b: f64) -> String {
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "?".into())
}

/// The file system type of the mount holding `path` (longest mount-point prefix).
pub fn fs_type_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "?".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (device, point, fs) = (parts.next()?, parts.next()?, parts.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{fs} ({device})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "?".into())
}

pub fn display_path(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

pub fn git_commit() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            let dirty =
                run(&["status", "--porcelain", "--", "engine"]).is_some_and(|s| !s.is_empty());
            format!(
                "`{head}`{}",
                if dirty {
                    " (engine/ has uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown".into(),
    }
}

/// The locked versions of the peers, read from the workspace's `Cargo.lock`. Where the lock
/// holds several versions of a crate, `idem-bench`'s dependency list names the one used.
pub fn crate_versions() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let bench_dependencies: Vec<&str> = text
        .split("[[package]]")
        .find(|block| block.contains("name = \"idem-bench\""))
        .and_then(|block| block.split("dependencies = [").nth(1))
        .and_then(|list| list.split(']').next())
        .map(|list| {
            list.lines()
                .map(|l| l.trim().trim_matches([',', '"']))
                .collect()
        })
        .unwrap_or_default();
    let version_of = |name: &str| {
        let pinned = bench_dependencies
            .iter()
            .find_map(|dep| dep.strip_prefix(name)?.strip_prefix(' '));
        if let Some(version) = pinned {
            return version.to_string();
        }
        let needle = format!("name = \"{name}\"\nversion = \"");
        text.find(&needle)
            .map(|at| {
                let rest = &text[at + needle.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    [
        "idem",
        "sled",
        "fjall",
        "redb",
        "moka",
        "hashbrown",
        "criterion",
    ]
    .iter()
    .map(|c| format!("{c} {}", version_of(c)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no date crate needed).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

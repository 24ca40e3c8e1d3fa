//! Number formatting for the reports: thousands separators, durations, byte sizes, money.

/// `1234567` → `"1,234,567"`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds as a short human duration: `850 ns`, `12.3 µs`, `2.31 ms`, `1.20 s`.
pub fn nanos(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns_f / 1e6)
    } else {
        format!("{:.2} s", ns_f / 1e9)
    }
}

/// Bytes as a short size: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.50 GiB`.
pub fn bytes(n: f64) -> String {
    const KIB: f64 = 1024.0;
    if n.abs() < KIB {
        format!("{n:.0} B")
    } else if n.abs() < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else if n.abs() < KIB * KIB * KIB {
        format!("{:.1} MiB", n / (KIB * KIB))
    } else {
        format!("{:.2} GiB", n / (KIB * KIB * KIB))
    }
}

/// Cents as dollars: `123456` → `"$1,234.56"`.
pub fn cents(c: u64) -> String {
    format!("${}.{:02}", count(c / 100), c % 100)
}

/// A rate per second with separators: `1234567.8` → `"1,234,568"`.
pub fn rate(per_sec: f64) -> String {
    if per_sec.is_finite() && per_sec >= 0.0 {
        count(per_sec.round() as u64)
    } else {
        "-".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(nanos(850), "850 ns");
        assert_eq!(nanos(12_340), "12.3 µs");
        assert_eq!(nanos(2_310_000), "2.31 ms");
        assert_eq!(nanos(1_200_000_000), "1.20 s");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0), "3.5 KiB");
        assert_eq!(cents(123_456), "$1,234.56");
        assert_eq!(cents(5), "$0.05");
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(f64::INFINITY), "-");
    }
}

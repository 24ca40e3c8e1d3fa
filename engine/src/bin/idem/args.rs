//! Parsers for flag values shared by the subcommands: durability modes, durations, fractions.
//! Each returns a message clap prints as a usage error (exit status 2), never a panic.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use idem::Durability;

/// A `--durability` value: `sync`, `periodic-MS` (e.g. `periodic-10`, `periodic-10ms`) or
/// `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityArg(pub Durability);

impl FromStr for DurabilityArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let mode = match lower.as_str() {
            "sync" => Durability::Sync,
            "never" => Durability::Never,
            _ => {
                let Some(millis) = lower.strip_prefix("periodic-") else {
                    return Err(format!(
                        "unknown durability {text:?}: expected sync, periodic-MS (e.g. periodic-10) or never"
                    ));
                };
                let millis = millis.strip_suffix("ms").unwrap_or(millis);
                match millis.parse::<u64>() {
                    Ok(ms) if ms > 0 => Durability::Periodic(Duration::from_millis(ms)),
                    _ => {
                        return Err(format!(
                            "bad periodic interval in {text:?}: expected a positive number of milliseconds, e.g. periodic-10"
                        ))
                    }
                }
            }
        };
        Ok(DurabilityArg(mode))
    }
}

impl fmt::Display for DurabilityArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Durability::Sync => f.write_str("sync"),
            Durability::Never => f.write_str("never"),
            Durability::Periodic(every) => write!(f, "periodic-{}", every.as_millis()),
        }
    }
}

/// Parses a positive duration: `500ms`, `30s`, `15m`, `24h`, `7d`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 30s, 15m, 24h, 7d or 500ms"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    let seconds = number * seconds_per_unit;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("duration {text:?} must be more than zero"));
    }
    if seconds > idem::MAX_TTL.as_secs_f64() {
        return Err(format!(
            "duration {text:?} is over idem's limit of {} days",
            idem::MAX_TTL.as_secs() / 86_400
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a fraction in `[0, 1]`, also written as a percentage: `0.002` or `0.2%`.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let value = match trimmed.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => trimmed.parse::<f64>(),
    }
    .map_err(|_| {
        format!("bad fraction {text:?}: expected a number from 0 to 1, or a percentage like 0.2%")
    })?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("fraction {text:?} is outside 0..=1"));
    }
    Ok(value)
}

/// Parses a fraction strictly between 0 and 1 (where in a run something happens).
pub fn parse_open_fraction(text: &str) -> Result<f64, String> {
    let value = parse_fraction(text)?;
    if value <= 0.0 || value >= 1.0 {
        return Err(format!("{text:?} must be strictly between 0 and 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_round_trips() {
        for (text, mode) in [
            ("sync", Durability::Sync),
            ("NEVER", Durability::Never),
            (
                "periodic-10",
                Durability::Periodic(Duration::from_millis(10)),
            ),
            (
                "periodic-250ms",
                Durability::Periodic(Duration::from_millis(250)),
            ),
        ] {
            let parsed: DurabilityArg = text.parse().unwrap();
            assert_eq!(parsed.0, mode, "{text}");
            let again: DurabilityArg = parsed.to_string().parse().unwrap();
            assert_eq!(again, parsed);
        }
        for bad in [
            "",
            "periodic",
            "periodic-",
            "periodic-0",
            "periodic-x",
            "always",
        ] {
            assert!(bad.parse::<DurabilityArg>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["", "0s", "h", "5 fortnights", "-3s", "100000d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.002").unwrap(), 0.002);
        assert!((parse_fraction("0.2%").unwrap() - 0.002).abs() < 1e-12);
        assert_eq!(parse_fraction("0").unwrap(), 0.0);
        assert_eq!(parse_fraction("1").unwrap(), 1.0);
        for bad in ["", "x", "1.01", "-0.1", "200%", "NaN"] {
            assert!(parse_fraction(bad).is_err(), "{bad:?}");
        }
        assert!(parse_open_fraction("0").is_err());
        assert!(parse_open_fraction("1").is_err());
        assert_eq!(parse_open_fraction("0.5").unwrap(), 0.5);
    }
}

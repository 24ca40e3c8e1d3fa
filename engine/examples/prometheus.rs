//! idem's metrics in Prometheus's text format, through the `metrics` facade.
//!
//! ```sh
//! cargo run -p idem --example prometheus --features metrics
//! ```
//!
//! A real service installs the exporter with its HTTP listener (feature `http-listener` of
//! `metrics-exporter-prometheus`) and calls `store.publish_metrics()` every few seconds; here
//! the exposition text is rendered once and printed.

use std::time::Duration;

use idem::{Claim, Completion, Config, ManualClock, Store};
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new();
    let config = Config::default()
        .clock(clock.clone())
        .late_duplicate_grace(Duration::from_secs(600));
    let store = Store::open_with(dir.path(), config)?;

    let ttl = Duration::from_secs(60);
    for i in 0..100u32 {
        let key = format!("order-{}", i % 80);
        store.check_or_insert(key.as_bytes(), ttl, b"done")?; // 80 first, 20 replays
    }
    clock.advance(ttl * 2); // the retries come after the TTL: late duplicates
    store.maintain()?;
    for i in 0..10u32 {
        store.decide(format!("order-{i}").as_bytes(), ttl, b"done")?;
    }
    if let Claim::Acquired(token) = store.claim(b"charge-1", Duration::from_secs(30))? {
        store.finish(
            token,
            Completion::Failure {
                backoff: Duration::from_secs(5),
                failure: b"503",
            },
        )?;
    }

    store.publish_metrics();
    let text = prometheus.render();
    print!("{text}");
    // CI runs this example: every family must be there (the fsync and group-commit histograms
    // are recorded by the log writer as it commits, the rest by `publish_metrics`).
    for family in [
        "idem_decisions_total",
        "idem_claims_total",
        "idem_live_keys",
        "idem_call_seconds",
        "idem_fsync_seconds",
        "idem_commit_bytes",
    ] {
        if !text.contains(family) {
            return Err(format!("{family} is missing from the exposition text").into());
        }
    }
    Ok(())
}

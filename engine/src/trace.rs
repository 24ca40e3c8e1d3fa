//! Events for the `tracing` feature: `event!` expands to a `tracing` event with the feature on
//! and to nothing with it off, so the call sites cost nothing in a default build. Events mark
//! rare moments only (open and recovery, compaction, deletion of segments, checkpoints,
//! poisoning, damaged segments); never one per operation.

/// A `tracing` event at `$level` (`info`, `warn`, `error`, `debug`) when the feature is on.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            tracing::$level!(target: "idem", $($arg)+);
        }
    }};
}

pub(crate) use event;

//! Shared helpers for idem's integration, crash and concurrency tests.

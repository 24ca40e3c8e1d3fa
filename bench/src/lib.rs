//! Benchmarks and peer comparisons for idem (see the binaries and benches).

"""Benchmarking: timers, memory and size measurement, and `benchmark()` itself."""

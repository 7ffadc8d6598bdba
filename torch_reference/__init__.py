"""Independent PyTorch references, used by the tests and the benchmarks (needs the test extra's torch)."""

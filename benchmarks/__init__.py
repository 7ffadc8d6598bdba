"""Benchmarks, one module per `bench.py` subcommand; `gpu.sh` runs the GPU half in one go and
`results/` holds the committed figures that BENCHMARKS.md cites."""

"""The benchmarks: `make bench` runs `python -m bench.run` (see DEVELOPERS.md)."""

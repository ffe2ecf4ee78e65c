"""Benchmarks: `python -m bench <name> [--smoke]`, each printing a table and a final JSON line."""

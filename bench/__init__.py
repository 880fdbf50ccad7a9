"""Benchmarks of wakegate against nginx and a direct connection (issue 7). Run with ``make bench``."""

"""Servers the broker is measured against, each runnable as ``python -m benchmarks.peers.NAME``."""

"""qmailhost's benchmarks (python -m bench.run)."""

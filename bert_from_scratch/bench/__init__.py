"""Benchmarks that print tables (``bert-from-scratch bench ...``): speed lives here, not in timed tests."""

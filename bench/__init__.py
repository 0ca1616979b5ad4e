"""Benchmarks of the order path against plain MySQL and raw Redis (`python -m bench`)."""

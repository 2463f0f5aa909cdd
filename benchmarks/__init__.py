"""Benchmarks: scripts that print figures (``./run bench``); they assert nothing about speed."""

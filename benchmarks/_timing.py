"""Timing helpers shared by the benchmark files."""


def median_seconds(benchmark):
    """Median seconds of a finished benchmark, or None when timing is disabled (--benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.median

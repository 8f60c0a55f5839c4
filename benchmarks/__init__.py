"""Benchmark suite for hubreturns: ``python -m benchmarks.run`` (or ``scripts/bench``).

Never part of the test run (pytest's testpaths is ``tests/``). Every run
measures its own baselines on the same machine, so ratios are comparable
between machines even when absolute figures are not.
"""

__all__: list[str] = []

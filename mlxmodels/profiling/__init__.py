"""Benchmarking (`orchard bench`): timing engines, machine facts, roofline, synthetic models,
the results store and report rendering. The CLI lives in app/bench.py."""

from mlxmodels.profiling.bench import COMPARE, benchmark
from mlxmodels.profiling.engines import Test
from mlxmodels.profiling.runner import make_tests
from mlxmodels.profiling.stats import parse_counts, summarize

__all__ = ["COMPARE", "Test", "benchmark", "make_tests", "parse_counts", "summarize"]

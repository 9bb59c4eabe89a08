"""Summary statistics and the `-p/-g/-d` list syntax.

Every figure is reported as mean ± sample standard deviation with min and max, and the raw samples
are kept, so a reader can judge the spread instead of trusting one number.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

from mlxmodels.errors import OrchardError


def summarize(samples: Iterable[float]) -> dict | None:
    """{"mean", "std", "min", "max"} of the samples; None when there are none (figure not measured).

    `std` is the sample standard deviation (n - 1 in the denominator), 0 for a single sample.
    """
    xs = [float(x) for x in samples if x is not None]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(xs), "max": max(xs)}


def ratio(a: dict | None, b: dict | None) -> float | None:
    """mean(a) / mean(b), or None when either is missing or b is zero."""
    if not a or not b or not b["mean"]:
        return None
    return a["mean"] / b["mean"]


_RANGE = re.compile(r"^(\d+)-(\d+)([+*])(\d+)$")


def parse_counts(text: str, flag: str, minimum: int = 1) -> list[int]:
    """`128,512,2048`, ranges `128-1024*2` (doubling) and `0-4096+1024` (steps) → sorted-as-given ints.

    Each value must be at least `minimum`; errors name the flag and the offending item.
    """
    values: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        m = _RANGE.match(item)
        if m:
            first, last, op, step = int(m[1]), int(m[2]), m[3], int(m[4])
            if last < first or (op == "+" and step < 1) or (op == "*" and step < 2):
                raise OrchardError(f"{flag}: bad range '{item}' (write FIRST-LAST+STEP or FIRST-LAST*FACTOR)")
            if op == "*" and first < 1:
                raise OrchardError(f"{flag}: bad range '{item}' (a *FACTOR range must start at 1 or more)")
            v = first
            while v <= last:
                values.append(v)
                v = v + step if op == "+" else v * step
        elif item.isdigit():
            values.append(int(item))
        else:
            raise OrchardError(f"{flag}: '{item}' is not a number or a range like 128-1024*2")
    for v in values:
        if v < minimum:
            raise OrchardError(f"{flag}: {v} is too small (must be at least {minimum})")
    return values

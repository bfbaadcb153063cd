"""Agreement and drift statistics: Krippendorff's alpha (nominal) per window and a CUSUM alarm on up-rates."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence


def krippendorff_alpha(units: Iterable[Sequence[str]]) -> float | None:
    """Nominal alpha over units (each the labels its raters gave); units with one label are not pairable.

    alpha = 1 - D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's alpha").
    None when fewer than two pairable values exist or all values agree by construction (D_e = 0).
    """
    coincidence: dict[tuple[str, str], float] = defaultdict(float)
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                coincidence[(c, k)] += pairs / (m - 1)
    if not coincidence:
        return None
    n_c: dict[str, float] = defaultdict(float)
    for (c, _k), v in coincidence.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n <= 1:
        return None
    d_o = sum(v for (c, k), v in coincidence.items() if c != k) / n
    d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1.0 - d_o / d_e


def cusum_alarms(series: Sequence[tuple[int, int]], *, warmup: int = 3, k: float = 0.5, h: float = 5.0) -> list[int]:
    """Two-sided CUSUM (Page 1954) on standardised proportions; `series` is (ups, total) per window.

    The reference rate is the pooled rate of the first `warmup` non-empty windows. Returns the indexes of
    windows where an alarm fires (the sums restart after each alarm).
    """
    ref = [(u, n) for u, n in series if n][:warmup]
    if len(ref) < warmup:
        return []
    p0 = sum(u for u, _ in ref) / sum(n for _, n in ref)
    p0 = min(max(p0, 0.01), 0.99)
    hi = lo = 0.0
    alarms = []
    seen = 0
    for i, (u, n) in enumerate(series):
        if not n:
            continue
        seen += 1
        if seen <= warmup:
            continue
        z = (u / n - p0) / math.sqrt(p0 * (1 - p0) / n)
        hi, lo = max(0.0, hi + z - k), max(0.0, lo - z - k)
        if hi > h or lo > h:
            alarms.append(i)
            hi = lo = 0.0
    return alarms


def drift_alarms(up_rates: Sequence[dict[str, Sequence[int]]], apps: Iterable[str] = ()) -> dict[str, list[int]]:
    """Per app (those in `apps` and any with ratings), the indexes of windows where its up-rate's CUSUM alarms;
    `up_rates` holds each settled window's {app: (ups, total)}, oldest first."""
    names = set(apps).union(*(set(u) for u in up_rates)) if up_rates else set(apps)
    return {
        app: cusum_alarms([(ups, total) for u in up_rates for ups, total in [u.get(app, (0, 0))]])
        for app in sorted(names)
    }

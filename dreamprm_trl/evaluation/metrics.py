"""Test-time scaling metrics: unbiased pass@k, reranked pass@1 with bootstrap CIs, and scaling curves.

Pure numpy (no torch, no package imports) so that benchmarks, the ``evaluate`` module and the trainer share one
definition. Inputs are ragged: per problem, the candidates' scores and their pass/fail verdicts.

Conventions:

* **Reranked pass@1** picks the top-scored candidate of each problem. When several candidates share the top score
  (``tie_break="mean"``, the default) the value is the *expected* pass rate over the tied set, i.e. a uniformly
  random pick among them; ``tie_break="first"`` takes the lowest index instead (what a stable sort returns).
* **Mean pass@1** is ``c / n`` per problem: the expected result of picking a candidate at random.
* **pass@k** is the unbiased estimator of Chen et al. (2021); **oracle pass@N** is 1 when any candidate passes.
* Confidence intervals are percentile bootstraps over *problems* (candidates stay grouped with their problem); the
  difference to random is paired, i.e. resampled per problem on ``reranked - mean``. `bootstrap_ci` can also
  resample clusters of problems first (e.g. the training runs whose PRMs scored them).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

PASS_AT_1_RERANK: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pass_at_1_rerank")
"""Folder of the shipped ``evaluate`` metric (module ``pass_at_1_rerank.py`` + card ``README.md``, the layout of a
Hub metric Space): ``evaluate.load(PASS_AT_1_RERANK)`` works offline."""

TIE_BREAKS = ("mean", "first")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` pass: ``1 - C(n-c, k) / C(n, k)``.

    Computed as a running product (no large binomials), so it is exact to float precision for any ``n``.
    """
    n, c, k = int(n), int(c), int(k)
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k} with n={n} samples; request a smaller k.")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _comb_ratio(n: int, r: int, m: int) -> float:
    """``C(r, m) / C(n, m)`` for ``0 <= r <= n`` as a product of ratios (0 when ``r < m``)."""
    if r < m:
        return 0.0
    i = np.arange(m, dtype=np.float64)
    return float(np.prod((r - i) / (n - i)))


def _validate(
    scores: Sequence[Sequence[float]], passed: Sequence[Sequence[bool]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(scores) != len(passed):
        raise ValueError(
            f"scores has {len(scores)} problems but passed has {len(passed)}; pass one list of candidates per problem."
        )
    if len(scores) == 0:
        raise ValueError("No problems given: scores and passed are empty.")
    out = []
    for i, (s, p) in enumerate(zip(scores, passed)):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        p = np.asarray(p, dtype=bool).reshape(-1)
        if s.shape != p.shape:
            raise ValueError(
                f"Problem {i}: {s.size} scores but {p.size} pass/fail verdicts; give one score per candidate."
            )
        if s.size == 0:
            raise ValueError(f"Problem {i} has no candidates; drop it or give it at least one candidate.")
        if np.isnan(s).any():
            raise ValueError(f"Problem {i} has NaN scores ({s.tolist()}); replace them (e.g. with -inf) first.")
        out.append((s, p))
    return out


def per_problem_reranked(
    scores: Sequence[Sequence[float]], passed: Sequence[Sequence[bool]], tie_break: str = "mean"
) -> np.ndarray:
    """Per-problem value of picking the top-scored candidate (see the module docstring for ``tie_break``)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r} is not one of {TIE_BREAKS}.")
    values = []
    for s, p in _validate(scores, passed):
        top = s == s.max()
        values.append(p[top].mean() if tie_break == "mean" else float(p[int(np.argmax(s))]))
    return np.asarray(values, dtype=np.float64)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence[object] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-problem ``values`` (pass a difference for a paired CI).

    ``clusters`` (one hashable label per value, e.g. the training seed that produced it) makes it a two-stage
    bootstrap: resample clusters, then values within each drawn cluster (the mean weighs clusters by size). Use it
    when values share a source of variance that resampling problems does not see: PRMs retrained on another data
    order differ by more than a problem-level CI (`benchmarks/results/correction_tried.md`). It counts the
    within-cluster spread twice, so it is conservative when clusters agree; with few clusters resampling whole
    clusters alone under-covers (9 clusters x 200 values, 200 simulations: 0.92 two-stage, 0.85 clusters only).
    One cluster is a plain bootstrap of its values. The same ``seed`` and inputs give the same resamples, so CIs
    of several methods are comparable.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    if clusters is None:
        means = x[rng.integers(0, x.size, size=(n_bootstrap, x.size))].mean(axis=1)
    else:
        if len(clusters) != x.size:
            raise ValueError(f"clusters has {len(clusters)} labels for {x.size} values; give one label per value.")
        index: dict = {}
        label = np.array([index.setdefault(c, len(index)) for c in clusters])  # any hashable label, tuples too
        groups = [x[label == g] for g in range(len(index))]
        means = np.empty(n_bootstrap)
        for b, drawn in enumerate(rng.integers(0, len(groups), size=(n_bootstrap, len(groups)))):
            means[b] = np.concatenate([groups[g][rng.integers(0, groups[g].size, groups[g].size)]
                                       for g in drawn]).mean()
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def rerank_metrics(
    scores: Sequence[Sequence[float]],
    passed: Sequence[Sequence[bool]],
    ks: Sequence[int] = (1,),
    n_bootstrap: int = 1000,
    seed: int = 0,
    tie_break: str = "mean",
    confidence: float = 0.95,
    per_problem: bool = False,
) -> dict:
    """Reranking quality over problems with candidate groups; all values are means over problems.

    Args:
        scores: per problem, one score per candidate (higher is better).
        passed: per problem, whether each candidate passes the hidden tests.
        ks: ``k`` values for the unbiased ``pass@k`` (every problem needs at least ``max(ks)`` candidates).
        n_bootstrap: problem-level bootstrap resamples for the CIs (0 disables them).
        seed: seed of the bootstrap resampling.
        tie_break: ``"mean"`` (expected value over candidates tied at the top score) or ``"first"``.
        confidence: CI level.
        per_problem: also return per-problem arrays under ``"per_problem"``.

    Returns:
        A flat dict of floats: ``reranked_pass@1`` with ``reranked_pass@1_ci_low/high``, ``mean_pass@1`` (random
        pick) with its CI, ``reranked_minus_random`` with a paired CI, ``pass@k`` for each k, ``oracle_pass@N``,
        ``gap_closed`` (fraction of the random→oracle gap closed; NaN when oracle equals random),
        ``num_problems`` and ``num_candidates``.
    """
    groups = _validate(scores, passed)
    reranked = per_problem_reranked(scores, passed, tie_break)
    random_pick = np.array([p.mean() for _, p in groups])
    oracle = np.array([float(p.any()) for _, p in groups])
    diff = reranked - random_pick
    out: dict = {
        "reranked_pass@1": float(reranked.mean()),
        "mean_pass@1": float(random_pick.mean()),
        "reranked_minus_random": float(diff.mean()),
        "oracle_pass@N": float(oracle.mean()),
    }
    for k in ks:
        k = int(k)
        short = [i for i, (s, _) in enumerate(groups) if s.size < k]
        if short:
            raise ValueError(
                f"pass@{k} needs at least {k} candidates per problem; problems {short[:10]} have fewer. "
                f"Request a smaller k."
            )
        out[f"pass@{k}"] = float(np.mean([pass_at_k(p.size, int(p.sum()), k) for _, p in groups]))
    gap = out["oracle_pass@N"] - out["mean_pass@1"]
    out["gap_closed"] = float(out["reranked_minus_random"] / gap) if gap > 0 else float("nan")
    if n_bootstrap:
        named = (("reranked_pass@1", reranked), ("mean_pass@1", random_pick), ("reranked_minus_random", diff))
        for name, values in named:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(values, n_bootstrap, seed, confidence)
    out["num_problems"] = len(groups)
    out["num_candidates"] = int(sum(s.size for s, _ in groups))
    if per_problem:
        out["per_problem"] = {
            "reranked_pass@1": reranked.tolist(),
            "mean_pass@1": random_pick.tolist(),
            "oracle_pass@N": oracle.tolist(),
        }
    return out


def expected_reranked_at(scores: Sequence[float], passed: Sequence[bool], m: int) -> float:
    """Exact expected reranked pass@1 (``tie_break="mean"``) over all size-``m`` subsets of one problem's pool.

    The top of a random subset lies in score level ``g`` with probability ``[C(n-b, m) - C(n-b-a, m)] / C(n, m)``
    (``b`` candidates score higher, ``a`` tie at ``g``); given that, the tied picks are uniform over level ``g``, so
    the expected pass rate is the level's pass fraction.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(passed, dtype=bool).reshape(-1)
    n = s.size
    if not 1 <= m <= n:
        raise ValueError(f"Subset size m={m} must be between 1 and the pool size {n}.")
    levels, inverse = np.unique(-s, return_inverse=True)  # descending score levels
    sizes = np.bincount(inverse, minlength=levels.size)
    passes = np.bincount(inverse, weights=p.astype(np.float64), minlength=levels.size)
    total, above = 0.0, 0
    for a, c in zip(sizes, passes):
        prob = _comb_ratio(n, n - above, m) - _comb_ratio(n, n - above - a, m)
        total += prob * c / a
        above += a
    return float(total)


def scaling_curve(
    scores: Sequence[Sequence[float]], passed: Sequence[Sequence[bool]], ns: Sequence[int] | None = None
) -> dict:
    """Test-time scaling curve: expected pass@1 against pool size ``N``, computed exactly (no subsampling).

    For each ``N`` the value is the mean over problems of the expectation over all size-``N`` subsets of the
    candidate pool: ``reranked_pass@1`` (top score, ties averaged), ``mean_pass@1`` (random pick, flat in ``N``)
    and ``oracle_pass@N`` (the unbiased pass@N). ``ns`` defaults to 1, 2, 4, ... plus the smallest pool size.
    """
    groups = _validate(scores, passed)
    n_min = min(s.size for s, _ in groups)
    if ns is None:
        ns = sorted({2**i for i in range(n_min.bit_length()) if 2**i <= n_min} | {n_min})
    ns = [int(n) for n in ns]
    if any(n < 1 or n > n_min for n in ns):
        raise ValueError(f"Every N in ns={ns} must be between 1 and the smallest pool size {n_min}.")
    curve: dict = {"n": ns, "reranked_pass@1": [], "mean_pass@1": [], "oracle_pass@N": []}
    for n in ns:
        curve["reranked_pass@1"].append(float(np.mean([expected_reranked_at(s, p, n) for s, p in groups])))
        curve["mean_pass@1"].append(float(np.mean([p.mean() for _, p in groups])))
        curve["oracle_pass@N"].append(float(np.mean([pass_at_k(p.size, int(p.sum()), n) for _, p in groups])))
    return curve


def auroc(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative, ties counted
    one half (Mann-Whitney U over average ranks). NaN when ``truth`` has a single class."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(truth, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores but {y.size} truth values; give one per item.")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    ranks = (first + (counts + 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_agreement(labels: Sequence[float], truth: Sequence[float]) -> dict:
    """How well soft step ``labels`` in [0, 1] match binary ``truth``: ``mae`` (mean absolute error), ``auroc``
    (ranking, `auroc`) and ``wrong_side`` (share of labels on the wrong side of 0.5; 0.5 itself counts wrong)."""
    p = np.asarray(labels, dtype=np.float64).reshape(-1)
    y = np.asarray(truth, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"label_agreement needs as many labels as truth values (>= 1); got {p.size} and {y.size}.")
    wrong = np.where(y > 0.5, p <= 0.5, p >= 0.5)
    return {"mae": float(np.abs(p - y).mean()), "auroc": auroc(p, y > 0.5), "wrong_side": float(wrong.mean()),
            "n": int(p.size)}

"""Metrics: unbiased pass@k, reranked pass@1 with ties, bootstrap CIs, exact scaling curves, the evaluate module."""

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from dreamprm_trl.evaluation.metrics import (
    PASS_AT_1_RERANK,
    auroc,
    bootstrap_ci,
    expected_reranked_at,
    label_agreement,
    pass_at_k,
    per_problem_reranked,
    rerank_metrics,
    scaling_curve,
)


def brute_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (the first c passing) that contain a passing sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def brute_reranked(scores, passed, m):
    """Mean over all m-subsets of the pass rate among the subset's candidates tied at its top score."""
    values = []
    for subset in itertools.combinations(range(len(scores)), m):
        top = max(scores[i] for i in subset)
        tied = [passed[i] for i in subset if scores[i] == top]
        values.append(sum(tied) / len(tied))
    return sum(values) / len(values)


@pytest.mark.parametrize(
    "n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 2), (6, 3, 4), (7, 1, 3), (8, 5, 3), (4, 4, 2), (9, 2, 9)]
)
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    exact = 1 - Fraction(math.comb(150, 50), math.comb(200, 50))
    assert pass_at_k(200, 50, 50) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)
    assert pass_at_k(10_000, 9_999, 2) == 1.0


@pytest.mark.parametrize("args", [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_input(args):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(*args)


def test_rerank_metrics_hand_computed_with_ties():
    scores = [
        [0.9, 0.1, 0.5],  # top passes
        [0.7, 0.7, 0.2, 0.7],  # 3-way tie at top: 1 of 3 passes
        [0.3, 0.8],  # top fails, the other passes
        [0.0, 0.0],  # all fail
    ]
    passed = [
        [True, False, False],
        [True, False, True, False],
        [True, False],
        [False, False],
    ]
    out = rerank_metrics(scores, passed, ks=(1, 2), n_bootstrap=200, per_problem=True)
    assert out["per_problem"]["reranked_pass@1"] == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert out["reranked_pass@1"] == pytest.approx((1 + 1 / 3) / 4)
    assert out["mean_pass@1"] == pytest.approx((1 / 3 + 2 / 4 + 1 / 2 + 0) / 4)
    assert out["pass@1"] == pytest.approx(out["mean_pass@1"])
    pass2 = [brute_pass_at_k(3, 1, 2), brute_pass_at_k(4, 2, 2), 1.0, 0.0]
    assert out["pass@2"] == pytest.approx(np.mean(pass2))
    assert out["oracle_pass@N"] == pytest.approx(0.75)
    assert out["reranked_minus_random"] == pytest.approx(out["reranked_pass@1"] - out["mean_pass@1"])
    gap = 0.75 - out["mean_pass@1"]
    assert out["gap_closed"] == pytest.approx(out["reranked_minus_random"] / gap)
    assert out["num_problems"] == 4 and out["num_candidates"] == 11
    first = per_problem_reranked(scores, passed, tie_break="first")
    assert first.tolist() == [1.0, 1.0, 0.0, 0.0]  # lowest index among the tied wins


def test_ci_contains_point_estimate_and_known_paired_difference():
    rng = np.random.default_rng(1)
    passed = [[bool(i % 2 == 0), bool(i % 2 == 1)] for i in range(40)]
    # The scorer always ranks the passing candidate first: reranked = 1, random = 0.5 on every problem.
    scores = [[float(p[0]), float(p[1])] for p in passed]
    out = rerank_metrics(scores, passed, n_bootstrap=500, seed=3)
    assert out["reranked_pass@1"] == 1.0 and out["mean_pass@1"] == 0.5
    assert out["reranked_minus_random"] == 0.5
    assert (out["reranked_minus_random_ci_low"], out["reranked_minus_random_ci_high"]) == (0.5, 0.5)
    assert out["gap_closed"] == 1.0

    noisy = [list(rng.normal(size=5)) for _ in range(60)]
    verdicts = [list(rng.random(5) < 0.4) for _ in range(60)]
    out = rerank_metrics(noisy, verdicts, n_bootstrap=1000, seed=0)
    for name in ("reranked_pass@1", "mean_pass@1", "reranked_minus_random"):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
        assert out[f"{name}_ci_low"] < out[f"{name}_ci_high"]
    # The random scorer's difference to random pick is not significant.
    assert out["reranked_minus_random_ci_low"] < 0 < out["reranked_minus_random_ci_high"]


def test_bootstrap_ci_hand_computed_cases():
    """Expectations worked out by hand, not by re-running the function's own random draws.

    [0, 0, 0, 1]: a resample's mean is k/4 with k ~ Binomial(4, 1/4): P(k=0) = 0.316 > 0.025, so the 2.5th
    percentile is 0; P(k=4) = 0.0039 < 0.025 < P(k>=3) = 0.051, so the 97.5th is 0.75.
    [0, 1]: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% CI is (0, 1), the 50% CI (0.5, 0.5)
    (P(mean=0) = 0.25 sits exactly on the 25th percentile, so allow the interpolation between 0 and 0.5 there).
    200 values, half 1: the CI of a proportion 0.5 is 0.5 +- 1.96 * sqrt(0.25 / 200) = +-0.069 (normal approx.).
    """
    assert bootstrap_ci([0, 0, 0, 1], 20_000, seed=0) == (0.0, 0.75)
    assert bootstrap_ci([0, 1], 20_000, seed=1) == (0.0, 1.0)
    low, high = bootstrap_ci([0, 1], 20_000, seed=2, confidence=0.5)
    assert 0.0 <= low <= 0.5 and high == 0.5
    low, high = bootstrap_ci([0, 1] * 100, 20_000, seed=3)
    assert low == pytest.approx(0.5 - 0.069, abs=0.01) and high == pytest.approx(0.5 + 0.069, abs=0.01)
    assert bootstrap_ci([0.25] * 9, 50) == (0.25, 0.25)  # no spread, no interval
    assert bootstrap_ci([0, 1, 1, 0, 1], 300, seed=7) == bootstrap_ci([0, 1, 1, 0, 1], 300, seed=7)  # reproducible


def test_bootstrap_ci_clusters_resample_whole_groups():
    """Two clusters, constant within: a two-stage resample draws cluster 0 twice, 1 twice or one of each (means 0,
    1, 0.5 with probabilities 1/4, 1/4, 1/2), so the 95% CI is (0, 1). Resampling the 100 values alone sees no
    cluster and gives 0.5 +- 1.96 * sqrt(0.25 / 100) = +-0.098."""
    values, clusters = [0.0] * 50 + [1.0] * 50, ["s0"] * 50 + ["s1"] * 50
    assert bootstrap_ci(values, 4000, seed=0, clusters=clusters) == (0.0, 1.0)
    low, high = bootstrap_ci(values, 4000, seed=0)
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    # Within-cluster spread still counts: one cluster of 0/1 values is a plain bootstrap of those values.
    low, high = bootstrap_ci([0, 1] * 100, 20_000, seed=3, clusters=[7] * 200)
    assert low == pytest.approx(0.5 - 0.069, abs=0.01) and high == pytest.approx(0.5 + 0.069, abs=0.01)
    # Unequal sizes: 10 zeros and 30 ones draw AA, BB or AB (means 0, 1, 30/40 = 0.75 weighted by size, with
    # probabilities 1/4, 1/4, 1/2): the 30th and 70th percentiles are both 0.75 (an unweighted mean of cluster
    # means would give 0.5, resampling the pooled drawn values would spread around 0.75). Tuple labels work.
    values, clusters = [0.0] * 10 + [1.0] * 30, [(8, 0)] * 10 + [(8, 1)] * 30
    assert bootstrap_ci(values, 20_000, seed=0, clusters=clusters, confidence=0.4) == (0.75, 0.75)
    with pytest.raises(ValueError, match="one label per value"):
        bootstrap_ci([0, 1, 1], clusters=["a", "b"])


def test_auroc_and_label_agreement_hand_computed():
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5  # all tied: half credit
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auroc([0.2, 0.3], [1, 1]))
    q = label_agreement([0.2, 0.9, 0.5, 0.6], [0, 1, 1, 0])
    assert q["mae"] == pytest.approx((0.2 + 0.1 + 0.5 + 0.6) / 4)
    assert q["wrong_side"] == 0.5  # 0.5 on a positive and 0.6 on a negative
    assert q["auroc"] == 0.75  # positives 0.9, 0.5 vs negatives 0.2, 0.6: 3 of 4 pairs
    with pytest.raises(ValueError, match="as many labels"):
        label_agreement([0.1], [0, 1])


@pytest.mark.parametrize(
    "scores,passed",
    [
        ([0.9, 0.1, 0.5, 0.5, 0.3], [False, True, True, False, True]),
        ([1.0, 1.0, 1.0, 0.2, 0.2, 0.7], [True, False, False, True, True, False]),
        ([0.4, 0.3, 0.2, 0.1], [False, False, False, True]),
    ],
)
def test_expected_reranked_at_matches_subset_enumeration(scores, passed):
    for m in range(1, len(scores) + 1):
        assert expected_reranked_at(scores, passed, m) == pytest.approx(brute_reranked(scores, passed, m), abs=1e-12)


def test_scaling_curve_endpoints_and_defaults():
    rng = np.random.default_rng(5)
    scores = [list(rng.integers(0, 3, size=10).astype(float)) for _ in range(12)]  # many ties
    passed = [list(rng.random(10) < 0.3) for _ in range(12)]
    curve = scaling_curve(scores, passed)
    assert curve["n"] == [1, 2, 4, 8, 10]
    full = rerank_metrics(scores, passed, ks=(1, 4), n_bootstrap=0)
    assert curve["reranked_pass@1"][0] == pytest.approx(full["mean_pass@1"])  # N=1 is random pick
    assert curve["reranked_pass@1"][-1] == pytest.approx(full["reranked_pass@1"])  # N=pool is plain reranking
    assert curve["oracle_pass@N"][2] == pytest.approx(full["pass@4"])
    assert curve["oracle_pass@N"][-1] == pytest.approx(full["oracle_pass@N"])
    assert curve["mean_pass@1"] == [pytest.approx(full["mean_pass@1"])] * 5
    assert scaling_curve([[0.1, 0.2, 0.3]], [[1, 0, 0]])["n"] == [1, 2, 3]


@pytest.mark.parametrize(
    "scores,passed,kwargs,match",
    [
        ([[0.1]], [[True], [False]], {}, "2 problems|1 problems"),
        ([[0.1, 0.2]], [[True]], {}, "Problem 0"),
        ([[]], [[]], {}, "no candidates"),
        ([[0.1, float("nan")]], [[True, False]], {}, "NaN"),
        ([[0.1, 0.2], [0.3]], [[True, False], [False]], {"ks": (2,)}, r"pass@2 .*problems \[1\]"),
        ([[0.1]], [[True]], {"tie_break": "max"}, "tie_break"),
        ([], [], {}, "No problems"),
    ],
)
def test_rerank_metrics_rejects_bad_input(scores, passed, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rerank_metrics(scores, passed, **kwargs)


def test_evaluate_module_loads_offline_and_matches_function(tmp_path):
    scores = [[0.9, 0.1, 0.5], [0.7, 0.7, 0.2, 0.7], [0.3, 0.8]]
    passed = [[True, False, False], [True, False, True, False], [True, False]]
    script = (
        "import json, sys, evaluate\n"
        "from dreamprm_trl.evaluation.metrics import PASS_AT_1_RERANK\n"
        "scores, passed = json.loads(sys.argv[1])\n"
        "metric = evaluate.load(PASS_AT_1_RERANK)\n"
        "print(json.dumps(metric.compute(predictions=scores, references=passed, ks=[1, 2], n_bootstrap=100, seed=4)))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # any network attempt fails fast
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([scores, passed])],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(rerank_metrics(scores, passed, ks=(1, 2), n_bootstrap=100, seed=4))
    assert got["reranked_pass@1"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    module = os.path.join(PASS_AT_1_RERANK, "pass_at_1_rerank.py")  # evaluate needs folder name == module name
    assert os.path.basename(PASS_AT_1_RERANK) == "pass_at_1_rerank" and os.path.isfile(module)
    assert "def rerank_metrics" not in open(module).read()
    assert open(os.path.join(PASS_AT_1_RERANK, "README.md")).read().startswith("---\ntitle: pass_at_1_rerank")

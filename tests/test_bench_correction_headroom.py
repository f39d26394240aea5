"""`benchmarks/bench_correction_headroom.py`'s label sets and meta-signal measures on a hand-built case."""

import importlib.util
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location("bench_correction_headroom",
                                                      os.path.join(BENCHMARKS, "bench_correction_headroom.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(BENCHMARKS)


# row A fails (truth 1, 1, 0 | final 0); row B passes. Non-final labels, in order:
#   A0 noisy 0, truth 1, PRM 0.8: wrong, the PRM resists it   A1 correct   A2 noisy 1, truth 0, PRM 0.7: fooled
#   B0 noisy 0, truth 1, PRM 0.05: fooled                      B1 correct
ROWS = [{"truth": [1.0, 1.0, 0.0, 0.0]}, {"truth": [1.0, 1.0, 1.0]}]
NOISY = [[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
PREDS = [[0.8, 0.9, 0.7, 0.1], [0.05, 0.9, 0.95]]


def test_oracle_label_sets_fix_exactly_the_chosen_labels(bench):
    sets = bench.oracle_labels(ROWS, NOISY, PREDS, seed=0)
    assert sets["resisted"] == [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    assert sets["fooled"] == [[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert sets["random_100"] == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert sets["passing_prefixes"] == [[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]  # only the passing row moves
    for small, large in (("random_25", "random_50"), ("random_50", "random_100")):  # nested fixes
        for s_row, l_row, n_row in zip(sets[small], sets[large], NOISY):
            assert all(s == n or s == ll for s, ll, n in zip(s_row, l_row, n_row))


def test_meta_signal_measures_on_a_hand_computed_case(bench):
    # score shifts (final entries ignored); centred over the 5 labels (mean 0.2): -0.2, 0.3, -1.2 | 0.8, 0.3, so the
    # step moves A2 (label 1) down and B0 (label 0) up: away from the label exactly on the two fooled labels
    shift = [[0.0, 0.5, -1.0, 9.0], [1.0, 0.5, 9.0]]
    s = bench.meta_signal(ROWS, NOISY, PREDS, shift)
    assert s["labels"] == 5
    assert (s["wrong"], s["fooled"], s["resisted"]) == pytest.approx((0.6, 0.4, 0.2))
    assert s["auroc_meta_fooled"] == pytest.approx(1.0)
    assert s["auroc_doubt_fooled"] == pytest.approx(0.5)  # doubt -0.2 (A2) ranks first, -0.45 (B0) last
    assert s["precision_meta_top10"] == pytest.approx(1.0)
    assert s["auroc_meta_wrong"] == pytest.approx(1.0)
    assert s["auroc_disagreement_wrong"] == pytest.approx(4 / 6)

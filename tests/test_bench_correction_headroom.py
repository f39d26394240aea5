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


def test_random_fixes_are_nested_and_of_the_stated_share(bench):
    rows = [{"truth": [1.0] * 20 + [0.0]} for _ in range(40)]  # 800 wrong-side labels (noisy 0, truth 1)
    noisy = [[0.0] * 21 for _ in rows]
    sets = bench.oracle_labels(rows, noisy, [[0.5] * 21 for _ in rows], seed=3)
    fixed = {q: [(i, k) for i, row in enumerate(sets[f"random_{q}"]) for k, v in enumerate(row) if v == 1.0]
             for q in (25, 50, 100)}
    assert len(fixed[100]) == 800
    # binomial sd of a share of 800 draws is <= 0.018: 0.06 is over 3 sd
    assert abs(len(fixed[25]) / 800 - 0.25) < 0.06 and abs(len(fixed[50]) / 800 - 0.5) < 0.06
    assert set(fixed[25]) <= set(fixed[50]) <= set(fixed[100])


def test_meta_score_shift_is_a_step_down_the_meta_loss(bench, tmp_path):
    # to first order the step changes the meta loss (BCE of each program's last score) by
    # sum_j (p_j - y_j) / n * shift_j (here -0.57 against float noise ~1e-4); and on average it raises passing
    # programs' scores more than failing ones'
    from bench_correction import step_predictions, synthetic_task, train

    task = synthetic_task("flip:0.3", 0, n_problems=24, n_eval=2, vocabulary="hidden", hidden_size=4)
    trainer = train(task, [r["mc_labels"] for r in task["train"]], "none", 8, 10, 0, str(tmp_path))
    meta = task["meta"]
    last = [row[-1] for row in bench.meta_score_shift(trainer, meta)]
    score = [row[-1] for row in step_predictions(trainer.model, meta)]
    first_order = sum((p - m["passed"]) * d for p, m, d in zip(score, meta, last))
    assert first_order < 0
    passed = [d for d, m in zip(last, meta) if m["passed"]]
    failed = [d for d, m in zip(last, meta) if not m["passed"]]
    assert passed and failed and sum(passed) / len(passed) > sum(failed) / len(failed)


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


def test_inner_hvp_matches_double_backward(bench, tmp_path):
    import torch
    from bench_correction import synthetic_task, train
    from dreamprm_trl.training.meta_methods import weighted_step_loss
    from dreamprm_trl.training.meta_step import MODEL_INPUTS

    task = synthetic_task("flip:0.3", 0, n_problems=24, n_eval=2, vocabulary="hidden", hidden_size=4)
    trainer = train(task, [r["mc_labels"] for r in task["train"]], "none", 8, 10, 0, str(tmp_path))
    model, args = trainer.model.eval(), trainer.args
    params = [p for p in model.parameters() if p.requires_grad]
    u = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    batch = trainer._prepare_inputs(trainer.data_collator(list(trainer.train_dataset)))
    logits = model(**{k: batch[k] for k in MODEL_INPUTS}).step_logits.float()
    per, mask = weighted_step_loss(logits, batch["step_labels"], None, args.loss_type, args.label_smoothing)
    grads = torch.autograd.grad(per.sum() / mask.sum(), params, create_graph=True)
    exact = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, u)), params)
    approx = bench.inner_hvp(trainer, params)(u)
    exact, approx = torch.cat([t.flatten() for t in exact]), torch.cat([t.flatten() for t in approx])
    # measured relative error 1.3e-4 (central differences, float32); a wrong scale or sign is off by >= 1
    assert torch.linalg.norm(approx - exact) / torch.linalg.norm(exact) < 1e-2


def test_paired_difference_is_first_minus_other_over_every_problem(bench):
    from bench_correction import paired_difference

    group = [{"seed": 0, "pass_a": [1.0, 1.0], "pass_b": [0.0, 1.0]},
             {"seed": 1, "pass_a": [0.0, 0.5], "pass_b": [0.0, 0.5]}]
    mean, (low, high) = paired_difference(group, "a", "b")
    assert mean == pytest.approx(0.25)  # differences 1, 0 | 0, 0
    # seed 1 drawn twice (probability 1/4) gives 0, so the 2.5th percentile is 0; nothing exceeds 1 or falls below 0
    assert low == 0.0 and 0.25 <= high <= 1.0
    assert paired_difference(group, "b", "a")[0] == pytest.approx(-0.25)

"""The embedded default, reduced to a few problems: every table row is computed, consistent and reproducible."""

import json

import pytest

from dreamprm_trl import FunctionStepPRM, FunctionStepPRMConfig
from dreamprm_trl.experiment import (
    DEMO_TRAINING_DEFAULTS,
    VARIANTS,
    ExperimentArguments,
    format_table,
    run_experiment,
    score_groups,
    split_problems,
)
from dreamprm_trl.labeling import load_candidates
from dreamprm_trl.metrics import per_problem_reranked
from dreamprm_trl.tasks import load_bundled_humaneval_reference_labels, load_humaneval

ROW_ORDER = ["random", "orm", "line", "function", "reweighting", "dreamprm", "public_random", "public_dreamprm",
             "oracle"]


def test_split_is_by_problem_deterministic_and_disjoint():
    ids = [f"T/{i}" for i in range(50)]
    train, held = split_problems(ids, 0.4, seed=0)
    assert len(held) == 20 and not set(train) & set(held) and set(train) | set(held) == set(ids)
    assert split_problems(ids, 0.4, seed=0) == (train, held)
    assert split_problems(ids, 0.4, seed=1)[1] != held
    with pytest.raises(ValueError, match="eval_fraction"):
        split_problems(ids, 1.0, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    args = ExperimentArguments(
        max_problems=14, num_candidates=4, pool_size=6, rollouts=2, line_rollouts=1, line_trajectories=2,
        tiny_hidden_size=32, tiny_vocab_size=400, n_bootstrap=200,
        cache_dir=str(tmp / "cache"), results_dir=str(tmp / "results"),
    )
    defaults = {**DEMO_TRAINING_DEFAULTS, "output_dir": str(tmp / "model"), "num_train_epochs": 1,
                "max_length": 512, "disable_tqdm": True, "logging_steps": 1000}
    config = FunctionStepPRMConfig(**defaults)
    return run_experiment(args, config), args, config, tmp


def test_reduced_demo_table(demo):
    out, args, _, tmp = demo
    assert [r["key"] for r in out["table"]] == ROW_ORDER
    rows = {r["key"]: r for r in out["table"]}
    ev = out["eval"]
    assert len(ev["task_ids"]) == out["setup"]["num_eval_problems"] == 6

    # Random pick and oracle follow from the executor's own verdicts, which agree with the shipped reference
    # labels on these problems.
    reference = load_bundled_humaneval_reference_labels(args.num_candidates)
    assert ev["passed"] == [reference[t] for t in ev["task_ids"]]
    mean = sum(sum(p) / len(p) for p in ev["passed"]) / len(ev["passed"])
    oracle = sum(any(p) for p in ev["passed"]) / len(ev["passed"])
    assert rows["random"]["value"] == pytest.approx(mean)
    assert rows["oracle"]["value"] == pytest.approx(oracle)

    # Every ranking row is the reranked pass@1 of the scores it reports, and lies between worst and oracle.
    worst = sum(min(p) for p in ev["passed"]) / len(ev["passed"])
    for key in ROW_ORDER[1:-1]:
        expected = per_problem_reranked(ev["rankings"][key], ev["passed"]).mean()
        assert rows[key]["value"] == pytest.approx(expected), key
        assert worst - 1e-9 <= rows[key]["value"] <= oracle + 1e-9, key
        lo, hi = rows[key]["ci"]
        assert lo <= rows[key]["value"] <= hi

    # The hybrid never ranks a candidate failing the public examples above one passing them.
    for values, public in zip(ev["rankings"]["public_dreamprm"], ev["public_pass"]):
        passing = [v for v, p in zip(values, public) if p is True]
        failing = [v for v, p in zip(values, public) if p is False]
        if passing and failing:
            assert min(passing) > max(failing)

    md = (tmp / "results" / "results.md").read_text()
    for key in ROW_ORDER[1:-1]:
        label = next(r["label"] for r in out["table"] if r["key"] == key)
        assert label in md
    assert json.loads((tmp / "results" / "results.json").read_text())["table"][0]["key"] == "random"
    assert format_table(out["table"]).count("\n") >= len(ROW_ORDER) + 1


def test_reduced_demo_saves_the_main_model(demo):
    """The saved DreamPRM-Code model reloads and scores the held-out candidates exactly as in the table."""
    out, args, config, _ = demo
    prm = FunctionStepPRM.from_pretrained(config.output_dir)
    problems = {p.task_id: p for p in load_humaneval()}
    tasks = out["eval"]["task_ids"][:2]
    pool = load_candidates("humaneval", [problems[t] for t in tasks])
    groups = [pool[t][: args.num_candidates] for t in tasks]
    scores = score_groups(prm, [problems[t] for t in tasks], groups, VARIANTS["dreamprm"].splitter,
                          config.score_aggregation, batch_size=4)
    for got, want in zip(scores, out["eval"]["rankings"]["dreamprm"][:2]):
        assert got == pytest.approx(want, abs=1e-5)

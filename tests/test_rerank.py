"""Reranking: PRM ordering, stable ties, the public-test hybrid with real executed programs, the file API."""

import json
import math
import re
from dataclasses import dataclass

import pytest

from dreamprm_trl.sandbox import SandboxedExecutor, TestSuite
from dreamprm_trl.evaluation.metrics import rerank_metrics
from dreamprm_trl.evaluation.rerank import (
    best_of_n,
    load_prm,
    ranking_values,
    record_splitter,
    rerank,
    rerank_file,
    rerank_many,
    saved_splitter,
)
from dreamprm_trl.steps import split_steps
from dreamprm_trl.problems import Problem


@dataclass
class FakeScores:
    steps: list
    scores: list

    def aggregate(self, how=None):
        how = how or "min"
        if how == "min":
            return min(self.scores) if self.scores else float("nan")
        if how == "mean":
            return sum(self.scores) / len(self.scores) if self.scores else float("nan")
        raise ValueError(f"Unknown aggregation {how!r}")


class FakePRM:
    """Reads each step's score from a ``# s=0.7`` comment; one step per blank-line separated block."""

    def __init__(self):
        self.calls = []

    def score_batch(self, pairs, batch_size=8, progress=True, **kwargs):
        self.calls.append((list(pairs), batch_size, kwargs))
        out = []
        for _, code in pairs:
            steps = [b for b in code.split("\n\n") if b.strip()]
            out.append(FakeScores(steps, [float(re.search(r"# s=([\d.]+)", s).group(1)) for s in steps]))
        return out


def prog(body: str, *scores: float) -> str:
    """A program whose blocks carry the given fake step scores; ``body`` is its real code."""
    blocks = [f"{body}  # s={scores[0]}"] + [f"X{i} = {i}  # s={s}" for i, s in enumerate(scores[1:])]
    return "\n\n".join(blocks) + "\n"


ADD_OK = "def add(a, b):\n    return a + b"
ADD_BAD = "def add(a, b):\n    return a - b"
ADD_CRASH = "def add(a, b):\n    raise RuntimeError('boom')"
ADD_LOOP = "def add(a, b):\n    while True:\n        pass"
EXECUTOR = SandboxedExecutor(timeout=10.0, progress=False)  # generous: the 2 shared cores can be very busy
PUBLIC = TestSuite.asserts(["assert add(1, 2) == 3", "assert add(0, 0) == 0"])


def test_rerank_orders_by_aggregated_step_scores():
    prm = FakePRM()
    cands = [prog("A = 1", 0.9, 0.2), prog("B = 1", 0.5, 0.6), prog("C = 1", 0.7, 0.65)]
    ranked = rerank(prm, "the prompt", cands, batch_size=3)
    assert [r.index for r in ranked] == [2, 1, 0]  # min: 0.65, 0.5, 0.2
    assert [r.score for r in ranked] == [0.65, 0.5, 0.2]
    assert ranked[0].step_scores == [0.7, 0.65] and ranked[0].code == cands[2] and len(ranked[0].steps) == 2
    assert all(r.public_pass is None for r in ranked)
    assert prm.calls[0][0][0] == ("the prompt", cands[0]) and prm.calls[0][1] == 3
    by_mean = rerank(prm, "the prompt", cands, aggregation="mean")
    assert [r.index for r in by_mean] == [2, 0, 1]  # mean: 0.675, 0.55, 0.55 -> tie keeps input order
    assert best_of_n(prm, "p", cands).index == 2
    with pytest.raises(ValueError, match="Unknown aggregation"):
        rerank(prm, "p", cands, aggregation="max")


def test_ties_are_stable_and_nan_scores_rank_last():
    prm = FakePRM()
    cands = ["", prog("A = 1", 0.4), prog("B = 1", 0.8), prog("C = 1", 0.4), prog("D = 1", 0.8)]
    ranked = rerank(prm, "p", cands)
    assert [r.index for r in ranked] == [2, 4, 1, 3, 0]
    assert math.isnan(ranked[-1].score)
    assert ranking_values(ranked) == [-2.0, -1.0, 0.0, -1.0, 0.0]  # ties stay ties (for metrics)


def test_prompt_comes_from_problem_and_splitter_is_forwarded():
    prm = FakePRM()
    problem = Problem(task_id="t/0", prompt="Add two numbers.", entry_point="add")
    rerank(prm, problem, [prog(ADD_OK, 0.5)], splitter=str.splitlines)
    pairs, _, kwargs = prm.calls[-1]
    assert pairs[0][0] == "Add two numbers." and kwargs == {"splitter": str.splitlines}
    with pytest.raises(TypeError, match="prompt"):
        rerank(prm, object(), ["x = 1"])
    no_examples = rerank(prm, problem, [prog(ADD_BAD, 0.5), prog(ADD_OK, 0.7)], public_tests=True)
    assert [(r.index, r.public_pass) for r in no_examples] == [(1, None), (0, None)]  # nothing to filter with
    with pytest.raises(TypeError, match="public_tests must be"):
        rerank(prm, problem, [prog(ADD_OK, 0.5)], public_tests="yes")
    with pytest.raises(ValueError, match="at least one candidate"):
        best_of_n(prm, problem, [])


def test_hybrid_ranking_runs_public_tests_for_real():
    prm = FakePRM()
    problem = Problem(task_id="t/1", prompt="Add.", entry_point="add", public_tests=PUBLIC)
    cands = [
        prog(ADD_BAD, 0.95),  # fails public tests, PRM's favourite
        prog(ADD_OK, 0.30),
        prog(ADD_CRASH, 0.90),
        prog(ADD_OK, 0.60),
        prog(ADD_BAD.replace("-", "*"), 0.99),
    ]
    executor = EXECUTOR
    ranked = rerank(prm, problem, cands, public_tests=True, executor=executor)
    assert [r.index for r in ranked] == [3, 1, 4, 0, 2]
    assert [r.public_pass for r in ranked] == [True, True, False, False, False]
    pure = rerank(prm, problem, cands)  # the pure PRM ranking stays available
    assert [r.index for r in pure] == [4, 0, 2, 3, 1]
    explicit = rerank(prm, "Add.", cands, public_tests=PUBLIC, executor=executor)
    assert [r.index for r in explicit] == [3, 1, 4, 0, 2]


def test_rerank_many_matches_per_problem_and_feeds_metrics():
    prm = FakePRM()
    p1 = Problem(task_id="a", prompt="Add.", public_tests=PUBLIC)
    p2 = Problem(task_id="b", prompt="Other.")
    c1 = [prog(ADD_BAD, 0.9), prog(ADD_OK, 0.2), prog(ADD_OK, 0.2)]
    c2 = [prog("y = 2", 0.1), prog("y = 3", 0.3)]
    suites = [PUBLIC, None]
    executor = EXECUTOR
    many = rerank_many(prm, [p1, p2], [c1, c2], public_tests=suites, executor=executor, progress=False)
    assert len(prm.calls) == 1 and len(prm.calls[0][0]) == 5  # one scoring pass for all candidates
    assert [r.index for r in many[0]] == [1, 2, 0] and [r.index for r in many[1]] == [1, 0]
    assert many[1][0].public_pass is None
    hidden = [[False, True, True], [False, True]]
    hybrid = rerank_metrics([ranking_values(g) for g in many], hidden, n_bootstrap=0)
    pure = rerank_metrics([[0.9, 0.2, 0.2], [0.1, 0.3]], hidden, n_bootstrap=0)
    assert hybrid["reranked_pass@1"] == 1.0 and pure["reranked_pass@1"] == 0.5
    with pytest.raises(ValueError, match="one list per problem"):
        rerank_many(prm, [p1, p2], [c1])


def test_rerank_file_writes_ranked_rows_and_metrics(tmp_path):
    problems = [
        Problem(task_id="x/0", prompt="def add(a, b):\n", starter_code="def add(a, b):\n", entry_point="add",
                public_tests=PUBLIC),
        Problem(task_id="x/1", prompt="Say hi.", entry_point="hi"),
    ]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p.to_row()) + "\n" for p in problems))
    rows = [
        {"task_id": "x/0", "completion": "    return a - b  # s=0.9\n", "passed": False, "sample_idx": 0},
        {"task_id": "x/0", "completion": "    return a + b  # s=0.4\n", "passed": True, "sample_idx": 1},
        {"task_id": "x/1", "code": "def hi():\n    return 'hi'  # s=0.2\n", "passed": True, "sample_idx": 0},
        {"task_id": "x/1", "code": "def hi():\n    return 'ho'  # s=0.7\n", "passed": False, "sample_idx": 1},
    ]
    (tmp_path / "cands.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "ranked.jsonl"
    summary = rerank_file(FakePRM(), str(tmp_path / "problems.jsonl"), str(tmp_path / "cands.jsonl"), str(out),
                          progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["sample_idx"], r["rank"]) for r in written] == [
        ("x/0", 0, 0), ("x/0", 1, 1), ("x/1", 1, 0), ("x/1", 0, 1)
    ]
    assert written[1]["code"] == "def add(a, b):\n    return a + b  # s=0.4\n"  # starter_code + completion
    assert written[0]["score"] == 0.9 and written[0]["public_pass"] is None
    assert summary["num_problems"] == 2 and summary["num_candidates"] == 4
    assert summary["metrics"]["reranked_pass@1"] == 0.0 and summary["metrics"]["oracle_pass@N"] == 1.0

    hybrid = rerank_file(FakePRM(), problems, str(tmp_path / "cands.jsonl"), str(out), public_tests=True,
                         executor=EXECUTOR, progress=False)
    assert hybrid["metrics"]["reranked_pass@1"] == 0.5  # x/0 fixed by its public tests; x/1 has none
    assert [json.loads(line)["public_pass"] for line in out.read_text().splitlines()] == [True, False, None, None]

    (tmp_path / "bad.jsonl").write_text(json.dumps({"task_id": "nope", "code": "x"}) + "\n")
    with pytest.raises(ValueError, match="'nope' is not in the problems file"):
        rerank_file(FakePRM(), problems, str(tmp_path / "bad.jsonl"), str(out), progress=False)


@pytest.fixture(scope="module")
def trained_prm(tmp_path_factory):
    """A tiny PRM trained on the learnable task of tests/learnable_task.py (correctness = one operator)."""
    pytest.importorskip("torch")
    import learnable_task

    return learnable_task.train_prm(str(tmp_path_factory.mktemp("trained")), "none")


def test_rerank_with_a_trained_prm_puts_correct_programs_first(trained_prm):
    """Random pick scores 0.25 on these groups by construction; the trained PRM's top pick must be the one
    correct program in at least 80% of them."""
    import learnable_task

    groups, passed = learnable_task.eval_groups(seed=5, n_groups=20)
    many = rerank_many(trained_prm, ["Write the functions."] * len(groups), groups, progress=False)
    top_correct = [ok[ranked[0].index] for ranked, ok in zip(many, passed)]
    assert sum(top_correct) >= 0.8 * len(groups), top_correct
    for ranked, group in zip(many, groups):
        assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
        assert ["".join(r.steps) for r in ranked] == [group[r.index] for r in ranked]


def test_rerank_defaults_to_the_saved_aggregation_and_splitter(trained_prm, tmp_path):
    import learnable_task

    groups, passed = learnable_task.eval_groups(seed=6, n_groups=2)
    prm = trained_prm
    old = prm.prm_config.aggregation
    try:
        prm.prm_config.aggregation = "mean"
        prm.prm_config.step_splitter = "line"  # one step per logical line: 2 per function
        ranked = rerank(prm, "Write the functions.", groups[0])
        for r in ranked:
            assert len(r.steps) == 2 * groups[0][r.index].count("def ")
            assert r.score == pytest.approx(sum(r.step_scores) / len(r.step_scores), abs=1e-6)
        prm.save_pretrained(str(tmp_path / "prm"))
    finally:
        prm.prm_config.aggregation = old
        prm.prm_config.step_splitter = "function"
    record_splitter(str(tmp_path / "prm"), "line")
    assert saved_splitter(prm) is split_steps  # the in-memory model is back to function-as-step
    problems = [Problem(task_id="t", prompt="Write the functions.")]
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"task_id": "t", "code": c, "passed": p}) + "\n" for c, p in zip(groups[0], passed[0])))
    summary = rerank_file(str(tmp_path / "prm"), problems, str(tmp_path / "c.jsonl"), str(tmp_path / "o.jsonl"),
                          progress=False)
    written = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    for w in written:
        assert len(w["step_scores"]) == 2 * w["code"].count("def ")  # the saved line splitter
        assert w["score"] == pytest.approx(sum(w["step_scores"]) / len(w["step_scores"]), abs=1e-6)  # saved mean
    assert summary["metrics"]["oracle_pass@N"] == 1.0
    assert load_prm(str(tmp_path / "prm")).prm_config.step_splitter == "line"
    with pytest.raises(ValueError, match="Unknown step splitter"):
        record_splitter(str(tmp_path / "prm"), "words")

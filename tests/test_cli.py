"""The ``dreamprm-code`` command line on bad input: one line naming the file, row or flag and the fix, exit code 2,
no traceback, and nothing on disk lost; NaN scores as JSON null."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamprm_trl.cli import main
from dreamprm_trl.sandbox import TestSuite
from dreamprm_trl.evaluation.rerank import rerank_file
from dreamprm_trl.problems import Problem

ADD = Problem("add", "Add two numbers.", tests=TestSuite.asserts(["assert add(1, 2) == 3"]), entry_point="add")
GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a - b\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", [ADD.to_row()])
    cands = write_jsonl(tmp_path / "cands.jsonl", [{"task_id": "add", "code": GOOD, "passed": True},
                                                   {"task_id": "add", "code": BAD, "passed": False}])
    return tmp_path, problems, cands


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``dreamprm-code argv``, run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


def label_final(problems, cands, out, *extra):
    return ("label", "final", "--problems", str(problems), "--candidates", str(cands), "--output_dir", str(out),
            "--no_progress", "--allow_code_execution", *extra)


# ------------------------------------------------------------------------------------------------ one-line errors
def test_missing_file_names_the_flag_and_the_path(capsys, files):
    tmp, problems, cands = files
    code, err = run(capsys, *label_final(tmp / "nope.jsonl", cands, tmp / "out"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith("dreamprm-code label final: error: --problems:") and "nope.jsonl" in err[0]
    code, err = run(capsys, *label_final(problems, tmp / "missing.jsonl", tmp / "out"))
    assert code == 2 and err == [f"dreamprm-code label final: error: --candidates: no such data file: "
                                 f"{tmp / 'missing.jsonl'}"]
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("argv, names", [
    (("--shard", "3/2"), "argument --shard: Shard index must satisfy 0 <= i < n, got 3/2."),
    (("--workers", "0"), "argument --workers: expected a positive int, got '0'"),
    (("--timeout", "soon"), "argument --timeout: expected a positive float, got 'soon'"),
    (("--max_code_chars", "-1"), "argument --max_code_chars: expected a positive int, got '-1'"),
])
def test_bad_flag_values_are_one_line_naming_the_flag(capsys, files, argv, names):
    tmp, problems, cands = files
    code, err = run(capsys, *label_final(problems, cands, tmp / "out", *argv))
    assert code == 2 and err == [f"dreamprm-code label final: error: {names} (see dreamprm-code label final --help)"]


def test_generator_without_model_names_both_flags(capsys, files):
    tmp, problems, cands = files
    code, err = run(capsys, "label", "steps", "--problems", str(problems), "--candidates", str(cands),
                    "--output_dir", str(tmp / "out"), "--generator", "openai", "--allow_code_execution")
    assert code == 2 and err == ["dreamprm-code label steps: error: --generator openai needs --model (the served "
                                 "model name or a local path)"]


def test_malformed_rows_name_the_file_and_line(capsys, files):
    tmp, problems, _ = files
    rows = tmp / "rows.jsonl"
    rows.write_text(json.dumps({"task_id": "add", "code": GOOD}) + "\n\n{not json\n")
    code, err = run(capsys, *label_final(problems, rows, tmp / "out"))
    assert code == 2 and len(err) == 1 and f"--candidates: {rows} line 3: not valid JSON" in err[0]
    bad_problems = write_jsonl(tmp / "bad_problems.jsonl", [ADD.to_row(), {"task_id": "sub"}])
    code, err = run(capsys, *label_final(bad_problems, rows, tmp / "out"))
    assert code == 2 and err == [f"dreamprm-code label final: error: --problems: {bad_problems} row 1 "
                                 "(task_id='sub'): missing field 'prompt'; fix that row (fields of Problem.to_row())."]
    write_jsonl(rows, [{"task_id": "add", "code": 7}])
    code, err = run(capsys, *label_final(problems, rows, tmp / "out"))
    assert code == 2 and err == [f"dreamprm-code label final: error: --candidates: {rows} row 1: 'code' must be a "
                                 "string, got int 7; fix that row."]


def test_opt_in_error_names_the_flag_and_runs_nothing(capsys, files, monkeypatch):
    tmp, problems, cands = files
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    argv = [a for a in label_final(problems, cands, tmp / "out") if a != "--allow_code_execution"]
    code, err = run(capsys, *argv)
    assert code == 2 and len(err) == 1 and "pass --allow_code_execution (or set HF_ALLOW_CODE_EVAL=1)" in err[0]
    assert not (tmp / "out").exists()
    code, err = run(capsys, "rerank", "--model", "unused", "--problems", str(problems), "--candidates", str(cands),
                    "--out", str(tmp / "ranked.jsonl"), "--public_tests")
    assert code == 2 and "--allow_code_execution" in err[0] and not (tmp / "ranked.jsonl").exists()


def test_console_script_exits_2_without_a_traceback(files):
    tmp, problems, _ = files
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = label_final(problems, tmp / "x.jsonl", tmp / "o")
    proc = subprocess.run([sys.executable, "-m", "dreamprm_trl.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"dreamprm-code label final: error: --candidates: no such data file: "
                                                f"{tmp / 'x.jsonl'}"]


# ------------------------------------------------------------------------------------------------ nothing lost
def test_a_run_that_labels_nothing_keeps_the_previous_output(capsys, files):
    tmp, problems, cands = files
    out = tmp / "labels"
    code, err = run(capsys, *label_final(problems, cands, out))
    assert code == 0
    before = {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file() and p.name.startswith("labels")}
    assert set(before) == {"labels.jsonl", "labels.stats.json"} and len(before["labels.jsonl"].splitlines()) == 2
    ghost = write_jsonl(tmp / "ghost.jsonl", [{"task_id": "ghost", "code": GOOD}])
    code, err = run(capsys, *label_final(problems, ghost, out))
    assert code == 2 and err[-1].startswith("dreamprm-code label final: error: No row was labelled")
    assert "task_id 'ghost': no problem" in err[-1] and f"{out} is unchanged" in err[-1]
    assert {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file() and p.name.startswith("labels")} == before
    from datasets import load_from_disk

    assert load_from_disk(str(out))["passed"] == [True, False]
    one = write_jsonl(tmp / "one.jsonl", [{"task_id": "add", "code": GOOD}])
    assert run(capsys, *label_final(problems, one, out))[0] == 0  # a good run replaces it
    assert load_from_disk(str(out))["passed"] == [True] and len((tmp / "labels.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []  # no temporary directory left


# ------------------------------------------------------------------------------------------------ rerank input
@dataclass
class Scores:
    steps: list
    scores: list

    def aggregate(self, how=None):
        return min(self.scores)


class ConstPRM:
    """Scores every step ``value`` (NaN for a broken model)."""

    def __init__(self, value):
        self.value = value

    def score_batch(self, pairs, batch_size=8, progress=True, **kwargs):
        return [Scores([code], [self.value if "a - b" in code else 0.5]) for _, code in pairs]


def test_passed_must_be_a_boolean(capsys, files):
    tmp, problems, _ = files
    cands = write_jsonl(tmp / "c.jsonl", [{"task_id": "add", "code": GOOD, "passed": True},
                                          {"task_id": "add", "code": BAD, "passed": "no"}])
    code, err = run(capsys, "rerank", "--model", "unused", "--problems", str(problems), "--candidates", str(cands),
                    "--out", str(tmp / "r.jsonl"))
    assert code == 2 and err == [f"dreamprm-code rerank: error: {cands} line 2: 'passed' must be true or false, "
                                 "got 'no' (str); write a JSON boolean."]


def test_rerank_refuses_duplicate_task_ids(capsys, files):
    tmp, _, cands = files
    problems = write_jsonl(tmp / "dup.jsonl", [ADD.to_row(), ADD.to_row()])
    code, err = run(capsys, "rerank", "--model", "unused", "--problems", str(problems), "--candidates", str(cands),
                    "--out", str(tmp / "r.jsonl"))
    assert code == 2 and err == [f"dreamprm-code rerank: error: {problems}: task_id 'add' appears more than once; "
                                 "each problem needs its own task_id (remove or rename the duplicates)."]


def test_nan_scores_are_null_and_an_all_nan_ranking_fails(capsys, files, monkeypatch):
    tmp, problems, cands = files
    out = tmp / "ranked.jsonl"
    rerank_file(ConstPRM(float("nan")), str(problems), str(cands), str(out), progress=False)

    def strict(text):
        raise ValueError(f"not JSON: {text}")

    rows = [json.loads(line, parse_constant=strict) for line in out.read_text().splitlines()]
    assert [(r["code"], r["score"], r["step_scores"]) for r in rows] == [(GOOD, 0.5, [0.5]), (BAD, None, [None])]

    rerank_module = importlib.import_module("dreamprm_trl.evaluation.rerank")  # the package exports the function
    monkeypatch.setattr(rerank_module, "load_prm", lambda path: ConstPRM(float("nan")) if path == "nan" else None)
    nan_only = write_jsonl(tmp / "bad_only.jsonl", [{"task_id": "add", "code": BAD}])
    code, err = run(capsys, "rerank", "--model", "nan", "--problems", str(problems), "--candidates", str(nan_only),
                    "--out", str(out), "--no_progress")
    assert code == 2 and len(err) == 1 and "Every one of the 1 program scores is NaN" in err[0]
    assert [json.loads(line, parse_constant=strict)["score"] for line in out.read_text().splitlines()] == [0.5, None]

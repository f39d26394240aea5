"""Chain-of-Function steps: lossless splitting of real and hostile programs, extraction, prompts."""

import ast
import re
import sys
from types import SimpleNamespace

import pytest

from dreamprm_trl.prompts import COF_TEMPLATE_VERSION, chain_of_function_prompt
from dreamprm_trl.steps import (
    Step,
    extract_code,
    split_lines,
    split_program,
    split_steps,
    step_prefixes,
)
from dreamprm_trl.problems import (
    load_bundled_classeval,
    load_bundled_classeval_candidates,
    load_bundled_humaneval_candidates,
    load_humaneval,
)


def assert_lossless(code: str, steps: list[Step]) -> None:
    assert "".join(s.text for s in steps) == code
    assert all(code[s.start : s.end] == s.text and s.text for s in steps)
    assert [s.start for s in steps[1:]] == [s.end for s in steps[:-1]]
    if steps:
        assert steps[0].start == 0 and steps[-1].end == len(code)


def texts(steps):
    return [s.text for s in steps]


def expected_units(code: str) -> list[tuple[str, str]]:
    """Independent count of the steps split_steps must find in parsable code."""
    units = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(("function", node.name))
        elif isinstance(node, ast.ClassDef):
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            units += [("method", f"{node.name}.{m.name}") for m in methods] or [("class", node.name)]
    return units or [("module", None)]


@pytest.fixture(scope="module")
def real_programs() -> dict[str, list[str]]:
    humaneval = {p.task_id: p for p in load_humaneval()}
    programs = {
        "humaneval_codegen16b": [
            humaneval[t].prompt + c for t, cs in load_bundled_humaneval_candidates().items() for c in cs
        ],
        "humaneval_canonical": [p.prompt + p.metadata["canonical_solution"] for p in humaneval.values()],
        "classeval_solutions": [p.metadata["solution_code"] for p in load_bundled_classeval()],
        "classeval_skeletons": [p.starter_code for p in load_bundled_classeval()],
        "classeval_candidates": [c for cs in load_bundled_classeval_candidates().values() for c in cs],
    }
    return programs


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")
def test_real_programs_round_trip_losslessly(real_programs):
    counts = {name: len(codes) for name, codes in real_programs.items()}
    assert counts == {
        "humaneval_codegen16b": 164 * 20,
        "humaneval_canonical": 164,
        "classeval_solutions": 100,
        "classeval_skeletons": 100,
        "classeval_candidates": 2500,
    }
    parsed = blocks = empty = 0
    for name, codes in real_programs.items():
        for code in codes:
            steps = split_steps(code)
            assert_lossless(code, steps)
            assert_lossless(code, split_lines(code))
            if len(code) % 7 == 0:
                assert step_prefixes(code) == [code[: s.end] for s in steps]
            if not code:  # a few Vicuna answers hold no code at all
                assert steps == [] and split_lines(code) == []
                empty += 1
                continue
            try:
                units = expected_units(code)
            except SyntaxError:
                blocks += 1
                assert all(s.kind == "block" for s in steps)
                continue
            parsed += 1
            assert [(s.kind, s.name) for s in steps] == units, (name, code[:200])
            for s in steps:
                if s.kind in ("function", "method"):
                    assert re.search(rf"def\s+{re.escape(s.name.split('.')[-1])}\s*\(", s.text)
    total = sum(counts.values())
    print(
        f"\nround-tripped {total} shared programs ({parsed} parse, {blocks} do not -> blocks, {empty} empty): {counts}"
    )
    assert parsed + blocks + empty == total == 6144
    assert (parsed, blocks, empty) == (5295, 837, 12)  # canonical/reference code all parses; LLM outputs not all


def test_every_classeval_solution_gives_one_step_per_method():
    for problem in load_bundled_classeval():
        steps = split_steps(problem.metadata["solution_code"])
        names = [s.name.split(".", 1)[1] for s in steps]
        assert all(s.kind == "method" for s in steps)
        assert set(problem.metadata["methods"]) <= set(names)
        assert steps[0].text.lstrip().startswith(("import", "from", "class", "#", '"'))


def test_humaneval_program_steps_are_the_functions():
    problem = next(p for p in load_humaneval() if p.task_id == "HumanEval/38")  # encode_cyclic + decode_cyclic
    code = problem.prompt + problem.metadata["canonical_solution"]
    steps = split_steps(code)
    assert [(s.kind, s.name) for s in steps] == [("function", "encode_cyclic"), ("function", "decode_cyclic")]
    assert steps[1].text.startswith("def decode_cyclic(s: str):")
    assert steps[0].text.startswith("\n\ndef encode_cyclic(s: str):")  # leading blank lines join step 1


MODULE = '''\
"""Module docstring."""
import functools
from typing import List

# comment directly above a
@functools.lru_cache(maxsize=None)
@staticmethod
def a(x):
    """Entry: strategy docstring."""
    def inner(y):
        return y + 1
    class Local:
        def m(self):
            return 2
    return inner(x)
    # trailing comment indented inside a


LIMIT = 10


# comment about b

async def b(xs: List[int]) -> int:
    async with ctx() as c:
        await c.run()
    return len(xs)

if __name__ == "__main__":
    print(a(1))
'''


def test_functions_decorators_comments_nested_async():
    steps = split_steps(MODULE)
    assert_lossless(MODULE, steps)
    assert [(s.kind, s.name) for s in steps] == [("function", "a"), ("function", "b")]
    a, b = texts(steps)
    assert a.startswith('"""Module docstring."""\nimport functools\n')  # leading imports join step 1
    assert "# comment directly above a\n@functools.lru_cache(maxsize=None)\n@staticmethod\ndef a(x):" in a
    assert "def inner(y)" in a and "class Local" in a  # nested definitions stay in their parent
    assert a.endswith("    # trailing comment indented inside a\n\n\n")
    assert b.startswith("LIMIT = 10\n\n\n# comment about b\n\nasync def b(")  # code between functions: next step
    assert b.endswith('if __name__ == "__main__":\n    print(a(1))\n')  # trailing code joins the last step
    assert step_prefixes(MODULE) == [a, MODULE]


CLASS = '''\
import math


class Shape:
    """A shape."""

    sides = 0
    registry: dict = {}

    def __init__(self, r):
        self.r = r

    # comment above the property
    @property
    def area(self):
        return math.pi * self.r ** 2

    @staticmethod
    def unit():
        return Shape(1)

    @classmethod
    async def load(cls, path):
        return cls(await read(path))
    after_methods = 1


class Empty:
    """No methods at all."""
    x = 1


def helper():
    return Shape.unit()
'''


def test_class_with_properties_static_methods_and_a_class_without_methods():
    steps = split_steps(CLASS)
    assert_lossless(CLASS, steps)
    assert [(s.kind, s.name) for s in steps] == [
        ("method", "Shape.__init__"),
        ("method", "Shape.area"),
        ("method", "Shape.unit"),
        ("method", "Shape.load"),
        ("class", "Empty"),
        ("function", "helper"),
    ]
    init, area, unit, load, empty, helper = texts(steps)
    assert init.startswith('import math\n\n\nclass Shape:\n    """A shape."""\n\n    sides = 0\n')
    assert init.endswith("        self.r = r\n\n")
    assert (
        area
        == "    # comment above the property\n    @property\n    def area(self):\n        return math.pi * self.r ** 2\n\n"
    )
    assert unit == "    @staticmethod\n    def unit():\n        return Shape(1)\n\n"
    assert load.endswith("        return cls(await read(path))\n    after_methods = 1\n\n\n")  # class tail stays
    assert empty == 'class Empty:\n    """No methods at all."""\n    x = 1\n\n\n'
    assert helper == "def helper():\n    return Shape.unit()\n"


def test_crlf_tabs_and_lone_cr_are_kept_exactly():
    crlf = "import os\r\n\r\ndef f():\r\n\treturn 1\r\n\r\n\r\n# b\r\ndef g():\r\n\tif True:\r\n\t\treturn 2\r\n"
    steps = split_steps(crlf)
    assert_lossless(crlf, steps)
    assert texts(steps) == [
        "import os\r\n\r\ndef f():\r\n\treturn 1\r\n\r\n\r\n",
        "# b\r\ndef g():\r\n\tif True:\r\n\t\treturn 2\r\n",
    ]
    lone_cr = "def f():\r    return 1\r\rdef g():\r    return 2"  # ast counts a lone CR as a line end
    assert texts(split_steps(lone_cr)) == ["def f():\r    return 1\r\r", "def g():\r    return 2"]
    lines = split_lines(crlf)
    assert_lossless(crlf, lines)
    assert texts(lines)[:3] == ["import os\r\n\r\n", "def f():\r\n", "\treturn 1\r\n\r\n\r\n"]


def test_unicode_and_multibyte_text_before_a_def_on_the_same_line():
    code = (
        's = "héllo wörld 日本語 🎉"; t = len(s)  # ünïcode\n'
        "def größe(ä: str) -> int:\n"
        '    """Zählt 🎉 Zeichen."""\n'
        '    return len(ä) + len("€")\n'
        "class Ω:\n"
        '    π = "π"; τ = 2 * 3.14  # 两个\n'
        "    def 面积(self): return self.π; x = '🎉'\n"
        "    def δ(self): return 0\n"
    )
    steps = split_steps(code)
    assert_lossless(code, steps)
    assert [(s.kind, s.name) for s in steps] == [("function", "größe"), ("method", "Ω.面积"), ("method", "Ω.δ")]
    assert steps[0].text.endswith('return len(ä) + len("€")\n')
    assert (
        steps[1].text == "class Ω:\n    π = \"π\"; τ = 2 * 3.14  # 两个\n    def 面积(self): return self.π; x = '🎉'\n"
    )
    assert steps[2].start == code.index("    def δ")  # char offsets, not UTF-8 byte offsets
    lines = split_lines(code)
    assert_lossless(code, lines)
    assert texts(lines)[0] == 's = "héllo wörld 日本語 🎉"; t = len(s)  # ünïcode\n'


def test_syntax_error_falls_back_to_blank_line_blocks():
    code = "\n\ndef f(:\n    return 1\n\n\ndef g():\n    return 'unterminated\n\nx = 1"
    steps = split_steps(code)
    assert_lossless(code, steps)
    assert [s.kind for s in steps] == ["block"] * 3 and all(s.name is None for s in steps)
    assert texts(steps) == ["\n\ndef f(:\n    return 1\n\n\n", "def g():\n    return 'unterminated\n\n", "x = 1"]
    assert split_steps("\x00 def f(): pass") == [Step("\x00 def f(): pass", None, "block", 0, 15)]  # null byte


def test_empty_module_and_whitespace_code():
    assert split_steps("") == [] and split_lines("") == [] and step_prefixes("") == [] and split_program("") == []
    assert split_program(CLASS) == [Step(CLASS, None, "module", 0, len(CLASS))]
    assert step_prefixes(CLASS, splitter=split_program) == [CLASS]
    assert split_steps("x = 1\nprint(x)\n") == [Step("x = 1\nprint(x)\n", None, "module", 0, 15)]
    assert split_steps("\n  \n") == [Step("\n  \n", None, "module", 0, 4)]
    assert split_lines("# only a comment\n") == [Step("# only a comment\n", None, "module", 0, 17)]


def test_pathological_code_never_raises():
    too_nested = "x = " + "(" * 300 + "1" + ")" * 300 + "\n"  # SyntaxError: too many nested parentheses
    too_deep = "def f():\n    return 1" + " + 1" * 20000 + "\n"  # RecursionError during ast construction
    for code in (too_nested, too_deep):
        steps = split_steps(code)
        assert_lossless(code, steps)
        assert [s.kind for s in steps] == ["block"]
    truncated = "def f():\n    return [\n"  # does not even tokenise: one block per physical line
    assert split_lines(truncated) == [
        Step("def f():\n", None, "block", 0, 9),
        Step("    return [\n", None, "block", 9, 22),
    ]


def test_split_lines_one_step_per_logical_line():
    code = 'def f(a,\n      b):\n    # add them\n    return (a +\n            b)\n\n\nx = """multi\nline"""\n'
    steps = split_lines(code)
    assert_lossless(code, steps)
    assert texts(steps) == [
        "def f(a,\n      b):\n",
        "    # add them\n    return (a +\n            b)\n\n\n",
        'x = """multi\nline"""\n',
    ]
    assert {s.kind for s in steps} == {"line"}


def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    two = "```python\ndef f():\n    pass\n```\ntext\n```py\ndef g():\n    pass\n```\n"
    assert extract_code(two) == "def g():\n    pass\n"
    usage = "```python\nclass A:\n    def f(self): pass\n```\nUse it:\n```python\nA().f()\n```"
    assert extract_code(usage) == "class A:\n    def f(self): pass\n"  # a trailing usage example is not the program
    assert extract_code("```\ndef h(): return 2\n```") == "def h(): return 2\n"
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"  # unterminated
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1\n<|endoftext|>junk") == "def f():\n    return 1\n"
    assert extract_code("```text\nnot code\n```") == "```text\nnot code\n```"
    prose = "Please complete the class A in the following code.\n\nimport os\n\nclass A:\n    pass\n"
    assert extract_code(prose) == "import os\n\nclass A:\n    pass\n"
    assert extract_code("```python\r\ndef f():\r\n    return 1\r\n```\r\n") == "def f():\r\n    return 1\r\n"


def test_chain_of_function_prompts():
    assert COF_TEMPLATE_VERSION == "cof-v1"
    stdin = chain_of_function_prompt("Read n and print n squared.")
    assert stdin.startswith("### Problem\nRead n and print n squared.\n")
    assert "standard input" in stdin and "`main()`" in stdin and "no nested functions" in stdin
    leetcode = SimpleNamespace(
        prompt="Return the largest pair sum.",
        starter_code="class Solution:\n    def largestPairSum(self, nums: List[int]) -> int:\n        ",
        style="call",
        entry_point="largestPairSum",
    )
    text = chain_of_function_prompt(leetcode)
    assert (
        "### Starter code\n```python\nclass Solution:\n    def largestPairSum(self, nums: List[int]) -> int:\n```"
        in text
    )
    assert "helper functions that you define at top level" in text
    humaneval = next(p for p in load_humaneval() if p.task_id == "HumanEval/0")
    text = chain_of_function_prompt(humaneval)
    assert text.count("def has_close_elements") == 1 and "Implement `has_close_elements`" in text
    classeval = load_bundled_classeval()[0]
    text = chain_of_function_prompt(classeval)
    assert "Complete every method of the class skeleton" in text and text.count("class AccessGatewayFilter") == 1
    assert chain_of_function_prompt(leetcode, style="stdin") != chain_of_function_prompt(leetcode)
    with pytest.raises(TypeError, match="expects a Problem or a str"):
        chain_of_function_prompt(42)


def test_steps_module_imports_without_torch():
    import subprocess

    code = "import sys, dreamprm_trl.steps, dreamprm_trl.prompts, dreamprm_trl.problems; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr

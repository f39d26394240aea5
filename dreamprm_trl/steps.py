"""Chain-of-Function steps: code extraction, the one parse check, the one code-fence rule, and the one rule that
cuts a program into steps (the prompts that ask for this style are in `prompts`).

A *step* is one function of a program (DreamPRM-Code, Sec. 3.1): the PRM scores the program after every
function, and Monte-Carlo rollouts restart from the program cut after step ``k``. Splitting is done with
``ast`` (never with line heuristics) and is lossless: ``"".join(s.text for s in steps) == code``, so steps can
be re-joined, tokenised and scored without drifting from what was executed. Pure functions; no torch.
"""

from __future__ import annotations

import ast
import itertools
import re
import tokenize
import warnings
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FENCE",
    "parses",
    "STEP_KINDS",
    "Step",
    "extract_code",
    "split_lines",
    "split_program",
    "split_steps",
    "step_prefixes",
    "split_line_chunks",
    "SPLITTERS",
    "get_splitter",
    "splitter_name",
]

# ----------------------------------------------------------------------------------------------------------------
# Code extraction

#: A code-fence line (Markdown): group 1 the fence (``` or ~~~, three or more), group 2 the language tag ("" if bare).
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.#-]*)[^\n]*$", flags=re.M)
_PYTHON_TAGS = {"python", "py", "python3", "py3", "pycon", "ipython"}
_END_MARKERS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|EOT|>")


_DEFINES = re.compile(r"^[ \t]*(?:async[ \t]+def|def|class)[ \t]", flags=re.M)
_CODE_START = re.compile(r"^(?:import |from \S+ import |class |def |async def |@)", flags=re.M)


def _parse(code: str) -> ast.Module | None:
    """``ast.parse`` that returns None for code that does not parse, silently (no SyntaxWarning spam)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return None


def parses(code: str) -> bool:
    """Whether ``code`` is a Python module ``ast`` accepts: the project's one "does it parse" check."""
    return _parse(code) is not None


def extract_code(completion: str) -> str:
    """The program in a model completion.

    The last fenced python block (tagged ``python``/``py``, else untagged) that defines a function or class, else
    the last such block; unterminated fences run to the end of the text. Without fences: the whole text, less
    any leading prose line(s) when the text does not parse but the code after them does. Text after an
    end-of-text marker (``<|endoftext|>``, ``</s>``, ...) is dropped first.
    """
    text = completion
    for marker in _END_MARKERS:
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i].rstrip("\r\n"))
        if not match:
            i += 1
            continue
        fence, lang = match.group(1), match.group(2).lower()
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                break
            body.append(lines[i])
            i += 1
        blocks.append((lang, "".join(body)))
        i += 1
    candidates = [b for lang, b in blocks if lang in _PYTHON_TAGS] or [b for lang, b in blocks if not lang]
    if candidates:
        defining = [b for b in candidates if _DEFINES.search(b)]
        return (defining or candidates)[-1]
    if _parse(text) is None:
        start = _CODE_START.search(text)
        if start and start.start() > 0 and _parse(text[start.start() :]) is not None:
            return text[start.start() :]
    return text


# ----------------------------------------------------------------------------------------------------------------
# Steps

STEP_KINDS = ("function", "method", "class", "module", "block", "line")


@dataclass(frozen=True)
class Step:
    """One step of a program: ``code[start:end] == text``. ``kind`` is function|method|class|module (ast split),
    block (the code did not parse: blank-line blocks) or line (``split_lines``); ``name`` is the function name,
    ``Class.method`` for methods, the class name for a class without methods, else None."""

    text: str
    name: str | None
    kind: str
    start: int
    end: int


_NEWLINE = re.compile(r"\r\n|\r|\n")  # the line ends Python's own tokenizer counts (ast line numbers)
_WS = " \t\x0c"


class _Lines:
    """Physical lines of ``code`` with char offsets, numbered 1..n like ``ast`` line numbers."""

    def __init__(self, code: str) -> None:
        self.code = code
        starts = [0] + [m.end() for m in _NEWLINE.finditer(code)]
        if starts[-1] == len(code) and len(starts) > 1:
            starts.pop()
        self.starts = starts
        self.n = len(starts)
        bounds = starts[1:] + [len(code)]
        self.texts = [code[a:b].rstrip("\r\n") for a, b in zip(starts, bounds)]

    def start(self, lineno: int) -> int:
        """Offset of the first char of line ``lineno`` (``len(code)`` past the last line)."""
        return self.starts[lineno - 1] if lineno <= self.n else len(self.code)

    def text(self, lineno: int) -> str:
        """Line ``lineno`` without its terminator."""
        return self.texts[lineno - 1]

    def blank(self, lineno: int) -> bool:
        return not self.texts[lineno - 1].strip(_WS)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(_WS))


def _after(lines: _Lines, end_line: int, indent: int) -> int:
    """First line after a unit ending on ``end_line``: the unit keeps the blank lines after it and the comment
    lines indented deeper than its own header (they are still inside its body)."""
    k = end_line + 1
    while k <= lines.n:
        text = lines.text(k)
        stripped = text.strip(_WS)
        if stripped and not (stripped.startswith("#") and _indent(text) > indent):
            break
        k += 1
    return k


def _units(tree: ast.Module, lines: _Lines) -> list[tuple[str, str, int, int]]:
    """(kind, name, last line, header indent) of every step anchor, in source order."""
    units = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(("function", node.name, node.end_lineno, _indent(lines.text(node.lineno))))
        elif isinstance(node, ast.ClassDef):
            class_indent = _indent(lines.text(node.lineno))
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            if not methods:
                units.append(("class", node.name, node.end_lineno, class_indent))
            for i, m in enumerate(methods):
                last = i == len(methods) - 1  # what follows the last method stays inside its class step
                end, indent = (node.end_lineno, class_indent) if last else (m.end_lineno, _indent(lines.text(m.lineno)))
                units.append(("method", f"{node.name}.{m.name}", end, indent))
    return units


def _steps_from_cuts(code: str, cuts: list[int], labels: list[tuple[str | None, str]]) -> list[Step]:
    cuts = list(itertools.accumulate(cuts, max))  # monotone by construction; kept so steps can never overlap
    steps = []
    for (name, kind), start, end in zip(labels, cuts[:-1], cuts[1:]):
        if end > start:
            steps.append(Step(code[start:end], name, kind, start, end))
    return steps


def _blank_line_blocks(code: str, lines: _Lines) -> list[Step]:
    cuts, seen_text = [0], False
    for k in range(1, lines.n + 1):
        blank = lines.blank(k)
        if not blank and seen_text and lines.blank(k - 1):
            cuts.append(lines.start(k))
        seen_text = seen_text or not blank
    cuts.append(len(code))
    return _steps_from_cuts(code, cuts, [(None, "block")] * (len(cuts) - 1))


def split_steps(code: str) -> list[Step]:
    """Cut ``code`` into Chain-of-Function steps: one per top-level function and one per class method.

    Rules (all cuts fall on line starts, so CRLF, tabs and multi-byte text are kept exactly):
    decorators, comments and any statements above a function belong to it (leading imports join the first step);
    a class header, docstring and attributes go with its first method, a class without methods is one step;
    blank lines after a function stay with it; code after the last function joins the last step. Code with no
    function or class is one ``module`` step. Code that does not parse falls back to blank-line-separated
    ``block`` steps. Never raises; ``""`` gives ``[]``.
    """
    if not code:
        return []
    lines = _Lines(code)
    tree = _parse(code)
    if tree is None:
        return _blank_line_blocks(code, lines)
    units = _units(tree, lines)
    if not units:
        return [Step(code, None, "module", 0, len(code))]
    cuts = [0] + [lines.start(_after(lines, end, indent)) for _, _, end, indent in units[:-1]] + [len(code)]
    return _steps_from_cuts(code, cuts, [(name, kind) for kind, name, _, _ in units])


def _logical_line_ends(lines: _Lines) -> list[int]:
    """Physical line numbers on which a logical line ends (tokenize NEWLINE tokens)."""
    feed = iter([text + "\n" for text in lines.texts])  # \r-only line ends tokenised as \n
    ends = []
    for tok in tokenize.generate_tokens(lambda: next(feed, "")):
        if tok.type == tokenize.NEWLINE and (not ends or ends[-1] != tok.start[0]):
            ends.append(tok.start[0])
    return ends


def split_lines(code: str) -> list[Step]:
    """Line-as-step baseline: one step per non-blank logical line (a multi-line statement is one step).

    Same contract as :func:`split_steps` (lossless, offsets, never raises). Comment lines join the next line,
    blank lines stay with the line above; a compound statement header (``def f():``) is its own step. If the
    code cannot be tokenised, each non-blank physical line is a ``block`` step.
    """
    if not code:
        return []
    lines = _Lines(code)
    kind = "line"
    try:
        ends = _logical_line_ends(lines)
    except (tokenize.TokenError, SyntaxError, ValueError):
        ends, kind = [k for k in range(1, lines.n + 1) if not lines.blank(k)], "block"
    if not ends:
        return [Step(code, None, "module", 0, len(code))]
    cuts = [0] + [lines.start(_after(lines, end, indent=1 << 30)) for end in ends[:-1]] + [len(code)]
    return _steps_from_cuts(code, cuts, [(None, kind)] * len(ends))


def split_program(code: str) -> list[Step]:
    """Whole-program baseline (ORM): the program is a single ``module`` step; ``""`` gives ``[]``."""
    return [Step(code, None, "module", 0, len(code))] if code else []


def step_prefixes(code: str, splitter: Callable[[str], list[Step]] = split_steps) -> list[str]:
    """The program cut after step 1, 2, ..., K (the last prefix is ``code`` itself): where rollouts restart."""
    return [code[: step.end] for step in splitter(code)]


def split_line_chunks(code: str) -> list[Step]:
    """Line-as-step at the function splitter's budget: the logical lines of :func:`split_lines` grouped into as many
    contiguous chunks as :func:`split_steps` has steps (near-equal line counts), so a line-step PRM gets the same
    number of labelled prefixes, and so the same Monte-Carlo rollout budget, as a function-step PRM; only where
    the cuts fall differs. Same contract as :func:`split_steps` (lossless, offsets, never raises)."""
    lines, k = split_lines(code), len(split_steps(code))
    if len(lines) <= k:
        return lines
    bounds = [round(i * len(lines) / k) for i in range(k + 1)]
    return [Step(code[lines[a].start:lines[b - 1].end], None, "line", lines[a].start, lines[b - 1].end)
            for a, b in zip(bounds, bounds[1:])]


#: Step splitters by the name a saved PRM records (`PRMConfig.step_splitter` in ``config.json``); see `get_splitter`.
SPLITTERS: dict[str, Callable[[str], list[Step]]] = {
    "function": split_steps, "line": split_lines, "line_chunks": split_line_chunks, "program": split_program,
}


def get_splitter(name: str | None) -> Callable[[str], list[Step]]:
    """The splitter registered under ``name`` in `SPLITTERS` (``None``: the default, :func:`split_steps`)."""
    if name is None:
        return split_steps
    if name not in SPLITTERS:
        raise ValueError(f"Unknown step splitter {name!r}; choose one of {sorted(SPLITTERS)}.")
    return SPLITTERS[name]


def splitter_name(splitter: Callable[[str], list[Step]] | None) -> str:
    """The `SPLITTERS` name of ``splitter`` (``None``: ``"function"``); raises for an unregistered function."""
    for name, fn in SPLITTERS.items():
        if splitter is None and fn is split_steps or fn is splitter:
            return name
    raise ValueError(f"{splitter!r} is not a registered step splitter; register it in steps.SPLITTERS.")

"""Chain-of-Function prompts (DreamPRM-Code, Sec. 3.1): ask a policy for one entry function that reads like a plan,
then short single-purpose helpers, so that each step the PRM scores is one function. Pure functions; no torch.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["COF_TEMPLATE_VERSION", "COF_TEMPLATES", "chain_of_function_prompt"]

# Prompt templates (bump the version whenever the wording changes: cached generations are keyed on it)

COF_TEMPLATE_VERSION = "cof-v1"

_COF_RULES = """\
Write the solution in Chain-of-Function style:
1. Start with one high-level entry function{entry}. Its docstring states the strategy in a few lines: the key \
observation, the algorithm, and its time complexity. Its body reads like a plan that calls the helpers.
2. Then define each helper as a separate top-level function (no nested functions, no lambdas holding logic), \
each with a one-line docstring saying what it computes. Keep every function short and single-purpose.
3. Use only the Python standard library. Do not print debugging output.
Return the complete program in a single ```python code block and nothing after it."""

COF_TEMPLATES: dict[str, str] = {
    "stdin": """\
### Problem
{prompt}

### Format
Read the input from standard input and write the answer to standard output. The entry function is `main()`; \
end the program with:
if __name__ == "__main__":
    main()

### Instructions
{rules}
""",
    "leetcode": """\
### Problem
{prompt}

### Starter code
```python
{starter_code}
```

### Instructions
Keep the class and method signature of the starter code exactly. The method of the class is the entry \
function: its docstring states the strategy and its body calls helper functions that you define at top level \
after the class.
{rules}
""",
    "function": """\
### Problem
{prompt}
{starter_block}
### Instructions
Implement `{entry_point}` with exactly the requested signature; it is the entry function.
{rules}
""",
    "class": """\
### Problem
{prompt}
{starter_block}
### Instructions
Complete every method of the class skeleton, keeping all names and signatures. Each method is one step: give \
it a docstring that says how it works, and move shared logic into extra methods of the class.
Use only the imports the skeleton needs plus the Python standard library. Return the complete class, with its \
imports, in a single ```python code block and nothing after it.
""",
}


def _template_key(style: str, starter_code: str, entry_point: str | None) -> str:
    if style == "unittest":
        return "class"
    if style == "stdin" or (style == "call" and not starter_code.strip() and not entry_point):
        return "stdin"
    if style == "call" and re.search(r"^[ \t]*class\s+\w+", starter_code, flags=re.M):
        return "leetcode"
    return "function"


def chain_of_function_prompt(problem: Any, style: str | None = None) -> str:
    """Render the Chain-of-Function prompt for ``problem`` (a ``problems.Problem`` or any object with ``prompt``,
    ``starter_code``, ``style`` and ``entry_point`` attributes, or a plain stdin/stdout problem statement).

    The template follows the problem style: stdin/stdout, LeetCode-style class starter code, a function to
    implement (HumanEval, MBPP) or a class skeleton to complete (ClassEval). ``style`` overrides the problem's.
    """
    if isinstance(problem, str):
        prompt, starter, entry = problem, "", None
        style = style or "stdin"
    else:
        if not hasattr(problem, "prompt"):
            raise TypeError(
                f"chain_of_function_prompt expects a Problem or a str, got {type(problem).__name__}; "
                "build one with problems.Problem(task_id=..., prompt=...)."
            )
        prompt = problem.prompt
        starter = getattr(problem, "starter_code", "") or ""
        entry = getattr(problem, "entry_point", None)
        style = style or getattr(problem, "style", None) or "call"
    key = _template_key(style, starter, entry)
    if key == "function" and starter.strip() and starter.strip() == prompt.strip():
        prompt = "Complete the function below so that it does what its docstring says."  # HumanEval
    named = {"function": f" `{entry}`" if entry else "", "stdin": " `main()`"}
    rules = _COF_RULES.format(entry=named.get(key, ""))
    shown = starter.strip() and starter.strip() not in prompt
    starter_block = f"\n```python\n{starter.rstrip()}\n```\n" if shown else ""
    return COF_TEMPLATES[key].format(
        prompt=prompt.strip("\n"),
        starter_code=starter.rstrip(),
        starter_block=starter_block,
        entry_point=entry or "the entry function",
        rules=rules,
    )

"""The PRM's input format: how a (prompt, steps) pair becomes tokens and where the step markers are.

`encode_steps` is the ONE definition of the format, used by the collator, by `FunctionStepPRM.score` and by the
per-prefix reference path:

    text = prompt + step_1 + MARK + step_2 + MARK + ... + step_K + MARK

MARK is a dedicated special token (default ``<|step|>``) added to the tokenizer and trained; the PRM head reads
the hidden state at each MARK. Because a special token splits the text into independently tokenised segments, the
tokens of ``prompt + steps[:k]`` (with its k marks) are exactly the first tokens of the full sequence. For a causal
backbone the one-pass score of step k therefore equals the paper's per-prefix pass on the first k steps.

Tokenizers that drop whitespace (BERT WordPiece) would make differently indented programs identical. For them
(detected by a round trip, see `tokenizer_keeps_whitespace`) the same function maps every newline to
``<|nl|>``, each 4 leading spaces of a line to ``<|indent|>`` and the remaining leading spaces to ``<|sp|>``
(tabs count as 4 spaces) before tokenising; those tokens are special too, so the prefix property still holds.
Interior runs of spaces collapse to one separator and uncased vocabularies still lowercase identifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

STEP_TOKEN = "<|step|>"
NEWLINE_TOKEN = "<|nl|>"
INDENT_TOKEN = "<|indent|>"
SPACE_TOKEN = "<|sp|>"
WHITESPACE_TOKENS = (NEWLINE_TOKEN, INDENT_TOKEN, SPACE_TOKEN)
_WS_PROBE = "a\n    b"


def tokenizer_keeps_whitespace(tokenizer: Any) -> bool:
    """True if newlines and indentation survive an encode/decode round trip (byte-level BPE, SentencePiece)."""
    ids = tokenizer(_WS_PROBE, add_special_tokens=False)["input_ids"]
    return "\n    b" in tokenizer.decode(ids, skip_special_tokens=True)


def token_id(tokenizer: Any, token: str) -> int | None:
    """Id of ``token`` if the tokenizer knows it as a single token, else ``None``."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def format_tokens(tokenizer: Any, step_token: str = STEP_TOKEN) -> list[str]:
    """The special tokens the PRM input format needs for this tokenizer: the step marker (+ whitespace tokens)."""
    return [step_token] + ([] if tokenizer_keeps_whitespace(tokenizer) else list(WHITESPACE_TOKENS))


def prepare_tokenizer(tokenizer: Any, step_token: str = STEP_TOKEN) -> list[int]:
    """Add the format's special tokens to ``tokenizer`` (in place) and return their ids (the rows to train)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is a slow tokenizer; the PRM needs a fast one (offsets). "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    tokens = format_tokens(tokenizer, step_token)
    missing = [t for t in tokens if token_id(tokenizer, t) is None]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or step_token
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _escape(text: str, reserved: Sequence[str]) -> str:
    # A literal "<|step|>" in user text would otherwise become an extra marker.
    for tok in reserved:
        if tok in text:
            text = text.replace(tok, tok[:1] + " " + tok[1:])
    return text


def _map_whitespace(text: str, at_line_start: bool) -> tuple[str, bool]:
    """Left-to-right whitespace transducer; state carries across segments so prefixes map to prefixes."""
    out: list[str] = []
    col = 0
    for ch in text:
        if at_line_start and ch in " \t":
            col += 4 if ch == "\t" else 1
            continue
        if at_line_start and col:
            out.append(INDENT_TOKEN * (col // 4) + SPACE_TOKEN * (col % 4))
            col = 0
        if ch == "\n":
            out.append(NEWLINE_TOKEN)
            at_line_start = True
        elif ch == "\r":
            continue
        else:
            out.append(ch)
            at_line_start = False
    if at_line_start and col:
        out.append(INDENT_TOKEN * (col // 4) + SPACE_TOKEN * (col % 4))
    return "".join(out), at_line_start


def effective_prompt(prompt: str, steps: Sequence[str]) -> str:
    """The prompt the PRM reads before ``steps``: empty when the program already starts with it (HumanEval-style
    problems, whose statement is the function's signature and docstring), so the statement is not read twice.

    Decide it on the *whole* program, then reuse it for its prefixes, so per-prefix scores stay exact."""
    return "" if prompt and "".join(steps).startswith(prompt) else prompt


def format_steps(
    prompt: str, steps: Sequence[str], step_token: str = STEP_TOKEN, whitespace_tokens: bool = False
) -> tuple[str, int]:
    """Text fed to the tokenizer, and the length of its prompt part (for left truncation of the prompt)."""
    reserved = (step_token, *WHITESPACE_TOKENS)
    parts = [_escape(prompt, reserved)] + [_escape(s, reserved) for s in steps]
    if whitespace_tokens:
        state, mapped = True, []
        for part in parts:
            m, state = _map_whitespace(part, state)
            mapped.append(m)
        parts = mapped
    text = parts[0] + "".join(s + step_token for s in parts[1:])
    return text, len(parts[0])


@dataclass
class EncodedSteps:
    """Token ids of one (prompt, steps) pair and the index of the marker closing each step."""

    input_ids: list[int]
    step_positions: list[int]
    prompt_tokens_dropped: int = 0


def encode_steps(
    tokenizer: Any,
    prompt: str,
    steps: Sequence[str],
    step_token: str = STEP_TOKEN,
    max_length: int | None = None,
) -> EncodedSteps | None:
    """Tokenise ``prompt + steps`` once and locate the step markers; ``None`` if it cannot fit ``max_length``.

    Too long: prompt tokens are dropped from the left (the end of the statement, next to the code, is kept);
    if the code alone does not fit, ``None`` is returned and the caller drops (and counts) the row.
    Code is never cut.
    """
    step_id = token_id(tokenizer, step_token)
    if step_id is None:
        raise ValueError(
            f"Step token {step_token!r} is not in the tokenizer's vocabulary. Use the PRM's tokenizer "
            "(`prm.tokenizer`) or call `dreamprm_trl.prm.prepare_tokenizer(tokenizer)` first."
        )
    ws_tokens = token_id(tokenizer, NEWLINE_TOKEN) is not None
    text, prompt_chars = format_steps(prompt, steps, step_token, whitespace_tokens=ws_tokens)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, truncation=False, verbose=False)
    ids: list[int] = list(enc["input_ids"])
    dropped = 0
    if max_length is not None and len(ids) > max_length:
        excess = len(ids) - max_length
        prompt_idx = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and e <= prompt_chars]
        if len(prompt_idx) < excess:
            return None
        cut = set(prompt_idx[:excess])
        ids = [t for i, t in enumerate(ids) if i not in cut]
        dropped = excess
    positions = [i for i, t in enumerate(ids) if t == step_id]
    if len(positions) != len(steps):
        raise RuntimeError(
            f"Found {len(positions)} step markers for {len(steps)} steps; the tokenizer splits or merges "
            f"{step_token!r}. Register it as a special token with `prepare_tokenizer`."
        )
    return EncodedSteps(ids, positions, dropped)


def code_to_steps(code: str, splitter: Callable[[str], Sequence[Any]] | None = None) -> list[str]:
    """Cut ``code`` into step texts with ``splitter`` (default `steps.split_steps`), so that ``"".join`` == code.

    A splitter may return `Step` objects (cut after each ``step.end``; the last step runs to the end of the code)
    or strings (used as given).
    """
    if splitter is None:
        from ..steps import split_steps as splitter
    parts = list(splitter(code))
    if not parts:
        return [code]
    if isinstance(parts[0], str):
        return list(parts)
    cuts = [p.end for p in parts[:-1]] + [len(code)]
    out, start = [], 0
    for end in cuts:
        out.append(code[start:end])
        start = end
    return out

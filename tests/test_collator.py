"""The PRM input format (`encode_steps`) and `ChainOfFunctionCollator`: markers, prefixes, truncation, labels."""

import logging
from dataclasses import dataclass

import pytest
from corpus import CORPUS
import torch

from dreamprm_trl.scripts.demo_backbones import load_minilm, train_bytelevel_tokenizer
from dreamprm_trl.prm.collator import ChainOfFunctionCollator
from dreamprm_trl.prm.inputs import (
    INDENT_TOKEN,
    NEWLINE_TOKEN,
    SPACE_TOKEN,
    STEP_TOKEN,
    code_to_steps,
    effective_prompt,
    encode_steps,
    format_steps,
    prepare_tokenizer,
    tokenizer_keeps_whitespace,
)


PROMPT = "Write a function that adds two numbers.\n"
STEPS = [
    "def add(a, b):\n    return a + b\n",
    "\ndef émoji():\n    return '😀 ünïcode ✓'\n",  # multi-byte characters: several byte-level tokens each
    "\ndef main():\n    print(add(1, 2))\n",
]


@pytest.fixture(scope="module")
def tok():
    t = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    prepare_tokenizer(t)
    return t


@pytest.fixture(scope="module")
def bert_tok():
    t = load_minilm()[1]
    prepare_tokenizer(t)
    return t


def test_markers_close_each_step_and_tokens_between_them_decode_to_the_step(tok):
    enc = encode_steps(tok, PROMPT, STEPS)
    step_id = tok.convert_tokens_to_ids(STEP_TOKEN)
    assert [enc.input_ids[p] for p in enc.step_positions] == [step_id] * 3
    assert enc.step_positions[-1] == len(enc.input_ids) - 1
    bounds = [-1] + enc.step_positions
    # steps 2 and 3 follow a marker, so their tokens are exactly theirs (multi-token unicode included)
    for k in (1, 2):
        assert tok.decode(enc.input_ids[bounds[k] + 1 : bounds[k + 1]]) == STEPS[k]
    assert tok.decode(enc.input_ids[: bounds[1]]) == PROMPT + STEPS[0]
    assert sum(len(tok.decode([i])) == 0 or "\ufffd" in tok.decode([i]) for i in enc.input_ids) > 0  # split bytes


def test_prefix_tokens_are_the_first_tokens_of_the_full_sequence(tok, bert_tok):
    for t in (tok, bert_tok):
        full = encode_steps(t, PROMPT, STEPS)
        for k in range(1, len(STEPS) + 1):
            pre = encode_steps(t, PROMPT, STEPS[:k])
            end = full.step_positions[k - 1] + 1
            assert pre.step_positions == full.step_positions[:k]
            assert pre.input_ids[:end] == full.input_ids[:end]


def test_literal_step_token_in_user_text_does_not_add_a_marker(tok):
    enc = encode_steps(tok, f"use {STEP_TOKEN} here\n", ["x = '<|step|>'\n"])
    assert len(enc.step_positions) == 1


def test_prompt_is_truncated_from_the_left_and_code_is_kept(tok, caplog):
    full = encode_steps(tok, PROMPT * 3, STEPS)
    code_start = len(encode_steps(tok, PROMPT * 3, STEPS[:1]).input_ids) - len(
        encode_steps(tok, "", STEPS[:1]).input_ids
    )
    max_len = len(full.input_ids) - 5
    short = encode_steps(tok, PROMPT * 3, STEPS, max_length=max_len)
    assert len(short.input_ids) == max_len and short.prompt_tokens_dropped == 5
    assert short.input_ids == full.input_ids[5:]  # first five prompt tokens gone, the end of the statement kept
    assert short.step_positions == [p - 5 for p in full.step_positions]
    assert code_start > 5

    code_only = len(encode_steps(tok, "", STEPS).input_ids)
    collate = ChainOfFunctionCollator(tok, max_length=code_only - 1)
    rows = [
        {"prompt": PROMPT, "steps": STEPS, "labels": [1.0, 0.5, 0.0], "task_id": "too-long"},
        {"prompt": PROMPT, "steps": STEPS[:1], "labels": [0.25], "task_id": "fits"},
    ]
    with caplog.at_level(logging.WARNING, logger="dreamprm_trl.prm.collator"):
        batch = collate(rows)
    assert collate.num_dropped == 1 and "too-long" in caplog.text
    assert batch["input_ids"].shape[0] == 1
    assert batch["step_labels"].tolist() == [[0.25]]
    collate(rows)
    assert collate.num_dropped == 2


def test_collated_batch_is_right_padded_with_labels_and_optional_fields(tok):
    collate = ChainOfFunctionCollator(tok, max_length=512)
    rows = [
        {"prompt": PROMPT, "steps": STEPS, "mc_labels": [1.0, None, 0.25], "passed": True, "row_id": 7, "weight": 2.0},
        {"prompt": PROMPT, "steps": STEPS[:2], "mc_labels": [0.5, 0.0], "passed": False, "row_id": 3, "weight": 1.0},
    ]
    batch = collate(rows)
    e0, e1 = (encode_steps(tok, r["prompt"], r["steps"]) for r in rows)
    assert batch["input_ids"].shape == (2, len(e0.input_ids))
    assert batch["input_ids"][1, : len(e1.input_ids)].tolist() == e1.input_ids
    assert batch["attention_mask"].sum(1).tolist() == [len(e0.input_ids), len(e1.input_ids)]
    assert batch["input_ids"][1, len(e1.input_ids) :].eq(tok.pad_token_id).all()
    assert batch["step_positions"].tolist() == [e0.step_positions, e1.step_positions + [-100]]
    assert batch["step_labels"].tolist() == [[1.0, -100.0, 0.25], [0.5, 0.0, -100.0]]
    assert batch["final_labels"].tolist() == [1.0, 0.0]
    assert batch["row_ids"].tolist() == [7, 3] and batch["weights"].tolist() == [2.0, 1.0]
    assert batch["step_positions"].dtype == torch.long and batch["step_labels"].dtype == torch.float

    with pytest.raises(ValueError, match="3 steps but 2 'labels'"):
        collate([{"prompt": "", "steps": STEPS, "labels": [1.0, 0.0]}])
    unlabeled = collate([{"prompt": "", "steps": STEPS[:2]}])
    assert unlabeled["step_labels"].tolist() == [[-100.0, -100.0]] and "final_labels" not in unlabeled


def test_rows_with_code_are_split_and_splitter_offsets_become_step_texts(tok):
    @dataclass
    class S:
        end: int

    code = "".join(STEPS)
    cuts = [len(STEPS[0]), len(STEPS[0]) + len(STEPS[1]), len(code) - 3]  # last cut before the end: code kept
    assert code_to_steps(code, lambda c: [S(e) for e in cuts]) == STEPS
    assert code_to_steps(code) == [STEPS[0] + "\n", STEPS[1][1:] + "\n", STEPS[2][1:]]  # steps.split_steps
    batch = ChainOfFunctionCollator(tok, splitter=lambda c: [S(e) for e in cuts])([{"prompt": PROMPT, "code": code}])
    assert batch["step_positions"].tolist() == [encode_steps(tok, PROMPT, STEPS).step_positions]


def test_whitespace_is_kept_for_wordpiece_through_dedicated_tokens(bert_tok, tok):
    assert tokenizer_keeps_whitespace(tok) and not tokenizer_keeps_whitespace(bert_tok)
    text, n = format_steps("Q\n", ["def f():\n\treturn 1\n", "  x = 2\n"], whitespace_tokens=True)
    nl, ind, sp = NEWLINE_TOKEN, INDENT_TOKEN, SPACE_TOKEN
    assert text == f"Q{nl}def f():{nl}{ind}return 1{nl}{STEP_TOKEN}{sp}{sp}x = 2{nl}{STEP_TOKEN}"
    assert n == len(f"Q{nl}")

    flat = ["def f(x):\n    if x:\n        return 1\n    return 2\n"]
    shifted = ["def f(x):\n    if x:\n        return 1\n        return 2\n"]  # differs only in indentation
    a, b = (encode_steps(bert_tok, "", s).input_ids for s in (flat, shifted))
    assert a != b
    raw = load_minilm()[1]
    assert raw(flat[0])["input_ids"] == raw(shifted[0])["input_ids"]  # what the mapping fixes


def test_unknown_step_token_is_a_clear_error():
    t = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    with pytest.raises(ValueError, match="prepare_tokenizer"):
        encode_steps(t, "", ["x = 1\n"])


def test_truncation_keeps_the_bos_token():
    t = train_bytelevel_tokenizer(CORPUS, vocab_size=300, bos_token="<s>")
    prepare_tokenizer(t)
    full = encode_steps(t, PROMPT, STEPS)
    short = encode_steps(t, PROMPT, STEPS, max_length=len(full.input_ids) - 3)
    assert full.input_ids[0] == short.input_ids[0] == t.bos_token_id
    assert short.input_ids == full.input_ids[:1] + full.input_ids[4:]


def test_a_prompt_the_program_starts_with_is_read_once(tok):
    prompt = 'def double(x):\n    """Twice x."""\n'
    steps = [prompt + "    return 2 * x\n", "\ndef main():\n    print(double(2))\n"]
    assert effective_prompt(prompt, steps) == ""
    assert effective_prompt(prompt, ["def other():\n    pass\n"]) == prompt
    assert effective_prompt("", steps) == ""
    collate = ChainOfFunctionCollator(tok, max_length=512)
    with_prompt = collate.encode_row({"prompt": prompt, "steps": steps})
    without = collate.encode_row({"prompt": "", "steps": steps})
    assert with_prompt.input_ids == without.input_ids

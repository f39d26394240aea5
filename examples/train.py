"""Train a DreamPRM-Code process reward model and print the test-time-scaling table.

With no arguments (offline, CPU): bundled ClassEval (class-level programs, methods as steps, 5 LLMs' candidates),
Monte-Carlo step labels from the candidate pool, a three-way split by problem (held-out / MC-labelled trajectories /
meta set), every PRM variant trained on the same trajectories and rollouts and evaluated on the held-out problems,
with "parses, then random" as the floor and the label quality against method-level truth:

    accelerate launch examples/train.py                       # the default run
    accelerate launch examples/train.py --quick               # a CI-sized smoke run (numbers too noisy to read)
    accelerate launch examples/train.py --dataset humaneval   # or both

On a GPU machine, the same script trains on a Hub backbone and your own data:

    accelerate launch examples/train.py --backbone Qwen/Qwen2.5-Coder-3B-Instruct \
        --problems problems.jsonl --candidates candidates.jsonl --methods dreamprm \
        --bf16 --per_device_train_batch_size 4 --push_to_hub --hub_model_id you/dreamprm-code

Every flag of `ExperimentArguments` and `FunctionStepPRMConfig` is accepted, and `--config run.yaml` reads them
from a YAML file; `dreamprm-code train` takes the same flags (both call `dreamprm_trl.scripts.train.main`). After a
crash, rerun the same command with `--resume_from_checkpoint last`: each variant resumes
from the last checkpoint whose save finished in its own output directory (or starts afresh if it has none).
"""

from dreamprm_trl.scripts.train import main  # the same code path as `dreamprm-code train`

if __name__ == "__main__":
    main()

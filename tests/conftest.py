"""Shared test set-up: code execution is opted in for the tests, and the Hub is never reached."""

import os

os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

# The local fake Hub (`local_hub` fixture) for push_to_hub / from_pretrained round trips over real HTTP.
pytest_plugins = ["hub_fixtures"]

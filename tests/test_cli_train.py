"""``dreamprm-code train`` and ``--version``: the TrlParser flags, ``--config`` YAML, one code path with
``examples/train.py``, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
import sys

import pytest

import dreamprm_trl
from dreamprm_trl.cli import main
from dreamprm_trl.training import FunctionStepPRMConfig
from dreamprm_trl.scripts import train as train_script


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dreamprm-code {dreamprm_trl.__version__}"


def _option_help(text: str, flag: str) -> str:
    """The help block of ``flag`` in argparse ``--help`` output, whitespace collapsed."""
    block = re.search(rf"^  {flag}\b(.*?)(?=^  -)", text, flags=re.S | re.M)
    assert block is not None, f"{flag} is not in the help"
    return " ".join(block.group(1).split())


def test_train_help_lists_config_fields_with_their_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: dreamprm-code train")
    defaults = {f.name: f.default for f in dataclasses.fields(FunctionStepPRMConfig)}
    assert defaults["label_smoothing"] == 0.1 and defaults["meta_method"] == "label_correction"
    assert _option_help(text, "--label_smoothing").endswith("(default: 0.1)")
    assert _option_help(text, "--meta_method").endswith("(default: label_correction)")
    # the demo's defaults replace the dataclass's and are what --help shows
    assert _option_help(text, "--meta_interval").endswith("(default: 4)")
    assert _option_help(text, "--backbone").endswith("(default: tiny-causal)")
    assert "--config FILE.yaml" in text


@pytest.fixture
def captured(monkeypatch):
    """Replace the experiment by a recorder of what it was called with."""
    calls = []

    def fake_run(experiment_args, training_args):
        calls.append((experiment_args, training_args))
        return {"table": [], "title": "", "comparisons": []}

    monkeypatch.setattr(train_script, "run_experiment", fake_run)
    return calls


def test_config_yaml_reaches_the_config_and_flags_win(tmp_path, captured):
    config = tmp_path / "run.yaml"
    config.write_text("meta_interval: 7\nlabel_smoothing: 0.25\nmethods: dreamprm\nbackbone: minilm\n")
    assert main(["train", "--config", str(config), "--label_smoothing", "0.05",
                 "--output_dir", str(tmp_path / "out")]) == 0
    (experiment_args, training_args), = captured
    assert training_args.meta_interval == 7
    assert training_args.label_smoothing == 0.05  # the command line wins over the YAML
    assert training_args.output_dir == str(tmp_path / "out")
    assert experiment_args.methods == "dreamprm" and experiment_args.backbone == "minilm"
    assert training_args.per_device_train_batch_size == 8  # a demo default nobody overrode


def test_shipped_tiny_config_parses_and_keeps_the_measured_meta_defaults(tmp_path, captured):
    """``examples/configs/tiny.yaml`` names only real fields and leaves the meta lr to its per-method default."""
    from pathlib import Path

    config = Path(__file__).parents[1] / "examples" / "configs" / "tiny.yaml"
    assert main(["train", "--config", str(config), "--output_dir", str(tmp_path)]) == 0
    (_, training_args), = captured
    assert training_args.meta_method == "label_correction" and training_args.max_steps == 60
    assert training_args.meta_learning_rate is None  # resolved per method by the trainer (0.5 for labels)
    assert training_args.meta_batch_size == 8 and training_args.learning_rate == 1e-3


def test_examples_train_and_the_cli_share_one_code_path(tmp_path, captured, monkeypatch):
    from pathlib import Path

    argv = ["--quick", "--meta_interval", "3", "--output_dir", str(tmp_path)]
    assert main(["train", *argv]) == 0
    monkeypatch.setattr(sys, "argv", ["examples/train.py", *argv])
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "train.py"), run_name="__main__")
    (cli_args, cli_config), (ex_args, ex_config) = captured
    assert cli_args == ex_args and cli_args.quick and cli_args.num_candidates == 4
    assert cli_config.meta_interval == ex_config.meta_interval == 3


def test_bad_train_flag_is_one_line(capsys, captured):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--meta_interval", "often"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--meta_interval" in err and "often" in err
    assert not captured


def test_unknown_train_flag_is_one_line(capsys, captured):
    assert main(["train", "--no_such_flag", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no_such_flag" in err
    assert not captured


def test_tiny_train_run_end_to_end(tmp_path, capsys):
    """~30 s on 2 CPU cores: bundled ClassEval, --quick sizes, one variant; the table and the model are written."""
    code = main(["train", "--quick", "--methods", "function", "--n_bootstrap", "50", "--disable_tqdm", "true",
                 "--output_dir", str(tmp_path / "model"), "--cache_dir", str(tmp_path / "cache"),
                 "--results_dir", str(tmp_path / "results")])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    keys = [row["key"] for row in results["table"]]
    assert keys == ["random", "parses_random", "function", "public_random", "oracle"]
    assert results["setup"]["arguments"]["methods"] == "function"
    assert results["setup"]["arguments"]["num_candidates"] == 4  # --quick
    assert (tmp_path / "results" / "results.md").read_text().strip() in printed
    function_row = results["table"][2]
    assert function_row["label"] == "PRM, function-as-step, no correction"
    assert 0.0 <= function_row["value"] <= results["table"][-1]["value"]  # never above the oracle

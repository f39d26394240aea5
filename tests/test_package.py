"""The public surface: every lazy export resolves, the light layers import without torch, the CLI is wired."""

import ast
import subprocess
import sys
from pathlib import Path

import dreamprm_trl

INIT = Path(dreamprm_trl.__file__)


def test_every_public_name_resolves_to_its_module():
    for name in dreamprm_trl.__all__:
        obj = getattr(dreamprm_trl, name)
        module = dreamprm_trl._EXPORTS[name]
        assert getattr(__import__(f"dreamprm_trl.{module}", fromlist=[name]), name) is obj


def test_type_checking_block_lists_exactly_the_exports():
    tree = ast.parse(INIT.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    names = {(imp.module, a.name) for imp in block.body for a in imp.names}
    assert names == {(module, name) for name, module in dreamprm_trl._EXPORTS.items()}


def test_sandbox_steps_problems_and_metrics_import_without_torch():
    code = ("import sys, dreamprm_trl, dreamprm_trl.sandbox, dreamprm_trl.problems, dreamprm_trl.steps, "
            "dreamprm_trl.prompts, dreamprm_trl.evaluation.metrics; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_lists_its_commands():
    out = subprocess.run([sys.executable, "-m", "dreamprm_trl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("label", "train", "rerank"):
        assert command in out.stdout


def test_importing_any_prm_module_registers_the_auto_classes():
    code = ("import dreamprm_trl.prm.inputs; from transformers import AutoConfig, AutoModel; "
            "cfg = AutoConfig.for_model('function_step_prm'); "
            "print(type(cfg).__module__, AutoModel._model_mapping[type(cfg)].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dreamprm_trl.prm.config", "FunctionStepPRM"]

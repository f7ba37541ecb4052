"""Imports flow one way: the bottom layers know nothing of the ones above, and nothing imports
the command line. Read from the source with ``ast``, so a lazy import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asr"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = _imports(path)
    return out


MODULES = _modules()
ABOVE_TRAINING = ("asr.train", "asr.train_log", "asr.cli", "asr.sweep", "asr.sweep_report", "asr.transcribe",
                  "asr.export")


def _imported(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in MODULES[module] if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("asr.cli", "asr.__main__")])
def test_nothing_imports_the_command_line(module):
    assert not _imported(module, ("asr.cli",))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("asr.data", "asr.text"))])
def test_data_and_text_know_nothing_of_models_or_training(module):
    assert not _imported(module, ("asr.model", "asr.ema", "asr.step", "asr.optim", "asr.evaluate",
                                  "asr.experiment", *ABOVE_TRAINING))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("asr.model")])
def test_the_model_knows_nothing_of_data_loading_or_distribution(module):
    assert not _imported(module, ("asr.data.loader", "asr.data.shards", "torch.distributed", "asr.step",
                                  *ABOVE_TRAINING))


def test_scaling_is_pure_math():
    assert not [n for n in MODULES["asr.scaling"] if n.split(".")[0] in ("torch", "numpy", "omegaconf")
                or n.startswith("asr.")]


@pytest.mark.parametrize("module", ["asr.evaluate", "asr.step", "asr.optim", "asr.state", "asr.experiment",
                                    "asr.runtime", "asr.ema", "asr.pseudo_label", "asr.metrics"])
def test_the_trainers_parts_do_not_import_the_trainer(module):
    assert not _imported(module, ABOVE_TRAINING)

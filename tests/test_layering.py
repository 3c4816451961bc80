"""The trainer side knows nothing about model families or objectives (issue: one objective
interface). Everything family-specific comes from ``objectives.base.Objective``."""

import ast
import pathlib
import re

import pytest

from objectives import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAINER_SIDE = ["launch/trainer.py", "launch/step.py", "launch/inputs.py", "launch/train.py",
                "launch/metrics.py"]
FAMILIES = ("t5", "electra", "bert", "mlm", "rtd")
NAMES = sorted(set(registry.OBJECTIVES) | set(FAMILIES))


def _code_strings(tree: ast.AST) -> list[str]:
    """String literals that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("path", TRAINER_SIDE)
def test_no_family_or_objective_names_on_the_trainer_side(path):
    tree = ast.parse((REPO / path).read_text())
    pattern = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, NAMES)) + r")(?![a-z0-9])",
                         re.IGNORECASE)
    found = [s for s in _code_strings(tree) if pattern.search(s)]
    assert not found, f"{path} names a family or objective: {found}"
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "family" not in attributes, f"{path} reads a model family"


def test_the_check_catches_a_name():
    tree = ast.parse('"""Docstrings may say T5."""\nx = "eval/disc_auc" if family == "electra" '
                     'else None\n')
    assert _code_strings(tree) == ["eval/disc_auc", "electra"]

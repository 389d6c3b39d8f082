"""Errors that reach callers of the serving path are predq's (issue 12, item 11): no bare
assert and no builtin exception raised in batcher.py or tasks.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modelstore import errors

ROOT = Path(__file__).resolve().parents[2]
SERVING = ("workers/batcher.py", "workers/tasks.py")


def _raised_names(tree: ast.AST) -> list[tuple[int, str]]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id[:1].isupper():
                names.append((node.lineno, exc.id))
    return names


@pytest.mark.parametrize("path", SERVING)
def test_serving_modules_raise_only_predq_errors(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not asserts, f"{path}: assert at line(s) {asserts} (stripped under -O)"
    foreign = [(line, name) for line, name in _raised_names(tree)
               if not issubclass(getattr(errors, name, Exception), errors.PredqError)]
    assert not foreign, f"{path}: raises outside predq's tree: {foreign}"


def test_every_predq_error_is_under_the_root_with_a_raised_when_docstring() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, Exception)]
    for cls in classes:
        assert issubclass(cls, errors.PredqError), cls
        assert (cls.__doc__ or "").startswith("Raised "), cls
    assert issubclass(errors.InvalidInput, errors.PredqError)

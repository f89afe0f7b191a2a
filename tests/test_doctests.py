"""The examples in serve_app's docstrings run, and say what the code does."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import serve_app

MODULES = sorted(m.name for m in pkgutil.walk_packages(serve_app.__path__, "serve_app."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_modules_with_examples_are_found() -> None:
    with_examples = [n for n in MODULES if doctest.DocTestFinder().find(importlib.import_module(n))
                     and any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(n)))]
    assert len(with_examples) >= 10, with_examples

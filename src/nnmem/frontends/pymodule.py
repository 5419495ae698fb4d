"""The Python front end: a model given as `path/to/file.py:build_fn` or `package.module:build_fn`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from nnmem.errors import ModelError, UsageError, did_you_mean


def load_factory(reference: str) -> Callable[..., Any]:
    """The object named by `file.py:name` or `package.module:name` (it must be callable).

    A file is imported as a module named after its stem, with its folder put on
    `sys.path`, so that a measuring subprocess can import it again by that name.
    """
    if ":" not in reference:
        raise UsageError(
            f"--model '{reference}' names no factory; write it as path/to/file.py:build_fn"
            " or package.module:build_fn"
        )
    where, _, name = reference.rpartition(":")
    if not where or not name:
        raise UsageError(f"--model '{reference}': expected FILE.py:NAME or MODULE:NAME")
    if where.endswith(".py") or os.sep in where:
        module = _import_file(where)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ModelError(f"--model '{reference}': cannot import module '{where}': {error}") from error
        except Exception as error:
            raise ModelError(
                f"--model '{reference}': importing '{where}' failed: {type(error).__name__}: {error}"
            ) from error
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise ModelError(f"--model '{reference}': '{where}' has no '{part}'{did_you_mean(part, names)}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"--model '{reference}': '{name}' is a {type(target).__name__}, not callable")
    return target  # type: ignore[no-any-return]


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelError(f"--model: no such file '{path}'")
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"--model: cannot load '{path}' as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[stem]
        raise ModelError(f"--model: running '{path}' failed: {type(error).__name__}: {error}") from error
    return module

"""Fail at once when a script starts a run without ``if __name__ == "__main__":``.

A run's local Dask workers are started by multiprocessing (forkserver or spawn), which
imports the calling script again in every worker. A script that calls
``taskgrouping.run`` at its top level, unguarded, then runs again in each worker, and
the workers never join: the run failed after 180 s (``no Dask worker joined``) in a
long log. :func:`check_main_guard` finds the script's top-level line that led to the
call and checks, on the script's syntax tree, that it lies under the guard.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

from taskgrouping.errors import InputError


def _guard_lines(tree: ast.Module) -> list[tuple[int, int]]:
    """Line ranges of the bodies of ``if __name__ == "__main__":`` blocks at the top of a module."""
    out = []
    for node in tree.body:
        if not isinstance(node, ast.If):
            continue
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            sides = [test.left, *test.comparators]
            names = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
            if names and main and node.body:
                out.append((node.body[0].lineno, max(getattr(n, "end_lineno", n.lineno) or n.lineno
                                                     for n in node.body)))
    return out


def unguarded_call() -> tuple[str, int] | None:
    """``(script, line)`` when this call comes from a script's top level outside the main guard, else None.

    None as well for what multiprocessing does not re-import: an interactive session,
    a notebook, ``python -c``, or a script whose source cannot be read.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    frame = inspect.currentframe()
    line = None
    while frame is not None:
        if frame.f_globals.get("__name__") in ("__main__", "__mp_main__") and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
            break
        frame = frame.f_back
    del frame
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None
    if any(lo <= line <= hi for lo, hi in _guard_lines(tree)):
        return None
    return str(path), line


def check_main_guard(what: str = "taskgrouping.run") -> None:
    """Raise :class:`InputError` naming the fix when :func:`unguarded_call` finds an unguarded call."""
    found = unguarded_call()
    if found is None:
        return
    script, line = found
    raise InputError(f"{script}:{line}: {what} starts worker processes, which import this script again: put the "
                     "call under `if __name__ == \"__main__\":` (see Python's multiprocessing guide, \"Safe "
                     "importing of main module\")")

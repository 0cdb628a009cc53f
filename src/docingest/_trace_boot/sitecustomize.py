"""Bootstrap of ``docingest trace``: first on the traced command's ``PYTHONPATH``.

Starts recording (:func:`docingest.trace.start_child_recording`), takes this directory off
``sys.path`` again, and runs the ``sitecustomize`` that this one shadows, if any.
"""

import importlib
import os
import sys


def _boot() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from docingest.trace import start_child_recording

        start_child_recording()
    except Exception as exc:  # never break the user's program
        print(f"docingest trace: calls in this process are not recorded: {exc!r}", file=sys.stderr)
    ours = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")  # the interpreter's own, now ours is off the path
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_boot()

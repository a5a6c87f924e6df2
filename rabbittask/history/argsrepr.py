"""The arguments of a task as the history shows them: a short repr, with masked values hidden.

The producer writes it once, in the `rt-argsrepr` header (Celery's `argsrepr`/`kwargsrepr` do the
same), so a worker copies a string into its events instead of formatting arguments on the hot
path, and a secret named in `@app.task(mask_args=(...))` never reaches the events, the history
stream or the dashboard.
"""

from __future__ import annotations

import reprlib
from collections.abc import Collection, Sequence
from typing import Any

ARGSREPR_CHARS = 200  # what the history keeps of the arguments; a search looks in this
MASK = "'***'"
H_ARGSREPR = "rt-argsrepr"

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10
_repr.maxlevel = 3


def args_repr(args: Sequence[Any], kwargs: dict[str, Any], params: Sequence[str], mask: Collection[str] = ()) -> str:
    """`(1, 'a', password='***')`: the call as a short string; arguments named in `mask` show `'***'`.

    A positional argument is masked by the name of its parameter in `params` (the task's signature).
    """
    parts = []
    for i, value in enumerate(args):
        masked = i < len(params) and params[i] in mask
        parts.append(MASK if masked else _repr.repr(value))
    for name, value in kwargs.items():
        parts.append(f"{name}={MASK if name in mask else _repr.repr(value)}")
    text = f"({', '.join(parts)})"
    return text if len(text) <= ARGSREPR_CHARS else text[: ARGSREPR_CHARS - 3] + "..."

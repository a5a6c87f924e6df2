"""Code reload for SIGHUP: forget the project's modules the app import brought in, and import it again.

Only modules loaded from the project's own files are re-imported; the standard library, installed
packages (a C extension cannot be loaded twice) and rabbittask itself stay as they are. The
supervisor then forks the new children from the freshly imported app.
"""

from __future__ import annotations

import importlib
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rabbittask.app import App


def project_modules(names: Iterable[str]) -> list[str]:
    """The modules among `names` loaded from project files (not stdlib, not installed, not rabbittask)."""
    paths = sysconfig.get_paths()
    installed = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    installed |= {*site.getsitepackages(), site.getusersitepackages()}
    prefixes = tuple(installed)
    out = []
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file or name == "rabbittask" or name.startswith("rabbittask."):
            continue
        if not file.startswith(prefixes) and not file.endswith((".so", ".pyd")):
            out.append(name)
    return sorted(out)


class AppLoader:
    """Loads an app with `load(spec)` and remembers which project modules that import brought in."""

    def __init__(self, spec: str, load: Callable[[str], App]) -> None:
        self.spec = spec
        self._load = load
        self.modules: list[str] = []

    def load(self) -> App:
        """Import the app (the first time, or again after `reload` forgot its modules)."""
        before = set(sys.modules)
        app = self._load(self.spec)
        self.modules = sorted(set(self.modules) | set(project_modules(set(sys.modules) - before)))
        return app

    def reload(self) -> App:
        """Forget the app's project modules and import it again; raises what the import raises."""
        for name in self.modules:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return self.load()

"""What rabbittask needs at run time: aio-pika is a bench dependency only (the hot path runs on aiormq)."""

from __future__ import annotations

import subprocess
import sys

IMPORT_EVERYTHING = """
import pkgutil, sys
import rabbittask
for info in pkgutil.walk_packages(rabbittask.__path__, "rabbittask."):
    if not info.name.endswith("__main__"):  # runs the CLI
        __import__(info.name)
print(sorted(m for m in sys.modules if m.split(".")[0] == "aio_pika"))
"""


def test_no_module_of_rabbittask_imports_aio_pika() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""The version of rabbittask: the one place it is written (pyproject.toml reads it from here).

Read from this module, not from the installed package's metadata: `importlib.metadata` costs
every worker and every `rabbittask` command tens of milliseconds of imports at start.
"""

__version__ = "0.1.0"

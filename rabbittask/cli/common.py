"""What the CLI commands share: loading the app named by `-A module:attribute`."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from rabbittask.app import App


def load_app(spec: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) and return the App, or fail with a clear message."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import error of the user's module is reported the same way
        raise click.ClickException(f"cannot import app module {module_name!r}: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, App):
        raise click.ClickException(
            f"{spec!r} is not a rabbittask App (found {type(obj).__name__}); use -A module:attribute"
        )
    return obj


APP_OPTION = click.option(
    "-A", "--app", "app_spec", required=True, metavar="MODULE:ATTR", help="The app to load, e.g. examples.emails:app."
)

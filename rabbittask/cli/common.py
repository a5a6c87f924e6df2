"""What the CLI commands share: loading the app named by `-A module:attribute`, and `-Q` queue lists."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

import click

from rabbittask.app import App


def load_app(spec: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) and return the App, or fail saying what to fix.

    A module that raises while it is imported is shown with its traceback (the frames of its own code,
    not of the import machinery): `KeyError: 'b'` alone does not say where.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise click.ClickException(f"-A {spec!r} names no module: use -A module:attribute, e.g. -A shop.tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise click.ClickException(
                f"cannot import app module {module_name!r} (-A {spec}): no module named {e.name!r} on the Python "
                f"path. Run the command from your project's root directory ({os.getcwd()} is on the path), set "
                "PYTHONPATH, or install your project in this environment"
            ) from None
        raise click.ClickException(_import_failure(module_name, e)) from None
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises is reported with its traceback
        raise click.ClickException(_import_failure(module_name, e)) from None
    obj: Any = module
    for depth, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name if depth == 0 else f"{module_name}:{'.'.join(attr.split('.')[:depth])}"
            raise click.ClickException(f"{where!r} has no attribute {part!r} (-A {spec}){_apps_in(module)}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise click.ClickException(
            f"{spec!r} is a {type(obj).__name__}, not a rabbittask App{_apps_in(module)}; use -A module:attribute"
        )
    return obj


def _import_failure(module_name: str, error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    own = [
        f for f in frames if f.filename != __file__ and "importlib" not in f.filename and "<frozen" not in f.filename
    ]
    text = "".join(traceback.format_list(own)) + "".join(traceback.format_exception_only(error))
    return (
        f"cannot import app module {module_name!r}: it raised {type(error).__name__} while being imported\n"
        f"Traceback (most recent call last):\n{text.rstrip()}"
    )


def _apps_in(module: Any) -> str:
    names = sorted(name for name, value in vars(module).items() if isinstance(value, App))
    if not names:
        return f"; module {module.__name__!r} defines no App"
    return f"; the App(s) in module {module.__name__!r}: {', '.join(f'{module.__name__}:{n}' for n in names)}"


def split_queues(text: str) -> list[str]:
    """`-Q emails,thumbs` (spaces allowed) as a list of queue names, without empty ones."""
    return [q.strip() for q in text.split(",") if q.strip()]


APP_OPTION = click.option(
    "-A", "--app", "app_spec", required=True, metavar="MODULE:ATTR", help="The app to load, e.g. shop.tasks:app."
)

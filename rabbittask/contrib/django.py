"""Django: an `App` configured from `settings.RABBITTASK_*`, tasks found in the installed apps' `tasks.py`,
and `task.delay_on_commit(...)`, which sends after the surrounding transaction commits.

`proj/rabbittask.py`, imported by the web process and by `rabbittask worker -A proj.rabbittask:app`:

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    app = DjangoApp("proj")      # sets Django up when it is not yet (the worker), reads RABBITTASK_* settings
    app.autodiscover_tasks()     # after `app` exists: each app's tasks.py imports it from here
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, Unpack, overload

import django
from django import conf  # conf.settings is read when used: a lazy object that raises until Django is set up
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from rabbittask.app import App
from rabbittask.context import TaskContext
from rabbittask.errors import ConfigError
from rabbittask.sending import NO_OPTIONS, Args, SendOptions
from rabbittask.settings import Settings
from rabbittask.task import Task

__all__ = ["DjangoApp", "DjangoTask", "rabbittask_settings"]

P = ParamSpec("P")
R = TypeVar("R")
PREFIX = "RABBITTASK_"


class DjangoTask(Task[P, R]):
    """A task of a `DjangoApp`: a `Task` that can also be sent when the current transaction commits."""

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Send the task once the current transaction commits (at once outside one); never if it rolls back.

        The arguments are checked now, so a bad call fails in the view. Returns the task id the message
        will carry. A broker error at commit time is raised from the block that committed (the data is
        committed by then).
        """
        return self._on_commit(args, kwargs, NO_OPTIONS, None)

    def apply_async_on_commit(
        self,
        args: Args = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Unpack[SendOptions],
    ) -> str:
        """`apply_async` once the transaction of database `using` (default: the default one) commits."""
        return self._on_commit(args, kwargs, options, using)

    def _on_commit(self, args: Args, kwargs: Mapping[str, Any] | None, options: SendOptions, using: str | None) -> str:
        msg = self._message(args, kwargs, options)
        transaction.on_commit(lambda: self.app.send(msg), using=using)
        return msg.message_id


class DjangoApp(App):
    """An `App` for a Django project: Django set up, settings from `settings.RABBITTASK_*`, `DjangoTask`s.

    Keyword `settings` given here win over the Django settings, which win over `RABBITTASK_*` variables.
    """

    task_class = DjangoTask

    def __init__(self, name: str, **settings: Any) -> None:
        setup_django()
        super().__init__(name, **{**rabbittask_settings(), **settings})
        self.on_worker_process_init(connections.close_all)  # a database connection must not cross the fork

    @overload
    def task(self, fn: Callable[P, R], /) -> DjangoTask[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[TaskContext, P], R]], DjangoTask[P, R]]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], DjangoTask[P, R]]: ...

    def task(self, fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
        """`@app.task` as on `App`, making `DjangoTask`s (with `delay_on_commit`)."""
        return super().task(fn, **options) if fn is not None else super().task(**options)

    def autodiscover_tasks(self, module: str = "tasks") -> list[str]:
        """Import `<app>.tasks` of every installed Django app that has one; return the modules imported.

        Call it after the app is assigned: those modules import the app from the module calling this.
        """
        found = []
        for config in apps.get_app_configs():
            name = f"{config.name}.{module}"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)  # an error in a tasks module is the user's to see, unchanged
                found.append(name)
        return found


def setup_django() -> None:
    """`django.setup()` unless Django is set up (a web process) or being set up (an AppConfig.ready)."""
    if apps.ready or apps.loading:
        return
    try:
        conf.settings.INSTALLED_APPS  # noqa: B018 - reading one setting loads the settings module
    except ImproperlyConfigured:
        raise ConfigError(
            "DjangoApp: Django's settings are not configured: set DJANGO_SETTINGS_MODULE (e.g. "
            "DJANGO_SETTINGS_MODULE=proj.settings rabbittask worker -A proj.rabbittask:app), or call "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings') before DjangoApp(...)"
        ) from None
    except ImportError as e:
        raise ConfigError(
            f"DjangoApp: the settings module {os.environ.get('DJANGO_SETTINGS_MODULE')!r} cannot be imported "
            f"({e}); is its directory on the Python path (the worker's working directory)?"
        ) from None
    django.setup()


def rabbittask_settings() -> dict[str, Any]:
    """The `RABBITTASK_*` Django settings as `App` keywords; `ConfigError` for a name that is no setting."""
    values = {}
    for key in dir(conf.settings):
        if not key.startswith(PREFIX):
            continue
        field = key.removeprefix(PREFIX).lower()
        if field not in Settings.model_fields:
            known = [PREFIX + name.upper() for name in Settings.model_fields]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"Django setting {key} is not a rabbittask setting{hint}; the settings are listed on the "
                "Settings page of the documentation, each as RABBITTASK_<NAME>"
            )
        values[field] = getattr(conf.settings, key)
    return values

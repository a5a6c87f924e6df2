"""MkDocs hook: the reference tables of the site, generated from the code so they cannot drift from it.

A page asks for a table with a line of its own, `<!-- reference: task-options -->`; this hook puts the
generated Markdown there when the site is built. The sources are the models that the code itself
reads: `TaskOptions` (what `@app.task` accepts), `Settings` (`App(...)` and `RABBITTASK_*`),
`WorkerOptions` with the worker's flags, and the click commands of the CLI. An unknown marker fails
the build. `tests/unit/test_docs_site.py` checks that every field and every command is in the output.
"""

from __future__ import annotations

import enum
import html
import importlib
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = re.compile(r"^<!-- reference: (?P<name>[a-z-]+) -->$", re.MULTILINE)


def type_text(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `"quorum" | "classic"`, `tuple[type[Exception], ...]`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_text(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        if annotation.__name__ == "SecretStr":
            return "str"  # kept secret in reprs, given as a plain string
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    """The default as Python code, e.g. `True`, `None`, `"quorum"`, `{}`."""
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"`{value:,.1f}`".replace(",", "_")
    return f"`{value!r}`"


_CODE_SPAN = re.compile(r"(`[^`]*`)")


def cell(text: str) -> str:
    """Text that stays inside one Markdown table cell; `<queue>` outside code spans is text, not HTML."""
    parts = _CODE_SPAN.split(" ".join(text.split()))
    escaped = (p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)
    return "".join(escaped).replace("|", "\\|")


def code(text: str) -> str:
    """A type in a table cell: `|` inside a Markdown code span would show its escape, so HTML it is."""
    return f"<code>{html.escape(text).replace('|', '&#124;')}</code>"


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    yield from model.model_fields.items()


def task_options() -> str:
    """Every option of `@app.task`, from `rabbittask.app.TaskOptions`."""
    from rabbittask.app import TaskOptions

    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, field in _fields(TaskOptions):
        kind = code(type_text(field.annotation))
        rows.append(f"| `{name}` | {kind} | {default_text(field)} | {cell(field.description or '')} |")
    return "\n".join(rows)


def settings() -> str:
    """Every `App` setting with its environment variable, from `rabbittask.settings.Settings`."""
    from rabbittask.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = ["| setting | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
    for name, field in _fields(Settings):
        rows.append(
            f"| `{name}` | `{prefix}{name.upper()}` | {code(type_text(field.annotation))} | {default_text(field)} "
            f"| {cell(field.description or '')} |"
        )
    return "\n".join(rows)


def worker_options() -> str:
    """Every `rabbittask worker` option: flag, `RABBITTASK_WORKER_*` variable, default, from `WorkerOptions`."""
    from rabbittask.cli.worker import worker
    from rabbittask.worker.options import WorkerOptions

    flags = {p.name: ", ".join(f"`{o}`" for o in p.opts) for p in worker.params if isinstance(p, click.Option)}
    prefix = str(WorkerOptions.model_config.get("env_prefix", ""))
    rows = ["| flag | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
    for name, field in _fields(WorkerOptions):
        rows.append(
            f"| {flags.get(name, '(none)')} | `{prefix}{name.upper()}` | {code(type_text(field.annotation))} "
            f"| {default_text(field)} | {cell(field.description or '')} |"
        )
    return "\n".join(rows)


def commands() -> list[tuple[str, click.Command]]:
    """Every command of the `rabbittask` CLI as (full name, command), groups before their subcommands."""
    from rabbittask.cli import main

    found: list[tuple[str, click.Command]] = []

    def walk(path: str, command: click.Command, parent: click.Context | None) -> None:
        ctx = click.Context(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
        found.append((path, command))
        if isinstance(command, click.Group):
            for sub_name in command.list_commands(ctx):
                sub = command.get_command(ctx, sub_name)
                if sub is not None and not sub.hidden:
                    walk(f"{path} {sub_name}", sub, ctx)

    walk("rabbittask", main, None)
    return found


def _usage(path: str, command: click.Command) -> str:
    ctx = click.Context(command, info_name=path)
    return f"{path} {' '.join(command.collect_usage_pieces(ctx))}".strip()


def cli() -> str:
    """Every command, argument and flag of the CLI, from the click commands (what `--help` prints)."""
    out: list[str] = []
    for path, command in commands():
        ctx = click.Context(command, info_name=path)
        level = "#" * min(2 + path.count(" "), 4)
        out += [f"{level} `{path}`", "", f"```text\n{_usage(path, command)}\n```", ""]
        help_text = (command.help or "").split("\f")[0].strip()
        if help_text:
            out += [_paragraphs(help_text), ""]
        if isinstance(command, click.Group):
            subs = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
            out += ["| command | what it does |", "|---|---|"]
            out += [f"| `{path} {name}` | {cell(sub.get_short_help_str(200))} |" for name, sub in subs if sub]
            out.append("")
        rows = []
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if isinstance(param, click.Argument):
                rows.append(f"| `{param.human_readable_name}` | argument{' (required)' if param.required else ''} |")
            elif record is not None:
                flags, text = record
                rows.append(f"| {code(flags)} | {cell(text)} |")
        if rows:
            out += ["| argument or flag | meaning |", "|---|---|", *rows, ""]
    return "\n".join(out)


def _paragraphs(text: str) -> str:
    """click help text (one paragraph per blank line, wrapped) as Markdown paragraphs."""
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text))


GENERATORS: dict[str, Callable[[], str]] = {
    "task-options": task_options,
    "settings": settings,
    "worker-options": worker_options,
    "cli": cli,
}


def render(markdown: str, page_name: str = "a page") -> str:
    """`markdown` with each reference marker replaced by its table; an unknown marker raises `ValueError`."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise ValueError(f"{page_name}: unknown reference {name!r}; known: {', '.join(sorted(GENERATORS))}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the reference markers of each page."""
    try:
        return render(markdown, page.file.src_uri)
    except ValueError as e:
        from mkdocs.exceptions import PluginError

        raise PluginError(str(e)) from None


def _import_check() -> None:  # pragma: no cover - lets `python docs/hooks/reference.py` show the tables
    for name, generate in GENERATORS.items():
        print(f"<!-- {name} -->\n{generate()}\n")


if __name__ == "__main__":  # pragma: no cover
    importlib.invalidate_caches()
    _import_check()

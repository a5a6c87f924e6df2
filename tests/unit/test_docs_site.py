"""The documentation site builds with --strict, its references cover the code, and its pages stay true.

What a test can check is checked here: the generated tables name every option, setting, flag and
command; every Python block on the site is a sample file (tests/integration/test_doc_samples.py
runs them); every path the README and the pages name exists; the protocol page lists every
dead-letter reason; no page points at a design file or an issue number.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest

from rabbittask.app import TaskOptions
from rabbittask.settings import Settings
from rabbittask.worker.options import WorkerOptions
from rabbittask.worker.outcome import Reason, Settlement

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SAMPLES = DOCS / "samples"
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$', re.MULTILINE)
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_text(page: Path) -> str:
    """A page as the site shows it: snippets of whole files included (deploy/README.md, CHANGELOG.md)."""
    text = page.read_text()
    return SNIPPET.sub(lambda m: (ROOT / m["path"]).read_text() if not m["section"] else m.group(0), text)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_site_builds_with_strict(tmp_path: Path) -> None:
    # Broken links, anchors, snippets and API references are errors under --strict
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    options = (tmp_path / "site" / "tasks.html").read_text()
    for name in TaskOptions.model_fields:  # the generated table made it into the page
        assert f"<code>{name}</code>" in options
    assert "rabbittask.App" in (tmp_path / "site" / "api.html").read_text()


def test_the_task_options_table_has_every_option_with_its_description() -> None:
    table = reference().task_options()
    for name, field in TaskOptions.model_fields.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert (field.description or "")[:30].replace("|", "\\|").split("<")[0] in row


def test_the_settings_table_has_every_setting_its_variable_and_default() -> None:
    table = reference().settings()
    assert "| `prefetch` | `RABBITTASK_PREFETCH` | <code>int</code> | `16` |" in table
    quorum_or_classic = "<code>&quot;quorum&quot; &#124; &quot;classic&quot;</code>"
    assert f'| `queue_type` | `RABBITTASK_QUEUE_TYPE` | {quorum_or_classic} | `"quorum"` |' in table
    for name in Settings.model_fields:
        assert f"| `{name}` | `RABBITTASK_{name.upper()}` |" in table


def test_the_worker_options_table_has_every_option_with_its_flag() -> None:
    table = reference().worker_options()
    assert "| `-c`, `--concurrency` | `RABBITTASK_WORKER_CONCURRENCY` | <code>int</code> | `1` |" in table
    for name in WorkerOptions.model_fields:
        row = next(line for line in table.splitlines() if f"`RABBITTASK_WORKER_{name.upper()}`" in line)
        assert "(none)" not in row, f"worker option {name} has no flag"


def test_the_cli_reference_has_every_command_and_flag() -> None:
    ref = reference()
    text = ref.cli()
    for path, command in ref.commands():
        assert f"`{path}`" in text
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.opts[0] in text, f"{path}: {param.opts[0]} missing"
    assert "#### `rabbittask dlq replay`" in text and "--log-format" in text


def test_an_unknown_reference_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="tasks.md: unknown reference 'task-option'; known: cli, settings"):
        reference().render("<!-- reference: task-option -->\n", "tasks.md")


EXCERPT = re.compile(r"^# (docs/samples/\S+\.py)\n")


def test_every_python_block_on_the_site_is_a_sample_file() -> None:
    # A block is a snippet include, or an excerpt headed by its file's path whose code is in that file.
    for page in PAGES:
        for block in FENCE.finditer(page.read_text()):
            if block["lang"] != "python":
                continue
            body = block["body"]
            excerpt = EXCERPT.match(body)
            if excerpt is not None:
                assert body[excerpt.end() :] in (ROOT / excerpt.group(1)).read_text(), (
                    f"{page.name}: an excerpt that is not in {excerpt.group(1)}"
                )
                continue
            lines = [line for line in body.splitlines() if line.strip()]
            assert lines and all(SNIPPET.match(line) for line in lines), (
                f"{page.name}: a Python block that is not a docs/samples file (so no test runs it):\n{body}"
            )


def test_every_snippet_names_a_file_and_a_section_that_exist() -> None:
    used = set()
    for page in PAGES:
        for m in SNIPPET.finditer(page.read_text()):
            path = ROOT / m["path"]
            assert path.is_file(), f"{page.name}: {m['path']} does not exist"
            used.add(path)
            if m["section"]:
                text = path.read_text()
                assert f"# --8<-- [start:{m['section']}]" in text and f"# --8<-- [end:{m['section']}]" in text, (
                    f"{page.name}: {m['path']} has no section {m['section']!r}"
                )
    excerpted = {
        ROOT / m.group(1) for page in PAGES for m in re.finditer(r"^# (docs/samples/\S+\.py)$", page.read_text(), re.M)
    }
    for sample in SAMPLES.rglob("*.py"):
        if sample.name in ("__init__.py", "conftest.py", "events_listen.py"):
            continue  # a package marker, the testing samples' fixtures, and the whole listener (events.md names it)
        # A sample no page shows is not documentation: show it or delete it.
        assert sample in used or sample in excerpted, f"{sample} is on no page"


def test_the_readme_quick_start_is_the_sample_the_tests_run() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [b["body"] for b in FENCE.finditer(readme) if b["lang"] == "python"]
    assert (SAMPLES / "shop" / "tasks.py").read_text() in blocks
    assert (SAMPLES / "producer.py").read_text() in blocks


def test_no_page_points_at_a_design_file_or_an_issue_number() -> None:
    for path in [*PAGES, ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md"]:
        text = site_text(path) if path.parent == DOCS else path.read_text()
        assert "DESIGN.md" not in text, f"{path.name} points at a design file users do not have"
        assert not re.search(r"\bissue(s)? \d+|#\d{2,}\b|the issue text", text, re.IGNORECASE), (
            f"{path.name} speaks of issue numbers: say what the product does"
        )


def test_every_dead_letter_reason_is_listed_in_the_protocol_page() -> None:
    page = (DOCS / "protocol.md").read_text()
    table = page[page.index("## Why a message was dead-lettered") : page.index("## Delaying a task")]
    for reason in Reason:
        if reason.settlement is Settlement.DEAD_LETTER:
            assert f"| `{reason.value}` | {'yes' if reason.ran else 'no'} |" in table, f"{reason.value!r} missing"


def test_the_protocol_header_table_is_one_table_with_one_row_per_header() -> None:
    page = (DOCS / "protocol.md").read_text()
    headers = page[page.index("## Headers rabbittask reads and writes") : page.index("## Why a message")]
    rows = re.findall(r"^\| `(rt-[\w-]+)`", headers, re.MULTILINE)
    assert len(rows) == len(set(rows)), f"a header is listed twice: {rows}"
    for name in ("rt-schedule", "rt-slot", "rt-fired-at", "rt-expires", "rt-eta", "rt-delivery-count"):
        assert name in rows
    delaying = page[page.index("## Delaying a task") : page.index("## Replies")]
    assert "| `rt-" not in delaying, "header rows sit under 'Delaying a task'"


def test_the_protocol_page_says_how_to_consume_direct_reply_to() -> None:
    page = (DOCS / "protocol.md").read_text()
    assert "amq.rabbitmq.reply-to" in page and "no-ack" in page and "same channel" in page
    for prop in ("`correlation_id`", "`message_id`", "`content_type`"):
        assert prop in page[page.index("## Replies") :]


PATH = re.compile(r"`((?:docs|deploy|examples|scripts|tests|bench|rabbittask)/[\w./-]+)`")


@pytest.mark.parametrize(
    "doc", [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md", *PAGES], ids=str
)
def test_every_path_a_document_names_exists(doc: Path) -> None:
    for m in PATH.finditer(doc.read_text()):
        path = m.group(1).rstrip(".").split("::")[0]
        if path.startswith("bench/results/"):
            continue  # written by `make bench`
        assert (ROOT / path).exists(), f"{doc.relative_to(ROOT)} names {path}, which does not exist"


def test_the_deploy_readme_lists_every_file_of_deploy() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and path.name != "README.md" and not path.name.startswith("."):
            relative = path.relative_to(ROOT / "deploy").as_posix()
            listed = f"`{relative}`" in text or f"`{relative.split('/')[0]}/`" in text and "kubernetes" in relative
            assert listed or f"`{path.name}`" in text, f"deploy/README.md does not list {relative}"
    assert "`kubernetes/beat-deployment.yaml`" in text and "`systemd/rabbittask-beat.service`" in text


def test_the_send_options_are_all_on_the_calling_page() -> None:
    from rabbittask.sending import SEND_OPTIONS

    page = (DOCS / "calling.md").read_text()
    for option in SEND_OPTIONS:
        assert f"| `{option}` |" in page


def test_the_celery_page_has_a_row_for_each_habit_and_says_planned_for_what_is_coming() -> None:
    page = (DOCS / "celery.md").read_text()
    for habit in (
        "delay(",
        "apply_async(",
        "countdown",
        "expires",
        "AsyncResult",
        "send_task",
        "chain",
        "group",
        "chord",
        "celery beat",
        "inspect",
        "revoke",
        "rate_limit",
        "acks_late",
        "task_always_eager",
        "--autoscale",
        "-P prefork",
        "-P gevent",
        "worker_process_init",
        "task_prerun",
        "app.conf",
        "Django",
    ):
        assert habit in page, f"the Celery page has no row for {habit}"
    planned = [line for line in page.splitlines() if "**planned**" in line]
    for coming in ("starmap", "interop"):
        assert any(coming in line for line in planned), f"{coming} is not said to be planned"
    assert not re.search(r"#\d+|issue", page, re.IGNORECASE)


COMMAND = re.compile(r"^\s*(rabbittask [^#\n]*?)\s*(?:#.*)?$", re.MULTILINE)


def test_every_rabbittask_command_line_in_the_docs_uses_flags_that_exist() -> None:
    ref = reference()
    commands = dict(ref.commands())
    for doc in [ROOT / "README.md", ROOT / "deploy" / "README.md", *PAGES]:
        for block in FENCE.finditer(doc.read_text()):
            if block["lang"] not in ("bash", "sh"):
                continue
            for m in COMMAND.finditer(block["body"].replace("\\\n", " ")):  # continued lines as one
                words = shlex.split(m.group(1).replace("[", "").replace("]", ""))
                path = "rabbittask"
                while len(words) > 1 and f"{path} {words[1]}" in commands:
                    path = f"{path} {words.pop(1)}"
                command = commands[path]
                flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
                for word in words[1:]:
                    flag = word.split("=")[0]
                    if flag.startswith("-") and flag != "-":
                        assert flag in flags, f"{doc.name}: `{m.group(1)}`: {path} has no flag {flag}"

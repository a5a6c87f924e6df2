"""The project's rabbittask app: imported by the views (through notes/tasks.py) and by the worker,
`DJANGO_SETTINGS_MODULE=proj.settings rabbittask worker -A proj.rabbittask:app`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

from rabbittask.contrib.django import DjangoApp  # noqa: E402

app = DjangoApp("proj")  # sets Django up in the worker; reads settings.RABBITTASK_*
app.autodiscover_tasks()  # imports notes/tasks.py (and every other installed app's tasks.py)

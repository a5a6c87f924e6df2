"""The Celery project a real `celery worker` runs in the interop tests (settings from RT_* variables)."""

from __future__ import annotations

import os

from tests.celery_side import celery_app

app = celery_app(os.environ["RT_BROKER"], os.environ["RT_TEST_PREFIX"], backend=os.environ.get("RT_BACKEND") or None)

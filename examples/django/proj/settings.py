"""Settings of the example project; rabbittask reads the RABBITTASK_* ones (DjangoApp)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "notes"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "proj.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# SQLite (NOTES_DB names the file), or PostgreSQL on 127.0.0.1:5432 when NOTES_PG names a database.
if os.environ.get("NOTES_PG"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["NOTES_PG"],
            "USER": os.environ.get("NOTES_PG_USER", "postgres"),
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("NOTES_DB", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {"timeout": 20},  # the web process and the worker write the same file
        }
    }

# rabbittask: any setting, as RABBITTASK_<NAME> (the broker URL from the environment here)
RABBITTASK_BROKER_URL = os.environ.get("RABBITTASK_BROKER_URL", "amqp://guest:guest@localhost:5672/")
RABBITTASK_EXCHANGE = "notes"
RABBITTASK_DEFAULT_QUEUE = "notes"

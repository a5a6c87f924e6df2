# A result-backend plugin (docs/results.md): results in a SQLite file. Run it: python sqlite_backend.py
# --8<-- [start:plugin]
# rabbittask_sqlite/__init__.py
import sqlite3
import threading
import time
from urllib.parse import urlsplit

from rabbittask import ResultBackend, ResultBackendError


class SqliteBackend(ResultBackend):
    """Results in a SQLite file: result_backend="sqlite:///var/lib/shop/results.db"."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = urlsplit(url).path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(self.path, isolation_level=None)
            self._local.db.execute(
                "create table if not exists results (id text primary key, record blob, expires real)"
            )
        return self._local.db

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        try:
            self._db().execute("replace into results values (?, ?, ?)", (task_id, record, time.time() + expires_s))
        except sqlite3.Error as e:
            raise ResultBackendError(f"storing the result of {task_id} failed: {e}") from e

    def fetch(self, task_id: str) -> bytes | None:
        row = (
            self._db()
            .execute("select record from results where id = ? and expires > ?", (task_id, time.time()))
            .fetchone()
        )
        return row[0] if row else None

    def forget(self, task_id: str) -> None:
        self._db().execute("delete from results where id = ?", (task_id,))


# --8<-- [end:plugin]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backend = SqliteBackend(f"sqlite://{tmp}/results.db")
        backend.store("t-1", b'{"v": 1, "ok": true, "status": "SUCCESS", "task": "x", "result": 5}', 60)
        print(backend.fetch("t-1"))
        print(backend.wait("t-1", 1.0) is not None)  # the default wait() polls fetch()
        backend.forget("t-1")
        print(backend.fetch("t-1"))  # None

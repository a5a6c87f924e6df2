"""An app module that cannot be imported: the worker must exit with the error, not respawn."""

raise RuntimeError("this app is broken on purpose")

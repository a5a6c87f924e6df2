"""The worker: a child process's consume loop (child.py), task execution and acknowledgements."""

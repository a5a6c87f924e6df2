"""The worker: the supervisor (supervisor.py) and its children, each a walk of stages wired in child.py."""

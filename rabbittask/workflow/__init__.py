"""Workflows: chains, groups and chords of tasks (canvas.py), their wire fields (wire.py) and the join (join.py)."""

"""Tools for operators: what runs now, dead letters, and the topology on a live broker.

`status` reads live workers from their heartbeats and queue depths from passive declares; `dlq`
reads, replays and purges dead-letter queues; `admin/` exports, compares and applies the topology.
The CLI (`rabbittask status`, `dlq`, `topology`) and the dashboard are built on them.
"""

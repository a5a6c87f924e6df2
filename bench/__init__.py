"""`make bench`: rabbittask against raw pika / aio-pika / aiormq on the same broker, in one run.

Entry point: ``python -m bench.run`` (see bench/README.md).
"""

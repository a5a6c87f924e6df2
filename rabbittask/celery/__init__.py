"""Celery interoperability: rabbittask workers run Celery protocol 2 messages and answer Celery's result
requests; rabbittask producers send Celery messages (docs/celery-migration.md).

`protocol.py` is the wire format as pure functions; `queues.py` the Celery queue's options;
`delivery.py` turns a delivered Celery message into one the worker's stages read; `results.py` writes
Celery's results (rpc:// replies, the Redis layout); `finish.py` what a worker does after a Celery
task ran (results, chains and callbacks) before its ack; `send.py` the producer side.
"""

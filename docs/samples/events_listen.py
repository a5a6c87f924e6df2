# Listen to task events and heartbeats (docs/events.md). With a worker running: python events_listen.py
import json
import os

import pika

exchange = os.environ.get("RABBITTASK_EXCHANGE", "rabbittask") + ".events"
conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("RABBITTASK_BROKER_URL", "amqp://localhost")))
channel = conn.channel()
my_queue = channel.queue_declare("", exclusive=True).method.queue  # a queue of your own, gone when you go
# --8<-- [start:bind]
channel.queue_bind(my_queue, exchange, "task.failed.#")  # failures of every task
channel.queue_bind(my_queue, exchange, "worker.*")  # heartbeats
# --8<-- [end:bind]
for method, _, body in channel.consume(my_queue, auto_ack=True, inactivity_timeout=10):
    if method is None:
        raise SystemExit("no event within 10 s: is a worker running?")
    event = json.loads(body)  # a heartbeat, or a batch of task events of one routing key
    print(method.routing_key, event["host"], event["pid"])
    break
conn.close()

# Enqueue a task from raw pika, following docs/protocol.md alone (any language can do the same).
# A worker of shop.tasks:app runs it: rabbittask worker -A shop.tasks:app
# --8<-- [start:publish]
import json
import os
import uuid

import pika

conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("RABBITTASK_BROKER_URL", "amqp://localhost")))
ch = conn.channel()
ch.confirm_delivery()  # basic_publish now raises if the broker nacks or returns the message
ch.basic_publish(
    exchange=os.environ.get("RABBITTASK_EXCHANGE", "rabbittask"),
    routing_key="mail",  # the task's queue
    body=json.dumps({"v": 1, "args": ["ada@example.com", "from pika"], "kwargs": {}}).encode(),
    properties=pika.BasicProperties(
        content_type="application/json",
        type="shop.tasks.send_email",  # the task name
        message_id=str(uuid.uuid4()),  # the task id
        delivery_mode=2,
    ),
    mandatory=True,
)
conn.close()
# --8<-- [end:publish]
print("published and confirmed")

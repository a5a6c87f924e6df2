# Call a task and wait for its answer over direct reply-to, from raw pika (docs/protocol.md, "Replies").
# --8<-- [start:rpc]
import json
import os
import uuid

import pika

conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("RABBITTASK_BROKER_URL", "amqp://localhost")))
ch = conn.channel()
replies: list[bytes] = []
# 1. Consume the pseudo-queue amq.rabbitmq.reply-to in no-ack mode, on this channel, BEFORE publishing.
ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, body: replies.append(body), auto_ack=True)
task_id = str(uuid.uuid4())
# 2. Publish the request on the same channel, with reply_to set to that pseudo-queue.
ch.basic_publish(
    exchange=os.environ.get("RABBITTASK_EXCHANGE", "rabbittask"),
    routing_key="mail",
    body=json.dumps({"v": 1, "args": ["bob@example.com", "rpc"], "kwargs": {}}).encode(),
    properties=pika.BasicProperties(
        content_type="application/json",
        type="shop.tasks.send_email",
        message_id=task_id,
        correlation_id=task_id,
        reply_to="amq.rabbitmq.reply-to",
        delivery_mode=2,
    ),
)
# 3. Wait for the reply: a result record whose correlation_id is the request's.
while not replies:
    conn.process_data_events(time_limit=1)
record = json.loads(replies[0])
print(record["status"], record.get("result"))  # SUCCESS sent 'rpc' to bob@example.com
conn.close()
# --8<-- [end:rpc]

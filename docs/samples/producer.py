# producer.py: send tasks from any process that imports shop.tasks (a web app, a script, a notebook).
from shop.tasks import app, send_email, thumbnail

handle = send_email.delay("ada@example.com", "hello")  # returns once the broker has confirmed it
print("queued", handle.id)

print(send_email.call("bob@example.com", "hi", timeout=10))  # waits for a worker's answer
print(thumbnail.call(7, size=64, timeout=10))
app.close()

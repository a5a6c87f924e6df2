# shop/tasks.py: the app and its tasks; producers and the worker both import this module.
from rabbittask import App

app = App("shop")  # the broker: RABBITTASK_BROKER_URL, default amqp://guest:guest@localhost:5672/


@app.task(queue="mail")
def send_email(to: str, subject: str, body: str = "") -> str:
    print(f"sending {subject!r} to {to}")
    return f"sent {subject!r} to {to}"


@app.task(queue="images")
async def thumbnail(image_id: int, size: int = 128) -> dict[str, int]:
    return {"image_id": image_id, "size": size}

# Progress and masked arguments (docs/tasks.md, docs/calling.md, docs/events.md).
# Start a worker: rabbittask worker -A progress_history:app; then run: python progress_history.py
import time

from rabbittask import App, Progress, TaskContext

app = App("progress-tour")


# --8<-- [start:mask]
@app.task(queue="accounts", mask_args=("password", "card_number"))
def sign_up(email: str, password: str, card_number: str) -> None: ...


# the history shows: ('ann@example.com', '***', '***')
# --8<-- [end:mask]


# --8<-- [start:unique]
@app.task(queue="accounts", unique_for=60, unique_key=lambda user_id, since="": str(user_id))
def send_digest(user_id: int, since: str = "") -> None: ...


# send_digest.delay(7).duplicate          -> False: sent
# send_digest.delay(7, "mon").duplicate   -> True within the minute: not sent
# --8<-- [end:unique]


# --8<-- [start:progress]
@app.task(queue="albums", bind=True)
def resize_all(ctx: TaskContext, album_id: int) -> int:
    photos = [f"photo-{album_id}-{n}.jpg" for n in range(1, 6)]
    for i, photo in enumerate(photos, 1):
        time.sleep(0.5)  # resizing...
        ctx.progress(i, len(photos), f"resized {photo}")
    return len(photos)


# --8<-- [end:progress]


if __name__ == "__main__":
    print(sign_up.message(("ann@example.com", "hunter2", "4111 1111 1111 1111")).headers)
    first, second = send_digest.delay(7), send_digest.delay(7, "mon")
    print(f"duplicates: {first.duplicate} {second.duplicate}")

    # --8<-- [start:call]
    def show(p: Progress) -> None:
        print(f"{p.done}/{p.total} {p.note}")

    count = resize_all.call(7, timeout=60, on_progress=show)
    # --8<-- [end:call]
    print(f"resized {count}")
    app.close()

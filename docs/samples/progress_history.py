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

    # --8<-- [start:call]
    def show(p: Progress) -> None:
        print(f"{p.done}/{p.total} {p.note}")

    count = resize_all.call(7, timeout=60, on_progress=show)
    # --8<-- [end:call]
    print(f"resized {count}")
    app.close()

# control.py: ask the running workers what they do, and revoke a task (start `rabbittask worker -A shop.tasks:app`).
import time

from shop.tasks import app, send_email

from rabbittask import TaskContext


# --8<-- [start:terminate]
@app.task(bind=True, queue="mail")
def rebuild_index(ctx: TaskContext, shard: int) -> None:
    for _step in range(100):
        ctx.check_revoked()  # raises TaskRevoked once revoked with terminate=True
        time.sleep(0.1)  # one step of the work


# --8<-- [end:terminate]


# --8<-- [start:rate]
@app.task(queue="images", rate_limit="100/s")  # also "10/m", "5/h"; a bare number is per second
def resize(image_id: int) -> None: ...


# --8<-- [end:rate]

# --8<-- [start:inspect]
replies = app.control.ping(timeout=1.0)  # every worker child answers over direct reply-to
print(sorted(set(replies.replies.values())), "missing:", replies.missing)
registered = app.control.inspect(timeout=1.0).registered()  # replies by child: "host:pid" -> task names
print(sum("shop.tasks.send_email" in names for names in registered.replies.values()) > 0, "send_email is served")
# --8<-- [end:inspect]

# --8<-- [start:revoke]
handle = send_email.apply_async(args=("ada@example.com", "never sent"), countdown=5)
handle.revoke()  # or app.control.revoke(handle.id); kept on the broker for revoke_retention_s
print("revoked", handle.id)
# --8<-- [end:revoke]

# --8<-- [start:rate-now]
app.control.rate_limit("control.resize", "10/s")  # for every worker, also those started later; None: no limit
# --8<-- [end:rate-now]
app.close()

# Migrating from Celery one queue at a time (docs/celery-migration.md): a rabbittask app on Celery's queue.
from rabbittask import App

# --8<-- [start:worker]
# proj/rt_tasks.py: the tasks of Celery's queue "celery", under the names Celery gives them
app = App("proj", accept_celery=True, default_queue="celery", celery_result_backend="rpc://")


@app.task(name="proj.tasks.add")  # the Celery task's name: Celery producers send to it unchanged
def add(x: int, y: int) -> int:
    return x + y


# --8<-- [end:worker]


# --8<-- [start:producer]
# A producer moved to rabbittask: a Celery protocol 2 message that a Celery worker (or a rabbittask one) runs
handle = add.delay(2, 3)  # a task declared with accept_celery sends Celery messages
other = app.send_task("proj.tasks.mul", args=[2, 3], queue="celery", celery=True)  # a task only Celery has
print(handle.task_name, other.task_name)
# --8<-- [end:producer]

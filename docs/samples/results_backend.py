# Results stored in a backend (docs/results.md). The worker and this script both need the backend's URL:
#   RABBITTASK_RESULT_BACKEND=redis://localhost:6379/0 rabbittask worker -A shop.tasks:app
#   RABBITTASK_RESULT_BACKEND=redis://localhost:6379/0 python results_backend.py
from shop.tasks import app, send_email

# --8<-- [start:handle]
handle = send_email.delay("ada@example.com", "hello")
print(handle.state)  # PENDING until a worker stored the result, then SUCCESS or FAILURE
print(handle.get(timeout=10))  # the return value; a failed task raises TaskError here
print(handle.ready(), handle.successful(), handle.failed())  # True True False

later = send_email.handle(handle.id)  # a handle from an id kept elsewhere (a web session, a database row)
print(later.get(timeout=1))
later.forget()  # delete the stored result now, before it expires
# --8<-- [end:handle]
app.close()

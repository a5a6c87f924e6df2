"""The control plane: inspect and ping worker children, revoke tasks durably; over RabbitMQ alone.

    client.py   `app.control`: broadcast a command and gather the answers, revoke
    roster.py   who should answer: the presence stream's recent heartbeats
    wire.py     commands, replies and revocation records on the wire; signing of control messages
    local.py    what one worker process knows: revocations in the window, runs under way

The worker's side is `rabbittask/worker/control.py` (answer, follow, be present) and the revoke
stage `rabbittask/worker/revoke.py`.
"""

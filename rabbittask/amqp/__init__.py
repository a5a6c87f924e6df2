"""The connection layer every other part builds on: how rabbittask reaches the broker.

* `connect.py`: aiormq connections (failover between nodes, TLS, clear errors), the errors that
  mean "connection lost", and the error of a refused permission.
* `blocking.py`: the same for pika's `BlockingConnection` (sync publishing, sync RPC, the CLI).
* `properties.py`: the AMQP properties of an `Outgoing` message, for either client.
* `link.py`: `Link` and `BlockingLink`, the one connection holder of each client: open on
  demand, set up the main channel, close quietly.
"""

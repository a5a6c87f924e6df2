"""Task history kept on the broker: the `<exchange>.history` stream and what reads it.

stream.py    declare the stream (bound to `task.#` and `beat.#` of the events exchange) and read it back
query.py     which events a search asks for (`rabbittask events` flags, the dashboard's search)
"""

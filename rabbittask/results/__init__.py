"""Results: RPC over direct reply-to (`sync_rpc.py` for `.call()`, `rpc.py` for `.acall()`), the result
record both share with stored results (`record.py`), and result-backend plugins (`backend.py`,
`backends/`)."""

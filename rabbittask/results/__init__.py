"""Results: RPC over direct reply-to (rpc.py); result backends come as plugins."""

# Per-key order and tenant fairness (docs/partitions.md).
# Worker: rabbittask worker -A partitions:app -c 2    Then: python partitions.py
import time

from rabbittask import App

app = App("bank")


# --8<-- [start:ordered]
@app.task(queue="ledger", partition_by="account_id", partitions=8)
def post_entry(account_id: int, seq: int, amount_cents: int) -> float:
    """Entries of one account run one at a time, in the order they were sent."""
    time.sleep(0.01)
    return time.time()  # when it ran, for the check below


# --8<-- [end:ordered]


# --8<-- [start:fair]
@app.task(queue="statements", fair_by="tenant_id", partitions=16)
def build_statement(tenant_id: str, month: str) -> str:
    """One tenant's thousand statements wait in their own partition, not in front of everyone's."""
    return f"{tenant_id}: statement for {month}"


# --8<-- [end:fair]


# --8<-- [start:skip]
@app.task(queue="profiles", partition_by="customer_id", partitions=4, partition_retry="skip")
def refresh_profile(customer_id: int) -> None:
    """A retry goes behind the later refreshes of its customer instead of holding up its partition."""


# --8<-- [end:skip]

# --8<-- [start:run]
if __name__ == "__main__":
    handles = {account: [post_entry.delay(account, seq, 100) for seq in range(5)] for account in (1, 2, 3)}
    for account, sent in handles.items():
        ran_at = [h.get(timeout=30) for h in sent]
        assert ran_at == sorted(ran_at), ran_at  # in publish order, one after another
        print(f"account {account}: 5 entries ran in order")
    print(build_statement.delay("acme", "2026-11").get(timeout=30))
# --8<-- [end:run]

"""The rate-limit minter's arithmetic: how many tokens a tick mints (worker/rates.py)."""

from __future__ import annotations

import pytest

from rabbittask.control.rates import parse_rate
from rabbittask.worker.rates import tokens_to_mint


def test_the_minter_tops_the_bucket_up_and_never_pays_back_a_stall() -> None:
    rate = parse_rate("20/s")
    assert tokens_to_mint(rate, 1.4, 0) == (1, pytest.approx(0.4))  # a tick's worth, the fraction kept
    assert tokens_to_mint(rate, 3.2, 0) == (3, pytest.approx(0.2))  # a late tick is paid back
    assert tokens_to_mint(rate, 60.0, 0) == (5, 0.0)  # a 3 s stall: a quarter second's worth, the rest dropped
    assert tokens_to_mint(rate, 2.0, 5) == (0, 0.0)  # the bucket is full: nothing
    burst = parse_rate("20/s", burst=50)
    assert tokens_to_mint(burst, 60.0, 10) == (40, 0.0)  # up to the burst
    fast = parse_rate("1000/s")
    assert tokens_to_mint(fast, 50.0, 0) == (50, 0.0)  # a tick at 1000/s is 50 tokens

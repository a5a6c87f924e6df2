"""The one line of set-up the rabbittask fixtures need: which app they test."""

import pytest
import shop

from rabbittask import App


@pytest.fixture
def rabbittask_app() -> App:
    return shop.app

"""Fixtures for the verifier node's tests (helpers live in server_helpers.py, the test-side drafter in drafting_client.py)."""

from __future__ import annotations

import pytest

from server_helpers import PROMPTS, ad_tokens


@pytest.fixture(scope="module")
def ad_reference(toy_pair):
    """AD outputs of the toy target for PROMPTS, 12 new tokens each."""
    return ad_tokens(toy_pair[1], PROMPTS, 12)

"""Tokens: what the verifier and its cache accept, and for how long."""

from __future__ import annotations

import time

import jwt
import pytest

from hub.domain.auth import Role, TokenCache, issue_token
from hub.errors import Unauthorized

SECRET = "unit-test-secret-unit-test-secret"


def sign(claims: dict[str, object]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_time_claim_given_as_a_string_is_refused(claim: str) -> None:
    """A numeric string in exp/nbf/iat is refused (it was cached as a token that never expires)."""
    value = str(int(time.time()) + (3600 if claim == "exp" else -10))
    token = sign({"sub": "cust-1", "role": "customer", claim: value})
    with pytest.raises(Unauthorized) as refused:
        TokenCache(SECRET).principal(token)
    assert refused.value.code == "invalid_token"


def test_a_cached_token_stops_working_when_it_expires() -> None:
    """The cache honours exp: a token that worked is refused once its time has passed."""
    cache = TokenCache(SECRET)
    token = sign({"sub": "cust-1", "role": "customer", "exp": time.time() + 1})
    assert cache.principal(token).role is Role.CUSTOMER
    time.sleep(1.2)
    with pytest.raises(Unauthorized) as refused:
        cache.principal(token)
    assert refused.value.code == "token_expired"


def test_tokens_the_hub_issues_are_accepted() -> None:
    """hub token's own output (with and without a ttl) verifies."""
    cache = TokenCache(SECRET)
    assert cache.principal(issue_token(SECRET, "rest-1", "restaurant")).tenant == "rest-1"
    assert cache.principal(issue_token(SECRET, "drv-1", "driver", ttl=60)).role is Role.DRIVER

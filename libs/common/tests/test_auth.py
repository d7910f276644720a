"""The credentials of a request: a bearer token, the internal secret read exactly once."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from paylane_common.web.auth import DuplicateHeader, bearer_token, internal_secret_ok

SECRET = "an-internal-secret"


def _request(*headers: tuple[str, str]) -> web.Request:
    return make_mocked_request("GET", "/", headers=CIMultiDict(headers))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc.def ", "abc.def"),
        ("Basic abc", ""),
        ("Bearer", ""),
        ("Bearer   ", ""),
        ("", ""),
    ],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(_request(("Authorization", header))) == token


def test_no_authorization_header_is_no_token() -> None:
    assert bearer_token(_request()) == ""


def test_internal_secret_must_match_exactly() -> None:
    assert internal_secret_ok(_request(("X-Internal-Secret", SECRET)), SECRET)
    assert internal_secret_ok(_request(("x-internal-secret", SECRET)), SECRET)
    assert not internal_secret_ok(_request(("X-Internal-Secret", SECRET + "x")), SECRET)
    assert not internal_secret_ok(_request(), SECRET)


def test_an_unset_secret_matches_nothing() -> None:
    assert not internal_secret_ok(_request(("X-Internal-Secret", "")), "")
    assert not internal_secret_ok(_request(), "")


def test_a_secret_given_twice_is_refused_whatever_the_values() -> None:
    twice = _request(("X-Internal-Secret", SECRET), ("X-Internal-Secret", SECRET))
    with pytest.raises(DuplicateHeader, match="X-Internal-Secret"):
        internal_secret_ok(twice, SECRET)

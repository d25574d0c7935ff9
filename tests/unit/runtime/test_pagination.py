"""AIP-158 page sizes and tokens."""

from __future__ import annotations

import pytest

from ciq_runtime.errors import InvalidArgument
from ciq_runtime.pagination import encode_page_token, page_request


def test_default_and_maximum_page_size() -> None:
    assert page_request(page_size=0, page_token="", params={}).size == 50
    assert page_request(page_size=5000, page_token="", params={}).size == 1000
    assert page_request(page_size=7, page_token="", params={}, default_size=3).size == 7


def test_negative_page_size_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        page_request(page_size=-1, page_token="", params={})
    assert info.value.field == "page_size"


def test_token_round_trip() -> None:
    params = {"filter": 'user_id = "u1"', "order_by": "created_at desc"}
    token = encode_page_token(last_sort_key=["2026-01-01T00:00:00+00:00", "id-9"], params=params)
    page = page_request(page_size=10, page_token=token, params=params)
    assert page.after == ["2026-01-01T00:00:00+00:00", "id-9"]


def test_token_rejected_when_the_filter_changes() -> None:
    token = encode_page_token(last_sort_key=[1], params={"filter": "a"})
    with pytest.raises(InvalidArgument) as info:
        page_request(page_size=10, page_token=token, params={"filter": "b"})
    assert info.value.field == "page_token"
    assert "different filter" in str(info.value)


@pytest.mark.parametrize("token", ["garbage!", "e30", "eyJ2IjoyLCJmIjoieCIsImEiOltdfQ"])
def test_malformed_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        page_request(page_size=10, page_token=token, params={})
    assert info.value.field == "page_token"

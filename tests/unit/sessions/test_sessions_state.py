"""State prefix rules (pure functions of sessions_svc.state)."""

from __future__ import annotations

import pytest

from ciq_runtime.errors import InvalidArgument
from sessions_svc.state import Changes, keys_from_mask, merged_view, split_delta


def test_split_routes_keys_by_prefix_and_drops_temp() -> None:
    delta = split_delta(
        {"a": 1, "app:x": 2, "user:y": 3, "temp:z": 4, "gone": None, "app:old": None},
        field="f",
    )
    assert delta.session == Changes(set={"a": 1}, delete=["gone"])
    assert delta.app == Changes(set={"x": 2}, delete=["old"])
    assert delta.user == Changes(set={"y": 3}, delete=[])
    assert bool(delta)


def test_a_delta_of_only_temp_keys_changes_nothing() -> None:
    assert not split_delta({"temp:a": 1, "temp:b": None}, field="f")


@pytest.mark.parametrize("key", ["", "app:", "user:", "temp:", "a\x00b", "k" * 257])
def test_invalid_keys_are_rejected_with_the_field(key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        split_delta({key: 1}, field="event.actions.state_delta")
    assert info.value.field == "event.actions.state_delta"


def test_merged_view_puts_prefixes_back_in_adk_order() -> None:
    view = merged_view({"s": 1, "app:shadow": 0}, {"u": 2}, {"a": 3, "shadow": 9})
    assert view == {"s": 1, "app:shadow": 9, "app:a": 3, "user:u": 2}
    assert list(view) == ["s", "app:shadow", "app:a", "user:u"]
    assert merged_view({"s": 1}, None, None) == {"s": 1}


def test_mask_paths_name_state_keys() -> None:
    assert keys_from_mask(["state.a", "state.user:b", "state.`x.y`", "state.a"], field="m") == [
        "a",
        "user:b",
        "x.y",
    ]
    for bad in (["metadata"], ["state"], ["state."], ["labels.a"]):
        with pytest.raises(InvalidArgument) as info:
            keys_from_mask(bad, field="update_mask")
        assert info.value.field == "update_mask"

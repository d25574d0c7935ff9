"""Pieces of request building not covered by the transcoding table."""

from __future__ import annotations

from gateway.request_builder import resolve_mask
from tests.protos.showcase import Showcase


def test_mask_paths_resolve_in_either_spelling(showcase: Showcase) -> None:
    kitchen = showcase.module.Kitchen.DESCRIPTOR

    assert resolve_mask(
        "fInt32, nested.childName ,nested.child.count,,labels.someKey", kitchen
    ) == [
        "f_int32",
        "nested.childName",
        "nested.child.count",
        "labels.someKey",
    ]


def test_unknown_mask_paths_are_kept_for_the_service_to_judge(showcase: Showcase) -> None:
    kitchen = showcase.module.Kitchen.DESCRIPTOR

    assert resolve_mask("noSuchField.x", kitchen) == ["noSuchField.x"]

"""Proto comments, for the descriptions of the OpenAPI document.

Generated ``_pb2`` modules carry no source info, so comments come from a FileDescriptorSet built
with ``--include_source_info``: the gateway ships ``descriptors.binpb`` (made by
``python -m gateway.build_descriptors``); more sets can be given, e.g. for test protos.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Final

from google.protobuf import descriptor_pb2

_log = logging.getLogger(__name__)

PACKAGED_SET: Final = "descriptors.binpb"

# Field numbers in descriptor.proto that make up SourceCodeInfo.Location.path.
_FILE_MESSAGE: Final = 4
_FILE_ENUM: Final = 5
_FILE_SERVICE: Final = 6
_MESSAGE_FIELD: Final = 2
_MESSAGE_NESTED: Final = 3
_MESSAGE_ENUM: Final = 4
_ENUM_VALUE: Final = 2
_SERVICE_METHOD: Final = 2


class SourceComments:
    """Leading comments by element full name.

    Keys are full names: ``pkg.Message``, ``pkg.Message.field``, ``pkg.Enum``, ``pkg.Enum.VALUE``
    (scoped under its enum, unlike protobuf's own naming), ``pkg.Service``, ``pkg.Service.Method``.
    """

    def __init__(self, comments: Mapping[str, str] | None = None) -> None:
        """Wraps a name → comment mapping."""
        self._comments = dict(comments or {})

    @classmethod
    def from_sets(cls, sets: Iterable[bytes]) -> SourceComments:
        """Reads comments from serialized FileDescriptorSets (later sets win)."""
        comments: dict[str, str] = {}
        for data in sets:
            descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
            for file in descriptor_set.file:
                comments.update(_file_comments(file))
        return cls(comments)

    @classmethod
    def packaged(cls, extra_sets: Iterable[bytes] = ()) -> SourceComments:
        """Comments of the set shipped with the gateway, plus any extra sets."""
        sets: list[bytes] = []
        resource = resources.files("gateway").joinpath(PACKAGED_SET)
        if resource.is_file():
            sets.append(resource.read_bytes())
        else:
            _log.warning("%s is missing: the OpenAPI document has no descriptions", PACKAGED_SET)
        sets.extend(extra_sets)
        return cls.from_sets(sets)

    def get(self, full_name: str) -> str:
        """The comment of an element, "" when it has none."""
        return self._comments.get(full_name, "")


def _file_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    names = _element_names(file)
    comments: dict[str, str] = {}
    for location in file.source_code_info.location:
        name = names.get(tuple(location.path))
        if name is not None and location.leading_comments:
            comments[name] = _clean(location.leading_comments)
    return comments


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    prefix = f"{file.package}." if file.package else ""
    names: dict[tuple[int, ...], str] = {}

    def enum(path: tuple[int, ...], full: str, value: descriptor_pb2.EnumDescriptorProto) -> None:
        names[path] = full
        for index, item in enumerate(value.value):
            names[(*path, _ENUM_VALUE, index)] = f"{full}.{item.name}"

    def message(path: tuple[int, ...], full: str, value: descriptor_pb2.DescriptorProto) -> None:
        names[path] = full
        for index, field in enumerate(value.field):
            names[(*path, _MESSAGE_FIELD, index)] = f"{full}.{field.name}"
        for index, nested in enumerate(value.nested_type):
            message((*path, _MESSAGE_NESTED, index), f"{full}.{nested.name}", nested)
        for index, nested_enum in enumerate(value.enum_type):
            enum((*path, _MESSAGE_ENUM, index), f"{full}.{nested_enum.name}", nested_enum)

    for index, item in enumerate(file.message_type):
        message((_FILE_MESSAGE, index), prefix + item.name, item)
    for index, item_enum in enumerate(file.enum_type):
        enum((_FILE_ENUM, index), prefix + item_enum.name, item_enum)
    for index, service in enumerate(file.service):
        full = prefix + service.name
        names[(_FILE_SERVICE, index)] = full
        for method_index, method in enumerate(service.method):
            names[(_FILE_SERVICE, index, _SERVICE_METHOD, method_index)] = f"{full}.{method.name}"
    return names


def _clean(comment: str) -> str:
    """Strips the one space after ``//`` and surrounding blank lines, keeping line breaks."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()

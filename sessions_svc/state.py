"""Session state semantics: key prefixes, deletions and the merged view (ADK's rules).

A state key's prefix says where the value lives:

* ``app:NAME``  — shared by every session of the app (stored once per tenant and app);
* ``user:NAME`` — shared by every session of the user within the app;
* ``temp:NAME`` — scratch for the current invocation: never stored, never returned later;
* anything else — the session's own state.

A null value deletes the key. The merged view a reader sees is the session's keys, then the
app's keys with ``app:`` put back, then the user's keys with ``user:`` put back (ADK's order).

Everything here is pure: the repository turns a :class:`StateDelta` into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ciq_runtime.errors import InvalidArgument

__all__ = [
    "APP_PREFIX",
    "MAX_KEY_LENGTH",
    "TEMP_PREFIX",
    "USER_PREFIX",
    "Changes",
    "StateDelta",
    "keys_from_mask",
    "merged_view",
    "split_delta",
    "validate_key",
    "without_temp",
]

APP_PREFIX: Final = "app:"
USER_PREFIX: Final = "user:"
TEMP_PREFIX: Final = "temp:"
MAX_KEY_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class Changes:
    """Changes to one state object.

    Attributes:
        set: Keys to set and their (non-null) JSON values.
        delete: Keys to remove.
    """

    set: dict[str, Any] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.set or self.delete)


@dataclass(frozen=True, slots=True)
class StateDelta:
    """A state delta split by where each key lives; shared keys are stored without prefix.

    Attributes:
        session: Changes to the session's own state.
        user: Changes to the state shared by the user's sessions of the app.
        app: Changes to the state shared by the app's sessions.
    """

    session: Changes = field(default_factory=Changes)
    user: Changes = field(default_factory=Changes)
    app: Changes = field(default_factory=Changes)

    def __bool__(self) -> bool:
        return bool(self.session or self.user or self.app)


def validate_key(key: str, *, field: str) -> None:
    """Reject a state key that cannot be stored or addressed.

    Args:
        key: The key, with its prefix.
        field: Request field named in the error.

    Raises:
        InvalidArgument: Empty key, a bare prefix (``"app:"``), a key longer than
            :data:`MAX_KEY_LENGTH` or one containing NUL (Postgres JSON cannot hold it).
    """
    if not key:
        raise InvalidArgument(f"{field}: state keys must not be empty", field=field)
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"{field}: state key {key[:32]!r}... is longer than {MAX_KEY_LENGTH} characters",
            field=field,
        )
    if "\x00" in key:
        raise InvalidArgument(f"{field}: state key {key!r} contains a NUL character", field=field)
    for prefix in (APP_PREFIX, USER_PREFIX, TEMP_PREFIX):
        if key == prefix:
            raise InvalidArgument(
                f"{field}: state key {key!r} is only a prefix; name the key after it",
                field=field,
            )


def split_delta(delta: Mapping[str, Any], *, field: str) -> StateDelta:
    """Split a validated-value delta by prefix, dropping ``temp:`` keys.

    Args:
        delta: Key to JSON value; ``None`` deletes the key.
        field: Request field named in errors.

    Returns:
        The changes per storage location, shared keys without their prefix.

    Raises:
        InvalidArgument: If a key is invalid (see :func:`validate_key`).
    """
    session, user, app = Changes(), Changes(), Changes()
    for key, value in delta.items():
        validate_key(key, field=field)
        if key.startswith(TEMP_PREFIX):
            continue
        if key.startswith(APP_PREFIX):
            target, name = app, key[len(APP_PREFIX) :]
        elif key.startswith(USER_PREFIX):
            target, name = user, key[len(USER_PREFIX) :]
        else:
            target, name = session, key
        if value is None:
            target.delete.append(name)
        else:
            target.set[name] = value
    return StateDelta(session=session, user=user, app=app)


def without_temp(keys: Iterable[str]) -> list[str]:
    """The keys of a delta that are stored: every key but the ``temp:`` ones."""
    return [key for key in keys if not key.startswith(TEMP_PREFIX)]


def merged_view(
    session: Mapping[str, Any],
    user: Mapping[str, Any] | None,
    app: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The state a reader sees: session keys, then ``app:`` keys, then ``user:`` keys.

    Args:
        session: The session's own state.
        user: The user's shared state (unprefixed keys), if any.
        app: The app's shared state (unprefixed keys), if any.

    Returns:
        A new dict with the shared keys prefixed again.
    """
    merged = dict(session)
    for key, value in (app or {}).items():
        merged[APP_PREFIX + key] = value
    for key, value in (user or {}).items():
        merged[USER_PREFIX + key] = value
    return merged


def keys_from_mask(paths: Iterable[str], *, field: str) -> list[str]:
    """The state keys an ``update_mask`` of ``state.KEY`` paths names.

    A key holding dots or other special characters may be quoted in backticks (AIP-161):
    ``state.`a.b```. Without backticks everything after ``state.`` is the key.

    Args:
        paths: The mask's paths.
        field: Request field named in errors.

    Returns:
        The keys, in mask order, without duplicates.

    Raises:
        InvalidArgument: A path that does not start with ``state.`` or names no key.
    """
    keys: list[str] = []
    for path in paths:
        head, dot, key = path.partition(".")
        if head != "state" or not dot:
            raise InvalidArgument(
                f"{field}: path {path!r} must name a state key as state.KEY", field=field
            )
        if len(key) >= 2 and key.startswith("`") and key.endswith("`"):
            key = key[1:-1]
        validate_key(key, field=field)
        if key not in keys:
            keys.append(key)
    return keys

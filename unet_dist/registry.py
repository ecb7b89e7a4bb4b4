"""One registry type for every family of choices (timm's ``register_model`` / ``create_model`` manner).

A :class:`Registry` maps the names a config key accepts to what they build, plus optional per-entry
metadata. Plain Python (no torch), so config validation and docs can use it without building anything.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from unet_dist import catalog
from unet_dist.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named choices for one config key, e.g. ``Registry("backbone", key="model.backbone")``."""

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, key={self.key!r}, entries={self.list()})"

    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Register ``obj`` under ``name``; a name is registered once (a second time is a bug, refused)."""
        if name in self._entries:
            raise ValueError(f"{self.name} {name!r} is already registered (in the {self.key} registry)")
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        choices = catalog.CHOICES.get(self.key)
        if choices is not None and name not in choices:
            choices.append(name)  # a name registered after the built-ins: configs accept it from now on
        return obj

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@BACKBONES.register("scratch", depths=(3, 6))``."""

        def deco(obj: T) -> T:
            return self.add(name, obj, **meta)

        return deco

    def get(self, name: str) -> T:
        """The entry for ``name``; an unknown name is a one-line ConfigError naming the key and the choices."""
        if name not in self._entries:
            raise ConfigError(f"{self.key}: unknown {self.name} {name!r}; choose one of: {', '.join(self._entries)}")
        return self._entries[name]

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata ``name`` was registered with (unknown names raise as in :meth:`get`)."""
        self.get(name)
        return MappingProxyType(self._meta[name])

    def list(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

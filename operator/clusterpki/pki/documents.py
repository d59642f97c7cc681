"""YAML in and out, with LibYAML's safe loader and dumper when PyYAML has them (the pure-Python ones
cost a millisecond per kubeconfig): the one place the package reads or writes YAML."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

Error = yaml.YAMLError


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe: builds plain mappings, lists and scalars only."""


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Safe: writes plain mappings, lists and scalars only."""


def load(data: str | bytes) -> Any:
    return yaml.load(data, Loader=_Loader)


def load_all(data: str | bytes) -> Iterator[Any]:
    return yaml.load_all(data, Loader=_Loader)


def dump(document: Any) -> str:
    """Block style, keys in the order given."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)


def dump_all(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)

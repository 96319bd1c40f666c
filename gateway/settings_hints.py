""""Did you mean" for unknown config keys: the closest field name the section does have."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel


def did_you_mean(root: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """For an unknown key at `loc` (its last item), the known field of that section it most resembles."""
    if not loc or not isinstance(loc[-1], str):
        return None
    model = _model_at(root, loc[:-1])
    if model is None:
        return None
    matches = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    node: Any = root
    for item in loc:
        if isinstance(item, int):
            node = _element(node)
        else:
            model = _as_model(node)
            if model is None or item not in model.model_fields:
                return None
            node = model.model_fields[item].annotation
    return _as_model(node)


def _element(annotation: Any) -> Any:
    """The element type of list[X] (or of an optional list)."""
    for candidate in _alternatives(annotation):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


def _as_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _alternatives(annotation: Any) -> list[Any]:
    """X | None -> [X, None]; Annotated[X, ...] -> [X]; anything else -> [it]."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [alt for arg in typing.get_args(annotation) for alt in _alternatives(arg)]
    return [annotation]

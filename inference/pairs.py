"""The ``pairs`` of ``compute_score`` and the ``passages`` of ``rank``, checked and made lists of str.

Accepted, as FlagEmbedding and sentence-transformers users pass them: one (query, passage) pair (list, tuple or
numpy array of shape (2,)), a list or tuple of pairs, an iterator or generator of pairs (read once), a numpy
array of shape (n, 2). Anything else is refused with a TypeError (wrong type) or a ValueError (wrong length or
shape) that names the first bad item and what it is: ``pairs[3][1] is int (7), expected str``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping, Sequence, Set

import numpy as np

Pair = tuple[str, str]
PAIR_LIKE = (list, tuple, np.ndarray)
EXPECTED_PAIRS = "expected a (query, passage) pair of str or a list of such pairs"
EXPECTED_PASSAGES = "expected a list of str"

_preview = reprlib.Repr()
_preview.maxstring = _preview.maxother = 40
_preview.maxlist = _preview.maxtuple = 3


def describe(value: object) -> str:
    """``None``, or the type name and a short repr: ``int (7)``, ``str ('what is...')``."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    return f"{type(value).__name__} ({_preview.repr(value)})"


def as_items(value: object, name: str, expected: str) -> list | tuple:
    """``value`` as a list or tuple of its items; iterators are read once, unordered collections refused."""
    if isinstance(value, (list, tuple)):
        return value
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} is {describe(value)}, {expected}")
    if isinstance(value, (Mapping, Set)):
        raise TypeError(f"{name} is {describe(value)}, which has no order; {expected}")
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"{name} is {describe(value)}, {expected}")


def array_items(array: np.ndarray, name: str, shape_ok: bool, expected_shape: str) -> list:
    """A numpy array of an accepted shape as python lists (empty for an empty array), else a ValueError."""
    if array.ndim > 0 and array.shape[0] == 0:
        return []
    if not shape_ok:
        first = f"; {name}[0] is {describe(array[0])}" if array.ndim > 0 else ""
        raise ValueError(f"{name} is a numpy array of shape {array.shape}, expected {expected_shape}{first}")
    return array.tolist()


def pairs_shape_ok(array: np.ndarray) -> bool:
    """(n, 2) pairs, one (2,) pair, or a 1-d object array (of pairs, checked one by one)."""
    if array.ndim == 2:
        return array.shape[1] == 2
    return array.ndim == 1 and (array.shape == (2,) or array.dtype == object)


def is_single_pair(items: Sequence[object]) -> bool:
    """Two items, one of them a str and neither pair-like: one (query, passage) pair, not a list of pairs."""
    return (
        len(items) == 2
        and any(isinstance(text, str) for text in items)
        and not any(isinstance(text, PAIR_LIKE) for text in items)
    )


def check_pair(item: object, name: str) -> Pair:
    """``item`` as a (query, passage) tuple of plain str, or the error that names what is wrong with it."""
    if isinstance(item, np.ndarray):
        item = item.tolist()
    if not isinstance(item, Sequence) or isinstance(item, (str, bytes)):
        raise TypeError(f"{name} is {describe(item)}, expected a (query, passage) pair of str")
    for index, text in enumerate(item):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] is {describe(text)}, expected str")
    if len(item) != 2:
        count = f"{len(item)} item" + ("" if len(item) == 1 else "s")
        raise ValueError(f"{name} has {count}, expected 2 (query, passage)")
    query, passage = item
    return (query if type(query) is str else str(query), passage if type(passage) is str else str(passage))


def to_pairs(pairs: object) -> tuple[list[Pair], bool]:
    """``(the pairs as a list of (query, passage) tuples, whether one single pair was given)``."""
    single_kind, kind = isinstance(pairs, PAIR_LIKE), type(pairs).__name__
    if isinstance(pairs, np.ndarray):
        pairs = array_items(pairs, "pairs", pairs_shape_ok(pairs), "(n, 2) pairs or one (2,) pair")
    items = as_items(pairs, "pairs", EXPECTED_PAIRS)
    if single_kind and is_single_pair(items):
        return [check_pair(items, "pairs")], True
    if single_kind and items and all(isinstance(text, str) for text in items):
        extra = f"; pairs[2] is {describe(items[2])}, one too many" if len(items) > 2 else ""
        raise ValueError(
            f"pairs is a {kind} of {len(items)} str, expected one (query, passage) pair of 2 "
            f"or a list of pairs{extra} (rank(query, passages) scores one query's passages)"
        )
    return [fast_pair(item, index) for index, item in enumerate(items)], False


def fast_pair(item: object, index: int) -> Pair:
    """`check_pair` with the common case (a list or tuple of two plain str) first, for 100,000-pair calls."""
    if type(item) in (list, tuple) and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
        return (item[0], item[1])
    return check_pair(item, f"pairs[{index}]")


def to_passages(query: object, passages: object) -> list[str]:
    """``rank``'s arguments checked: ``query`` a str, ``passages`` a list (or iterable) of str."""
    if not isinstance(query, str):
        raise TypeError(f"query is {describe(query)}, expected str")
    if isinstance(passages, np.ndarray):
        passages = array_items(passages, "passages", passages.ndim == 1, "(n,) str")
    items = as_items(passages, "passages", EXPECTED_PASSAGES)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"passages[{index}] is {describe(text)}, expected str")
    return [text if type(text) is str else str(text) for text in items]

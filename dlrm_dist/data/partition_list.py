"""The partition-list syntax of ``data.partitions``: which day partitions a run trains on.

    "1-7"        partitions 1, 2, ..., 7
    "1,3,5-7"    partitions 1, 3, 5, 6, 7
    "8"          partition 8

Items are separated by commas (spaces around them are ignored); an item is a partition number
(a non-negative integer, at most ``MAX_PARTITION``: dates such as 20261201 fit) or a range
``A-B`` with ``A <= B``, both ends included. The list is in time order: each number must be
greater than the one before (no repeat, no overlap), since the run trains the partitions in
the order listed. A range stands for every number in it: each must exist in the directory
(checked when the data is opened, not here). A range may span at most ``MAX_RANGE`` numbers.

This module imports nothing heavy: the config's validation uses it.
"""

from __future__ import annotations

import re
from typing import Iterable

MAX_PARTITION = 999_999_999  # (9 digits: a date as YYYYMMDD fits)
MAX_RANGE = 100_000  # numbers one range may stand for (a typo such as 1-20261201 is not a list of 20 million)
SYNTAX = "partition numbers and ranges joined by commas in increasing order, e.g. '1-7' or '1,3,5-7'"
_ITEM = re.compile(r"([0-9]+)(?: *- *([0-9]+))?")  # (ASCII digits only: int() would read other scripts' digits)


class PartitionListError(ValueError):
    """A partition list that does not read; the message says which item and why."""


def _number(text: str, item: str) -> int:
    value = int(text)
    if value > MAX_PARTITION:
        raise PartitionListError(f"item {item!r}: partition {value} is above the largest number, {MAX_PARTITION}")
    return value


def parse_partitions(text: str) -> list[int]:
    """The partition numbers ``text`` lists, in its (increasing) order; PartitionListError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise PartitionListError(f"an empty list: give {SYNTAX}")
    out: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        found = _ITEM.fullmatch(item)
        if found is None:
            raise PartitionListError(f"item {item!r} is not a partition number (a non-negative integer) or a range "
                                     f"A-B: give {SYNTAX}")
        lo = _number(found.group(1), item)
        hi = lo if found.group(2) is None else _number(found.group(2), item)
        if hi < lo:
            raise PartitionListError(f"range {item!r} runs backwards: write it {hi}-{lo}")
        if hi - lo + 1 > MAX_RANGE:
            raise PartitionListError(f"range {item!r} stands for {hi - lo + 1:,} partitions, more than {MAX_RANGE:,}: "
                                     "list the partitions the directory has")
        if out and lo <= out[-1]:
            raise PartitionListError(f"item {item!r} does not come after partition {out[-1]}: partitions are trained "
                                     "in the order listed (time order), so list each once, in increasing order")
        out.extend(range(lo, hi + 1))
    return out


def listing(numbers: Iterable[int]) -> str:
    """``format_partitions`` of ``numbers`` for a message: "none" when there are none."""
    numbers = list(numbers)
    return format_partitions(numbers) if numbers else "none"


def format_partitions(numbers: list[int]) -> str:
    """The shortest list text for increasing ``numbers`` (runs of consecutive numbers as ranges):
    ``parse_partitions(format_partitions(x)) == x``."""
    items: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        items.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ",".join(items)

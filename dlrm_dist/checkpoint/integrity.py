"""A checkpoint's files, checked: a CRC32C and a size per file, recorded at save, verified before use.

DCP reads whatever bytes a shard holds: a flipped block loads as damaged weights and
training carries on. So every file of ``step_N/`` but the manifest (the ``.distcp`` shards and
``.metadata``) gets a CRC32C (Castagnoli, as TensorFlow's checkpoint bundles use; hardware
accelerated, see the README for the measured rate) and its size in the manifest, and every
reader verifies them before DCP opens a file: a damaged, missing or extra file is named.

The work is split over the ranks: after the save barrier the files are listed, rank r
checksums every world_size-th of them (sorted by name) and rank 0 gathers the lot. That
spreads the reading over every rank (and node) instead of making rank 0 read the whole
checkpoint, and does not depend on DCP's naming of which rank wrote which file; restoring at
any world size splits the verification the same way. Checkpoints live on a filesystem every
rank sees (DCP's own requirement for loading at another world size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from dlrm_dist.checkpoint.manifest import MANIFEST, CheckpointError, FileSum
from dlrm_dist.fileio import crc32c_of

NOT_CHECKED = {MANIFEST}  # the manifest holds the checksums; it is checked by parsing


def checksum(path: Path) -> FileSum:
    """``path``'s size and CRC32C, read in 4 MB chunks."""
    return FileSum(*crc32c_of(path))


def listed(directory: Path) -> list[str]:
    """The names a checkpoint directory holds, the manifest aside, sorted."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name not in NOT_CHECKED)


def share(names: Iterable[str], rank: int, world_size: int) -> list[str]:
    """The names rank ``rank`` checks (every world_size-th of the sorted names)."""
    return sorted(names)[rank::world_size]


def checksums(directory: Path, names: Iterable[str]) -> tuple[dict[str, FileSum], list[str]]:
    """The checksums of ``names`` under ``directory``, and one line for each that could not be read."""
    sums: dict[str, FileSum] = {}
    problems: list[str] = []
    for name in names:
        path = Path(directory) / name
        try:
            sums[name] = checksum(path)
        except OSError as e:
            problems.append(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})")
    return sums, problems


def file_set_problems(directory: Path, expected: Iterable[str]) -> list[str]:
    """Files the manifest lists that are missing, and files it does not list that are there."""
    expected = set(expected)
    try:
        present = set(listed(directory))
    except OSError as e:
        return [f"{directory}: cannot be listed ({type(e).__name__}: {e.strerror or e})"]
    out = [f"{Path(directory) / n}: missing (the manifest lists it)" for n in sorted(expected - present)]
    out += [f"{Path(directory) / n}: not listed in the manifest (a file added after the save, or by another "
            "writer)" for n in sorted(present - expected)]
    return out


def verify(directory: Path, expected: Mapping[str, FileSum], names: Iterable[str]) -> list[str]:
    """One line per file among ``names`` whose size or CRC32C differs from ``expected`` (or cannot be read)."""
    names = [n for n in names if (Path(directory) / n).exists()]  # the missing ones: file_set_problems
    found, problems = checksums(directory, [n for n in names if (Path(directory) / n).is_file()])
    problems += [f"{Path(directory) / n}: not a regular file" for n in names if not (Path(directory) / n).is_file()]
    for name, got in found.items():
        want = expected[name]
        if got.size != want.size:
            problems.append(f"{Path(directory) / name}: {got.size} bytes, the manifest says {want.size} "
                            "(truncated or rewritten)")
        elif got.crc32c != want.crc32c:
            problems.append(f"{Path(directory) / name}: damaged (CRC32C {got.crc32c}, the manifest says {want.crc32c})")
    return problems


def raise_problems(directory: Path, problems: list[str]) -> None:
    if problems:
        raise CheckpointError(f"{directory} is damaged; restore it from a copy or resume from an older checkpoint:\n"
                              + "\n".join(f"  - {p}" for p in sorted(set(problems))))

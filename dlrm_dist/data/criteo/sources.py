"""Where raw Criteo rows come from, in chunks of whole lines.

Plain files are split into byte ranges aligned to line ends, which worker processes read
themselves (nothing large crosses a pipe). Gzip files are decompressed sequentially by the
caller and handed out as bytes. Each chunk knows its file and byte offset.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Chunk:
    path: str
    start: int  # byte offset in the (decompressed) file
    end: int
    data: Optional[bytes] = None  # gzip: the bytes themselves

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _plain_chunks(path: Path, start: int) -> Iterator[Chunk]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = start
        while pos < size:
            nominal = min(pos + CHUNK_BYTES, size)
            end = size
            if nominal < size:
                f.seek(nominal)
                while True:  # the end of the line that crosses the nominal boundary
                    block = f.read(1 << 16)
                    if not block:
                        break
                    i = block.find(b"\n")
                    if i >= 0:
                        end = f.tell() - len(block) + i + 1
                        break
            yield Chunk(str(path), pos, end)
            pos = end


def _gzip_chunks(path: Path, start: int) -> Iterator[Chunk]:
    with gzip.open(path, "rb") as f:
        pos, rest = 0, b""
        while True:
            block = f.read(CHUNK_BYTES)
            if not block:
                if rest and pos >= start:
                    yield Chunk(str(path), pos, pos + len(rest), rest)
                return
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest = block
                continue
            if pos >= start:
                yield Chunk(str(path), pos, pos + cut, block[:cut])
            pos += cut
            rest = block[cut:]


def chunks(path: Path, start: int = 0) -> Iterator[Chunk]:
    """Chunks of whole lines from byte ``start`` (a line start) of the decompressed file."""
    return _gzip_chunks(path, start) if is_gzip(path) else _plain_chunks(path, start)


def count_lines(path: Path) -> int:
    """Lines in a (possibly gzipped) file; a last line without newline counts."""
    opener = gzip.open if is_gzip(path) else open
    n, last = 0, b"\n"
    with opener(path, "rb") as f:
        while block := f.read(64 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")

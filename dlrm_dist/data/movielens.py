"""MovieLens-100k, fetched from PyPI only: ``dlrm-data fetch movielens-100k DIR``.

The GroupLens MovieLens-100k files ship inside the wheel of ``recbole==1.2.1`` (as
``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``). Their licence forbids
redistribution, so nothing of them is committed: this module downloads that wheel with
``pip download --no-deps`` (PyPI is the only host contacted), extracts just those three
files, and joins them into one table a schema can describe:

    DIR/ratings.tsv   user_id item_id rating timestamp age gender occupation zip_code
                      release_year genres       (genres joined by '|', e.g. Action|Comedy)

A folder that already holds ratings.tsv is reused (a cache). One fetch writes a folder at a
time (its lock); both files are written atomically, so an interrupted fetch leaves no
half-written ratings.tsv that a later one would take for the cache.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from dlrm_dist.data.errors import FetchError
from dlrm_dist.data.jobrecord import lock_out
from dlrm_dist.fileio import atomic_write_text, inside

WHEEL = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
RATINGS = "ratings.tsv"
COLUMNS = ("user_id", "item_id", "rating", "timestamp", "age", "gender", "occupation", "zip_code",
           "release_year", "genres")
TERMS = ("MovieLens-100k is (c) GroupLens Research, University of Minnesota, used under its terms: "
         "research use, no redistribution, cite Harper & Konstan (2015), ACM TiiS 5(4). "
         "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt")


def _read(z: zipfile.ZipFile, kind: str) -> list[dict[str, str]]:
    """RecBole's atomic files: tab-separated, header fields written ``name:type``."""
    lines = z.read(MEMBER.format(kind)).decode("utf-8").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def _download(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("recbole-*.whl"))
    if done.returncode or not wheels:
        raise FetchError(f"could not download {WHEEL} from PyPI (MovieLens-100k ships inside it): "
                         f"{done.stderr.strip()[-500:] or 'no wheel'}")
    return wheels[0]


def fetch_movielens_100k(directory: str | Path) -> Path:
    """``DIR/ratings.tsv`` (downloading and joining it unless already there)."""
    out = Path(directory)
    target = inside(out, RATINGS)
    with lock_out(out, "dlrm-data fetch"):
        if not target.is_file():
            _fetch(out, target)
    return target


def _fetch(out: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(_download(Path(tmp))) as z:
            try:
                inter, users, items = (_read(z, k) for k in ("inter", "user", "item"))
            except KeyError as e:
                raise FetchError(f"{WHEEL} no longer holds {e}; MovieLens-100k cannot be taken from it") from None
    user = {u["user_id"]: u for u in users}
    item = {i["item_id"]: i for i in items}
    text = io.StringIO()
    w = csv.writer(text, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    for r in inter:
        u, i = user[r["user_id"]], item[r["item_id"]]
        w.writerow([r["user_id"], r["item_id"], r["rating"], r["timestamp"], u["age"], u["gender"],
                    u["occupation"], u["zip_code"], i.get("release_year", ""),
                    "|".join(i.get("class", "").split())])
    atomic_write_text(inside(out, "TERMS.txt"), TERMS + "\n")
    atomic_write_text(target, text.getvalue())  # last: its presence means the fetch is complete


DATASETS = {"movielens-100k": fetch_movielens_100k}

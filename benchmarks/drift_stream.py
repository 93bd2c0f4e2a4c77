"""A seeded click stream of several days whose users and items arrive and fade (issue 23's drifting data).

    python -m benchmarks.drift_stream OUT [--days 10] [--rows 100000] [--seed 0]
                                          [--ids managed|hash|vocab] [--buckets N] [--eviction lru|lfu]

Writes ``OUT/day01.csv .. OUT/dayNN.csv`` (one file per day, a ``day`` column in each),
``OUT/schema.toml`` (a feature schema for them; ``--ids`` picks how user and item ids are mapped to
rows) and ``OUT/stream.json`` (the parameters and, per day, the realised share of ids unseen the day
before). The same arguments write the same bytes.

The population model, per id space (users, items):

- an entity is born on some day and lives an exponentially distributed number of days; its base
  popularity follows a Zipf law (bounded), grows over its first day or
  two and decays with a half-life of its own while it lives: yesterday's hot items fade and
  newcomers take their place (the popularity ranking moves every day);
- each day a fixed share of the population is born, so that 20-40% of a day's distinct ids did not
  occur the day before (the generator prints and records the realised share);
- each row draws a user and an item in proportion to their popularity that day.

Labels come from a hidden teacher, as the synthetic demo's do (dlrm_dist/data/synthetic.py): every
user and item has a latent vector and a bias, an item's vector is its category's centre plus its
own part, and ``clicked ~ Bernoulli(sigmoid(scale * <u, i> / sqrt(k) + b_u + b_i + price and hour
terms + offset))``. So a new id carries signal: a model that gives it a row of its own can learn it
from its first day's rows and use it the next day; one that maps it to a shared row (an OOV row, a
hash collision) cannot. Raw ids are what a team's logs hold: user ids are 9-digit integers, items
text (``sku-3f9a2c``).

Everything is vectorised numpy; 10 days x 100k rows take a few seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

LATENT = 8  # the teacher's latent dimension per id
CATEGORIES = 24  # item categories: a stable vocabulary, every one present from day 1
_USER_ID_BASE = 100_000_000  # user ids are 9-digit integers
_USER_ID_MUL = 40_503  # odd and coprime with the span below: ids spread, and distinct
_USER_ID_SPAN = 899_999_999
_ITEM_ID_MUL = 2_654_435_761  # Knuth's multiplicative constant, odd: a bijection of 32-bit numbers
_T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: day 1's first second


@dataclass(frozen=True)
class StreamSpec:
    """What the stream looks like; defaults are the benchmark's (benchmarks/continuous_training.py)."""

    days: int = 10
    rows: int = 100_000  # rows per day
    seed: int = 0
    users: int = 6_250  # users alive around day 1 (items: items_per_user of this); the CLI's default: rows / 16
    items_per_user: float = 0.5
    arrival: float = 0.25  # entities born per day, as a share of the initial population
    mean_life: float = 4.0  # days an entity lives, on average (exponential)
    ramp: float = 1.0  # days for a newcomer's popularity to grow (1 - exp(-(age + 1/2) / ramp))
    zipf: float = 1.0  # base popularity of the k-th most popular of n entities ~ (n / k) ** zipf
    half_life: float = 2.0  # days for an entity's popularity to halve, on average (exponential)
    teacher_scale: float = 2.0
    bias: float = -1.2  # teacher logit offset: a click rate around a quarter


@dataclass(frozen=True)
class Population:
    """One id space over the whole stream: birth day, death day, base popularity, half-life, latent."""

    ramp: float
    born: np.ndarray  # float, day of birth (day 1 = 1.0; the initial population before it)
    dies: np.ndarray
    weight: np.ndarray
    half_life: np.ndarray
    latent: np.ndarray  # (n, LATENT)
    bias: np.ndarray

    def popularity(self, day: int) -> np.ndarray:
        """Each entity's weight on ``day`` (0 when not alive): its base weight, growing over its first days
        (a newcomer is found gradually) and halved every half-life since birth."""
        age = np.maximum(day - self.born, 0.0)
        alive = (day >= self.born) & (day < self.dies)
        grown = -np.expm1(-(age + 0.5) / self.ramp)
        return np.where(alive, self.weight * grown * np.exp2(-age / self.half_life), 0.0)


def _cohort(rng: np.random.Generator, spec: StreamSpec, born: np.ndarray, initial: int,
            centres: np.ndarray | None) -> dict[str, np.ndarray]:
    """The entities born at ``born`` (one cohort: the initial population, or one day's arrivals).
    Base popularity ``u ** -zipf`` for u uniform in [1/initial, 1]: a Zipf law over the initial
    population's ranks, bounded, so that no single entity takes most of a day however small the stream."""
    n = born.size
    dies = born + rng.exponential(spec.mean_life, n)
    stale = dies <= 1.0  # an initial entity that would already be gone: give it a life reaching day 1
    dies[stale] = 1.0 + rng.exponential(spec.mean_life, int(stale.sum()))
    latent = rng.standard_normal((n, LATENT))
    category = rng.integers(0, CATEGORIES, n)
    if centres is not None:  # items: near their category's centre, so a category alone predicts a little
        latent = (centres[category] + latent) / math.sqrt(2.0)
    return {"born": born, "dies": dies, "weight": rng.uniform(1.0 / initial, 1.0, n) ** -spec.zipf,
            "half_life": rng.exponential(spec.half_life, n) + 0.25, "latent": latent,
            "bias": rng.normal(0.0, 0.5, n), "category": category, "price": np.exp(rng.normal(3.0, 0.8, n))}


def _population(spec: StreamSpec, kind: int, initial: int,
                centres: np.ndarray | None) -> tuple[Population, dict[str, np.ndarray]]:
    """``initial`` entities alive around day 1 (born in the days before, already partly faded) plus
    ``spec.arrival * initial`` born on each day of the stream. Each cohort draws from its own
    generator, so the first k days are the same whatever ``spec.days`` is."""
    per_day = int(round(spec.arrival * initial))
    first = np.random.default_rng([spec.seed, kind, 0])
    cohorts = [_cohort(first, spec, first.uniform(1.0 - 2 * spec.mean_life, 1.0, initial), initial,
                       centres)]
    for day in range(1, spec.days + 1):
        cohorts.append(_cohort(np.random.default_rng([spec.seed, kind, day]), spec,
                               np.full(per_day, float(day)), initial, centres))
    cols = {k: np.concatenate([c[k] for c in cohorts]) for k in cohorts[0]}
    pop = Population(spec.ramp, cols["born"], cols["dies"], cols["weight"], cols["half_life"], cols["latent"],
                     cols["bias"])
    return pop, cols


def _draw(rng: np.random.Generator, pop: Population, day: int, rows: int) -> np.ndarray:
    p = pop.popularity(day)
    return rng.choice(p.size, size=rows, p=p / p.sum())


def user_ids(index: np.ndarray) -> np.ndarray:
    """Entity index -> a 9-digit integer user id (a bijection over the span, so ids never collide)."""
    return _USER_ID_BASE + (index.astype(np.int64) * _USER_ID_MUL) % _USER_ID_SPAN


def item_ids(index: np.ndarray) -> np.ndarray:
    """Entity index -> a text item id ``sku-<8 hex digits>`` (a bijection of 32-bit numbers)."""
    code = (index.astype(np.uint64) * np.uint64(_ITEM_ID_MUL)) & np.uint64(0xFFFFFFFF)
    return np.char.add("sku-", np.char.zfill(np.char.mod("%x", code), 8))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties share their mean rank): the teacher's own AUC is the best
    any model can reach on a day."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")


def _share_unseen(today: np.ndarray, yesterday: np.ndarray) -> tuple[float, float]:
    """(distinct ids of today not in yesterday's, share of today's rows whose id is such an id)."""
    distinct = np.unique(today)
    new = ~np.isin(distinct, yesterday, assume_unique=False)
    row_new = ~np.isin(today, yesterday)
    return float(new.mean()), float(row_new.mean())


def generate(spec: StreamSpec, out: Path, ids: str = "managed", buckets: int = 8192,
             eviction: str = "lru", quiet: bool = False) -> dict:
    """Write the stream, its schema and stream.json under ``out``; return the stream.json record."""
    out.mkdir(parents=True, exist_ok=True)
    centres = np.random.default_rng([spec.seed, 0]).standard_normal((CATEGORIES, LATENT))
    users, _ = _population(spec, 1, spec.users, None)
    items, item_cols = _population(spec, 2, int(spec.users * spec.items_per_user), centres)
    item_category, item_price = item_cols["category"], item_cols["price"]  # each item its own category and price
    price_w, hour_w = -0.35, 0.4
    days, prev_u, prev_i = [], None, None
    for day in range(1, spec.days + 1):
        day_rng = np.random.default_rng([spec.seed, 3, day])  # a day's rows do not depend on the other days'
        u = _draw(day_rng, users, day, spec.rows)
        i = _draw(day_rng, items, day, spec.rows)
        seconds = np.sort(day_rng.integers(0, 86_400, spec.rows))
        hour = seconds // 3600
        price = item_price[i] * np.exp(day_rng.normal(0.0, 0.1, spec.rows))  # a little noise per row
        logit = (spec.teacher_scale * np.einsum("nk,nk->n", users.latent[u], items.latent[i]) / math.sqrt(LATENT)
                 + users.bias[u] + items.bias[i] + price_w * (np.log(price) - 3.0)
                 + hour_w * np.sin(2 * math.pi * hour / 24.0) + spec.bias)
        prob = 1.0 / (1.0 + np.exp(-logit))
        clicked = (day_rng.random(spec.rows) < prob).astype(np.int8)
        record = {"day": day, "rows": spec.rows, "positive_rate": round(float(clicked.mean()), 4),
                  "teacher_auc": round(auc(prob, clicked), 4),
                  "distinct_users": int(np.unique(u).size), "distinct_items": int(np.unique(i).size)}
        if prev_u is not None:
            nu, nur = _share_unseen(u, prev_u)
            ni, nir = _share_unseen(i, prev_i)
            record |= {"users_unseen_yesterday": round(nu, 4), "items_unseen_yesterday": round(ni, 4),
                       "rows_with_user_unseen_yesterday": round(nur, 4),
                       "rows_with_item_unseen_yesterday": round(nir, 4)}
        prev_u, prev_i = u, i
        table = pa.table({"day": np.full(spec.rows, day, dtype=np.int32),
                          "ts": _T0 + (day - 1) * 86_400 + seconds,
                          "user_id": user_ids(u), "item": item_ids(i),
                          "category": np.char.add("c", item_category[i].astype(str)),
                          "price": np.round(price, 2), "hour": hour.astype(np.int32), "clicked": clicked})
        pacsv.write_csv(table, out / f"day{day:02d}.csv")
        days.append(record)
        if not quiet:
            print(_day_line(record))
    (out / "schema.toml").write_text(schema_toml(ids, buckets, eviction))
    record = {"spec": asdict(spec), "ids": ids, "buckets": buckets, "eviction": eviction, "days": days}
    (out / "stream.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _day_line(r: dict) -> str:
    line = f"day {r['day']:2d}: {r['rows']:,} rows  positive {r['positive_rate']:.3f}  " \
           f"teacher AUC {r['teacher_auc']:.3f}  " \
           f"users {r['distinct_users']:,}  items {r['distinct_items']:,}"
    if "users_unseen_yesterday" in r:
        line += (f"  unseen the day before: users {r['users_unseen_yesterday']:.1%} "
                 f"items {r['items_unseen_yesterday']:.1%} of distinct ids")
    return line


def schema_toml(ids: str, buckets: int | dict[str, int], eviction: str = "lru", min_count: int = 1) -> str:
    """The stream's feature schema; user and item ids ``managed`` (TorchRec managed collisions, LRU or LFU),
    ``hash`` (FNV-1a into ``buckets`` rows) or ``vocab`` (fitted on the first partition, frozen after).
    ``buckets`` is one table size for both id features, or one per feature (``{"user_id": .., "item": ..}``)."""
    def id_entry(name: str) -> str:
        rows = buckets[name] if isinstance(buckets, dict) else buckets
        if ids == "managed":
            return f'{{ name = "{name}", kind = "managed", buckets = {rows}, eviction = "{eviction}" }}'
        if ids == "hash":
            return f'{{ name = "{name}", kind = "hash", buckets = {rows} }}'
        if ids == "vocab":
            return f'{{ name = "{name}", kind = "vocab", min_count = {min_count} }}'
        raise ValueError(f"ids must be managed, hash or vocab, got {ids!r}")
    return "\n".join([
        'name = "drift"',
        'label = { column = "clicked" }',
        "dense = [",
        '  { name = "price", transform = ["log1p", "standardize"] },',
        '  { name = "hour", transform = ["standardize"] },',
        "]",
        "sparse = [",
        f"  {id_entry('user_id')},",
        f"  {id_entry('item')},",
        '  { name = "category", kind = "vocab" },',
        "]",
        ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift_stream", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--days", type=int, default=StreamSpec.days)
    p.add_argument("--rows", type=int, default=StreamSpec.rows, help="rows per day")
    p.add_argument("--users", type=int, default=None,
                   help="users alive around day 1 (default: rows / 16, which gives 25-35%% of a day's ids "
                        "unseen the day before; items are half as many)")
    p.add_argument("--seed", type=int, default=StreamSpec.seed)
    p.add_argument("--ids", choices=("managed", "hash", "vocab"), default="managed",
                   help="how schema.toml maps user and item ids to rows")
    p.add_argument("--buckets", type=int, default=8192, help="table rows of a managed or hash id feature")
    p.add_argument("--eviction", choices=("lru", "lfu"), default="lru")
    a = p.parse_args(argv)
    users = a.users if a.users is not None else max(a.rows // 16, 1)
    if a.days < 1 or a.rows < 1 or users < 1 or a.buckets < 2:
        p.error("--days, --rows and --users must be >= 1 and --buckets >= 2")
    generate(StreamSpec(days=a.days, rows=a.rows, seed=a.seed, users=users), a.out, a.ids, a.buckets, a.eviction)
    print(f"wrote {a.days} days to {a.out}/day01.csv .. day{a.days:02d}.csv, {a.out}/schema.toml, {a.out}/stream.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

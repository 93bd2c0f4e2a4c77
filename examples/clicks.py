"""Writes clicks.csv: a small click log of the shape a team has of its own (not Criteo's).

    python -m examples.clicks OUT.csv [--rows N]

Columns: user_id (int), item (text), city (text, a long tail), tags ("a|b" lists, some empty),
price (float, some missing), views (a count), ts (unix time), clicked (0/1). The click
probability depends on the user, the tags, the city and the price, so a model has something
to learn; the file is the same for the same --rows and --seed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

TAGS = ["sport", "news", "music", "film", "food", "travel", "tech", "games", "art", "kids", "cars", "home"]


def write_clicks(path: str | Path, rows: int = 50_000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    users, items, cities = rng.integers(0, 300, rows), rng.integers(0, 2000, rows), rng.zipf(1.6, rows) % 500
    user_w, city_w, tag_w = rng.normal(0, 1, 300), rng.normal(0, 0.7, 500), rng.normal(0, 1, len(TAGS))
    n_tags = rng.integers(0, 4, rows)
    price = rng.lognormal(3, 1, rows)
    logit = user_w[users] + city_w[cities] - 0.4 * (np.log(price) - 3) - 0.5
    tag_lists = []
    for i in range(rows):
        t = rng.choice(len(TAGS), n_tags[i], replace=False)
        logit[i] += tag_w[t].sum() / max(len(t), 1)
        tag_lists.append("|".join(TAGS[k] for k in t))
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    missing_price = rng.random(rows) < 0.05
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item", "city", "tags", "price", "views", "ts", "clicked"])
        for i in range(rows):
            w.writerow([users[i], f"item-{items[i]}", f"city-{cities[i]}", tag_lists[i],
                        "" if missing_price[i] else f"{price[i]:.2f}", int(rng.poisson(price[i] / 10)),
                        1_700_000_000 + i * 7, clicked[i]])
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_clicks(a.out, a.rows, a.seed))

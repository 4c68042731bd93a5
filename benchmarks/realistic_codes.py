"""Codes with the neighbour structure of real ones, at sizes no real collection here reaches.

1. Real codes: every radiograph in the data folder (NIH 64 px and 128 px, Kermany, COVID-19;
   PneumoniaMNIST holds the Kermany images again, so it is left out) encoded with the default
   model, each also under `augmentations` light random changes (shift and scale of a few
   percent, rotation within 4 degrees, contrast and brightness within 8%), as a second study
   of the same patient would look.
2. Split by image: 10% of the images are queries (their un-augmented codes), never parents.
3. Growth model, a smoothed bootstrap (a kernel density estimate in Hamming space): a new code
   is a parent drawn at random from the other images' codes (augmentations included) with
   every bit flipped independently with probability p.
4. p is fitted at the real size on histograms of nearest- and k-th-neighbour distances: among
   the parents themselves (each code's nearest other codes) and from the held-out queries to
   the parents. The grown set of the same size must match all four (least sum of the L1
   distances between real and grown histograms, over a grid of p). The nearest neighbour
   pins p from below (with p near 0 the grown codes are copies of parents, at distance 0 from
   each other), the k-th from above (a single p cannot match both exactly: the real codes'
   neighbourhoods are tighter at k = 10 than a one-p model makes them, so the grown codes
   are, if anything, harder for multi-index hashing than real ones).

    python benchmarks/realistic_codes.py            # prints the fit and the histograms
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_DIR = Path(os.environ.get("MEDHASH_CACHE", Path.home() / ".cache" / "medhash"))


def _radiographs(data: Path) -> list[np.ndarray]:
    out = []
    for name, key in (("nih1000_64.npz", "images"), ("nih_extra_128.npz", "images"),
                      ("kermany_pneumonia_128.npz", "images"), ("covid_hannover_128.npz", "images")):
        with np.load(data / name, allow_pickle=False) as z:
            out.extend(list(z[key]))
    return out


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light random change of one grayscale image (same size, uint8)."""
    from PIL import Image

    h, w = img.shape
    angle = rng.uniform(-4, 4)
    scale = rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-0.04, 0.04, size=2) * (w, h)
    a = np.deg2rad(angle)
    cos, sin = np.cos(a) / scale, np.sin(a) / scale
    cx, cy = w / 2, h / 2
    # inverse map: output pixel -> input pixel, about the centre
    coeffs = (cos, sin, cx - cos * (cx + dx) - sin * (cy + dy), -sin, cos, cy + sin * (cx + dx) - cos * (cy + dy))
    out = np.asarray(Image.fromarray(img).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                      resample=Image.Resampling.BILINEAR), dtype=np.float32)
    out = out * rng.uniform(0.92, 1.08) + rng.uniform(-0.08, 0.08) * 255
    return np.clip(out, 0, 255).astype(np.uint8)


def real_codes(data: Path, augmentations: int = 2, seed: int = 0,
               model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n_images * (1 + augmentations), nbytes), image number of each row), made by
    `model` (None: the bundled default); cached per model fingerprint."""
    from medhash_sdk import Encoder

    enc = Encoder(model)
    cache = CACHE_DIR / f"realistic_codes_v1_{enc.fingerprint[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if int(z["augmentations"]) == augmentations:
                return z["codes"], z["image"]
    images = _radiographs(data)
    rng = np.random.default_rng(seed)
    batch = [im for im in images]
    owners = list(range(len(images)))
    for _ in range(augmentations):
        batch.extend(_augment(im, rng) for im in images)
        owners.extend(range(len(images)))
    codes = enc.encode(batch, batch_size=256, show_progress_bar=True)
    image = np.asarray(owners, dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, codes=codes, image=image, augmentations=augmentations)
    return codes, image


@dataclass
class Model:
    parents: np.ndarray  # codes the growth draws from
    queries: np.ndarray  # real codes of held-out images
    p: float             # per-bit flip probability
    k: int
    real_hist: np.ndarray    # queries' k-th neighbour distances among the parents
    grown_hist: np.ndarray   # ... among len(parents) grown codes
    real_self: np.ndarray    # the parents' k-th neighbour distances among themselves
    grown_self: np.ndarray   # ... of len(parents) grown codes among themselves
    augmentation_distance: np.ndarray  # distance of each augmented code to its image's code

    def grow(self, n: int, seed: int = 1, chunk: int = 1 << 22) -> np.ndarray:
        """n grown codes (uint8 (n, nbytes))."""
        return grow(self.parents, n, self.p, seed=seed, chunk=chunk)


def grow(parents: np.ndarray, n: int, p: float, *, seed: int = 1, chunk: int = 1 << 22) -> np.ndarray:
    rng = np.random.default_rng(seed)
    nbits = parents.shape[1] * 8
    out = np.empty((n, parents.shape[1]), dtype=np.uint8)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        pick = rng.integers(0, len(parents), size=e - s)
        flips = np.packbits(rng.random((e - s, nbits), dtype=np.float32) < p, axis=1)
        np.bitwise_xor(parents[pick], flips, out=out[s:e])
    return out


def kth_distances(database: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
    """Distance of each query to its k-th nearest code in database; queries=None: of each
    database code to its k-th nearest other code."""
    from medhash_sdk import Index

    idx = Index(nbits=database.shape[1] * 8)
    idx.add(database)
    if queries is None:
        return idx.search(database, k=k + 1).distances[:, k]
    return idx.search(queries, k=k).distances[:, k - 1]


def histogram(d: np.ndarray, nbits: int) -> np.ndarray:
    return np.bincount(d, minlength=nbits + 1)[: nbits + 1] / max(1, len(d))


def fit(data: Path, *, k: int = 10, augmentations: int = 2, query_fraction: float = 0.1, seed: int = 0,
        model: str | None = None) -> Model:
    codes, image = real_codes(data, augmentations, model=model)
    nbits = codes.shape[1] * 8
    n_images = int(image.max()) + 1
    rng = np.random.default_rng(seed)
    is_query = np.zeros(n_images, dtype=bool)
    is_query[rng.choice(n_images, size=int(n_images * query_fraction), replace=False)] = True
    first = np.arange(n_images)  # the un-augmented code of image i is row i
    queries = codes[first[is_query]]
    parents = codes[~is_query[image]]
    def hists(db: np.ndarray) -> list[np.ndarray]:
        return [histogram(kth_distances(db, q, kk), nbits) for kk in (1, k) for q in (queries, None)]

    real_h = hists(parents)
    best = None
    for p in np.arange(0.0, 0.1001, 0.005):
        grown_h = hists(grow(parents, len(parents), float(p), seed=seed + 1))
        err = float(sum(np.abs(g - r).sum() for g, r in zip(grown_h, real_h)))
        if best is None or err < best[0]:
            best = (err, float(p), grown_h)
    assert best is not None
    aug = np.unpackbits(codes[n_images:] ^ codes[image[n_images:]], axis=1).sum(axis=1)
    return Model(parents, queries, best[1], k, real_h[2], best[2][2], real_h[3], best[2][3], aug)


def describe(model: Model) -> str:
    nbits = model.parents.shape[1] * 8
    lines = [f"parents: {len(model.parents):,} real codes; queries: {len(model.queries):,} held-out images; "
             f"fitted flip probability p = {model.p:.3f} ({model.p * nbits:.1f} bits a code on average); "
             f"L1 between the histograms: queries {np.abs(model.real_hist - model.grown_hist).sum():.3f}, "
             f"within the set {np.abs(model.real_self - model.grown_self).sum():.3f}",
             f"augmented code vs its image's code: median {np.median(model.augmentation_distance):.0f} bits, "
             f"90th percentile {np.percentile(model.augmentation_distance, 90):.0f}"]
    return "\n".join(lines)


def histogram_table(columns: dict[str, np.ndarray], k: int) -> str:
    """Markdown: rows = k-th neighbour distance, one column per histogram (fractions)."""
    used = np.flatnonzero(np.any(np.stack(list(columns.values())) > 0.0005, axis=0))
    lo, hi = int(used.min()), int(used.max())
    head = f"| distance to the {k}-th neighbour | " + " | ".join(columns) + " |"
    out = [head, "|" + "---|" * (len(columns) + 1)]
    for d in range(lo, hi + 1):
        out.append(f"| {d} | " + " | ".join(f"{c[d]:.3f}" for c in columns.values()) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDHASH_DATA", "../shared/data")))
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--model", help="ONNX model that encodes the radiographs (default: the bundled one)")
    args = ap.parse_args(argv)
    model = fit(args.data, k=args.k, model=args.model)
    print(describe(model))
    print(histogram_table({"queries: real parents": model.real_hist, "queries: grown, same size": model.grown_hist,
                           "within: real parents": model.real_self, "within: grown": model.grown_self}, model.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())

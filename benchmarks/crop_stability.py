"""Does the paper method's crop keep one image's code when the image is resampled?

Trains the paper method (NIH, 64 bits, width 0.5; epochs and crop options as given) and
records, besides validation and test mAP@100 and the crop statistics, the bit agreement of
each of the 48 NIH PNGs' codes from the 1024 px file and from a 256 px copy. The crop's box is
a hard decision (Otsu threshold, bounding box of a coarse map), so a resample can move it and
flip many bits; `--box-jitter` and `--min-evidence` are the training options against that.

    PYTHONPATH=. python benchmarks/crop_stability.py --seed 0 --epochs 60 --box-jitter 1 --min-evidence 0.1

One JSON per run under benchmarks/results/crop-stability/ (a cached run is not retrained).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retrieval_table as rt


def bit_agreement(model, spec) -> np.ndarray:
    """Per PNG: share of equal bits between the torch model's codes of the 1024 px file and a 256 px copy."""
    import torch

    from medhash_sdk.codes import pack_codes
    from medhash_sdk.preprocessing import preprocess_batch
    from medhash_train.evaluate import torch_outputs

    return rt.resolution_agreement(
        lambda images: pack_codes(torch_outputs(model, torch.from_numpy(preprocess_batch(images, spec)))[0]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--box", choices=("extent", "moments"), default="extent")
    p.add_argument("--box-jitter", type=float, default=0.0)
    p.add_argument("--min-evidence", type=float, default=0.0)
    p.add_argument("--out", default=os.path.join(rt.ROOT, "benchmarks", "results", "crop-stability"))
    a = p.parse_args(argv)
    import torch

    from medhash_sdk.codes import pack_codes
    from medhash_sdk.evaluation import evaluate_codes
    from medhash_train.evaluate import crop_statistics, torch_outputs
    from medhash_train.trainer import TrainConfig, train

    name = f"{a.box}-bj{a.box_jitter:g}-ev{a.min_evidence:g}-e{a.epochs}-s{a.seed}.json"
    path = os.path.join(a.out, name)
    if os.path.exists(path):
        with open(path) as f:
            print(f.read())
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    ds, x_all = rt._dataset("nih", 64)
    cfg = TrainConfig(method="attention", nbits=64, input_size=64, epochs=a.epochs, width=0.5, seed=a.seed,
                      progress=False, box=a.box, box_jitter=a.box_jitter, min_evidence=a.min_evidence)
    res = train(cfg, ds, log=print, x_all=x_all)
    u, _ = torch_outputs(res.model, torch.from_numpy(x_all))
    test = evaluate_codes(pack_codes(u), ds, "test")
    agree = bit_agreement(res.model, res.preprocessing)
    val_curve = [h["val_map"] for h in res.history if "val_map" in h]
    out = dict(box=a.box, box_jitter=a.box_jitter, min_evidence=a.min_evidence, seed=a.seed, epochs=a.epochs,
               chosen_epoch=res.best_epoch, val=res.best_val["map@100"], val_last5=float(np.mean(val_curve[-5:])),
               test=test["map@100"], test_ndcg=test["ndcg@100"],
               test_crop=crop_statistics(res.model, torch.from_numpy(x_all[ds.indices("test")])),
               agreement_mean=float(agree.mean()), agreement_min=float(agree.min()),
               images_below_90=int((agree < 0.9).sum()), images=len(agree), seconds=res.seconds)
    os.makedirs(a.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

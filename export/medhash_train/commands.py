"""The training side's `medhash` subcommands, found by the runtime CLI through the entry-point
group ``medhash.commands`` (see export/pyproject.toml); each entry point is a register(sub).

    medhash train --data PATH --method attention --bits 64 --out DIR
        train, choose the epoch on the validation split (or keep the last epoch when there is
        none), write DIR/checkpoint.pt, DIR/model.onnx and DIR/train_log.json
    medhash train --data PATH --recipe NAME --out DIR
        start from a named recipe (medhash_train.recipes); explicit flags override it
    medhash export CHECKPOINT --out model.onnx
        one self-describing ONNX file
"""
from __future__ import annotations

import argparse

from medhash_sdk.commands.arguments import fractions, non_negative_int, positive_int


TORCH_HINT = "medhash {cmd} needs torch, the CPU build pinned: pip install torch==2.13.0"


def _require_torch(cmd: str) -> None:
    """An ImportError that says what to install (the CLI prints it as one line, exit 2)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError(TORCH_HINT.format(cmd=cmd)) from e


def add_crop_options(p: argparse.ArgumentParser) -> None:
    """--box-jitter and --min-evidence (attention methods): also used by benchmarks/retrieval_table.py."""
    p.add_argument("--box-jitter", type=float, default=0.0, metavar="CELLS",
                   help="attention methods: move the crop box's edges by up to this many attention-map cells "
                        "while training, so codes survive a box edge shifting by a cell (default 0)")
    p.add_argument("--min-evidence", type=float, default=0.0, metavar="R",
                   help="attention methods: blend the crop towards the whole image when the attention map's "
                        "positive evidence is below R of its scale (0..1; default 0: always crop)")


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a hashing network and export it to ONNX",
                       description="Train on the train split, choose the epoch on the validation split "
                                   "(mAP@K), never look at the test split; write a checkpoint and the "
                                   "exported ONNX model.")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help=".npz (MedMNIST or images+labels+patient_id), a CSV label table or a folder "
                        "holding one; several are combined and deduplicated by image id")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="start from a named recipe's settings (medhash_train.recipes: plain, con-codes, paper, "
                        "...); flags given explicitly override it")
    p.add_argument("--method", default="attention",
                   help="attention (the paper's), ablation-global, ablation-crop, attention-dch (the paper's "
                        "network with DCH's pair loss), dsh, dpsh, hashnet, dch, csq, dtsh, idhn, dfh, dpn, "
                        "orthohash (default attention)")
    p.add_argument("--bits", type=positive_int, default=64, help="code length, a multiple of 8 (default 64)")
    p.add_argument("--input-size", type=positive_int, default=64, help="network input side in pixels (default 64)")
    p.add_argument("--local-scale", type=positive_int, default=1, metavar="S",
                   help="attention methods: the branches see input-size/S; the crop is taken from the full "
                        "input, so the local branch sees real detail (e.g. --input-size 128 --local-scale 2)")
    add_crop_options(p)
    p.add_argument("--contrastive", type=float, default=0.0, metavar="W",
                   help="weight of the NT-Xent term between two augmented views of each image (default 0: off)")
    p.add_argument("--contrastive-on", choices=("codes", "features"), default="codes",
                   help="NT-Xent on the code logits (default) or on a projection head of the pooled features")
    p.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (default 0.2)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights (per-step decay, e.g. 0.99) and "
                        "validate, keep and export it (default 0: off)")
    p.add_argument("--balanced", action="store_true", help="class-balanced batches instead of uniform ones")
    p.add_argument("--members", type=positive_int, default=1, metavar="N",
                   help="train N networks from seeds seed*N .. seed*N+N-1 and export them as one model whose code "
                        "is their N codes side by side (N x --bits bits; probabilities averaged; default 1)")
    p.add_argument("--pretrain-data", nargs="+", default=(), metavar="NPZ",
                   help="SimCLR-pretrain the backbone on these .npz files' images first (their 'test' split "
                        "left out); names not found as given are looked up beside the first --data file")
    p.add_argument("--pretrain-epochs", type=int, default=0, help="pretraining epochs (default 0: none)")
    p.add_argument("--freeze-backbone-epochs", type=int, default=0, metavar="N",
                   help="train only the heads for the first N epochs, then everything (LP-FT; default 0)")
    p.add_argument("--pretrain-on-train", action="store_true",
                   help="pretraining also sees the train split's own images (their labels unused)")
    p.add_argument("--pixel-bits", type=int, default=0, metavar="N",
                   help="append N bits: SimHash (fixed seeded projection, signs) of the input averaged to 32 x 32 "
                        "and standardised; the code has bits + N bits (default 0)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1,
                   help="1: colour images converted to gray (default); 3: kept as RGB")
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone", default="resnet18", help="resnet18, resnet34 or densenet121")
    p.add_argument("--width", type=float, default=0.5, help="backbone width multiplier (default 0.5)")
    p.add_argument("--backbone-weights", default=None, help="local state_dict file to start the backbone from")
    p.add_argument("--warmup-epochs", type=int, default=-1,
                   help="epochs on the classification/hash losses before the crop is used (default epochs//4)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="training seed")
    p.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the patient split (recorded in the model)")
    p.add_argument("--split-fractions", type=fractions, default=(0.7, 0.1, 0.2), metavar="TRAIN,VAL,TEST",
                   help="patient split fractions when the data has no given split (default 0.7,0.1,0.2)")
    p.add_argument("--scope-modalities", type=_names, default=[], metavar="M,M",
                   help="DICOM modalities the model is made for, written into its card and checked by "
                        "Encoder.analyze(strict=True), e.g. CR,DX (default: none stated)")
    p.add_argument("--scope-body-parts", type=_names, default=[], metavar="TERM,TERM",
                   help="body part terms one of which a DICOM input's Body Part Examined must contain, "
                        "e.g. CHEST,THORAX,LUNG (default: none stated)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_train, parser=p)


def train_settings(args: argparse.Namespace) -> dict:
    """TrainConfig settings from the parsed flags: a --recipe's settings, overridden by every flag
    given explicitly (one whose value differs from its default)."""
    given = dict(method=args.method, nbits=args.bits, input_size=args.input_size, channels=args.channels,
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone=args.backbone,
                 width=args.width, warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device,
                 backbone_weights=args.backbone_weights, progress=not args.no_progress,
                 local_scale=args.local_scale, box_jitter=args.box_jitter, min_evidence=args.min_evidence,
                 contrastive=args.contrastive, contrastive_on=args.contrastive_on, temperature=args.temperature, ema=args.ema,
                 balanced=args.balanced, pixel_bits=args.pixel_bits, pretrain_data=tuple(args.pretrain_data),
                 pretrain_epochs=args.pretrain_epochs, pretrain_on_train=args.pretrain_on_train,
                 freeze_backbone_epochs=args.freeze_backbone_epochs, members=args.members)
    import os

    from .recipes import recipe, resolve

    data_dir = os.path.dirname(os.path.abspath(args.data[0]))
    if not args.recipe:
        return resolve(given, data_dir, os.path.join(args.out, "pretrain"))
    settings = recipe(args.recipe)
    flag = {"nbits": "bits", "progress": "no_progress"}
    for key, value in given.items():
        dest = flag.get(key, key)
        if getattr(args, dest) != args.parser.get_default(dest) or key not in settings:
            settings[key] = value
    settings["recipe"] = args.recipe
    return resolve(settings, data_dir, os.path.join(args.out, "pretrain"))


def run_train(args: argparse.Namespace) -> int:
    _require_torch("train")
    from .pipeline import train_and_export
    from .trainer import TrainConfig

    cfg = TrainConfig(**train_settings(args))
    scope = {k: v for k, v in (("modalities", args.scope_modalities), ("body_parts", args.scope_body_parts)) if v}
    train_and_export(cfg, args.data, args.out, split_seed=args.split_seed, fractions=args.split_fractions,
                     scope=scope)
    return 0


def _names(text: str) -> list[str]:
    return [t.strip().upper() for t in text.split(",") if t.strip()]


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a training checkpoint to ONNX",
                       description="torch.onnx dynamo exporter, opset 18, one file, dynamic batch; the model "
                                   "card (nbits, preprocessing, labels, training data and split, versions, "
                                   "fingerprint) goes into the file's metadata.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt written by `medhash train`")
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    _require_torch("export")
    from .onnx_export import export_checkpoint

    card = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: {card.method}, {card.nbits} bits, {card.input_size} px, fingerprint {card.fingerprint}")
    return 0

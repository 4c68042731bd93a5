"""The `medhash` command. Each subcommand lives in medhash_sdk/commands/<name>.py with
`register(subparsers)` (argument parsing only, cheap imports) and `run(args) -> int`.
Commands that need torch (train, eval, export) import the training package inside run();
main() turns a missing optional dependency (torch, onnxruntime, ray, ...) into its install hint.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .exceptions import MedhashError

TRAINING_HINT = ("medhash {cmd} needs the training extra (torch): pip install torch==2.13.0 && "
                 "pip install 'medhash-sdk[train]'")

# command name -> module under medhash_sdk.commands
COMMANDS = {
    "demo": "demo",
    "encode": "encode",
    "index": "index",
    "search": "search",
    "engine": "engine",
    "train": "train",
    "eval": "eval",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medhash", description="Find similar medical images by deep hashing.")
    parser.add_argument("--version", action="version", version=f"medhash-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f".commands.{module}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.commands.{module}":
                raise
            continue  # command not built yet
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except MedhashError as e:
        print(f"medhash {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:  # an optional dependency is missing: say what to install
        torch_missing = e.name == "torch" or "torch" in str(e)
        print(TRAINING_HINT.format(cmd=args.command) if torch_missing else f"medhash {args.command}: error: {e}",
              file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:  # a bad argument or combination: the message says which
        if os.environ.get("MEDHASH_DEBUG"):
            raise
        print(f"medhash {args.command}: error: {e} (MEDHASH_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except OSError as e:  # a missing file, a folder without permission, a full disk
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"medhash {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medhash {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

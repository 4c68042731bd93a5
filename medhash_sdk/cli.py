"""The `medhash` command. Each built-in subcommand lives in medhash_sdk/commands/<name>.py with
`register(subparsers)` (argument parsing only, cheap imports) and `run(args) -> int`.

Other distributions add subcommands through the entry-point group ``medhash.commands``: each
entry point names a register(subparsers) function. The training side (export/, medhash-train)
adds `train` and `export` that way, so this package names no training module.
main() turns a missing optional dependency (onnxruntime, ray, ...) into its install hint.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .exceptions import MedhashError

PLUGIN_GROUP = "medhash.commands"
PLUGIN_HINT = ("medhash: {cmd!r} is not a command here. The training commands (train, export) come with "
               "the training package: pip install torch==2.13.0 && pip install ./export (from the "
               "medhash-sdk source tree)")

# command name -> module under medhash_sdk.commands
COMMANDS = {
    "demo": "demo",
    "encode": "encode",
    "index": "index",
    "search": "search",
    "engine": "engine",
    "eval": "eval",
    "serve": "serve",
    "token": "token",
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
    for ep in _plugin_commands():
        if ep.name in COMMANDS:
            continue   # a plugin never replaces a built-in command
        try:
            ep.load()(sub)
        except ImportError as e:   # a broken plugin install must not take the whole CLI down
            print(f"medhash: command {ep.name!r} from {ep.value} is unavailable: {e}", file=sys.stderr)
    parser.set_defaults(command_names=frozenset(sub.choices))
    return parser


def _plugin_commands() -> list:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in parser.get_default("command_names"):
        print(PLUGIN_HINT.format(cmd=argv[0]), file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # --help (0) or a bad argument (2, after argparse's one-line message)
        return int(e.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except MedhashError as e:
        print(f"medhash {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:  # an optional dependency is missing: its message says what to install
        print(f"medhash {args.command}: error: {e}", file=sys.stderr)
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

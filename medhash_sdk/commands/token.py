"""`medhash token create|list|revoke --data-dir DIR`: bearer tokens of `medhash serve`."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="create, list or revoke the bearer tokens of `medhash serve`")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="make a token and print it (once: only its hash is kept)")
    c.add_argument("--data-dir", required=True, help="the service's data folder")
    c.add_argument("--role", required=True, choices=["read", "write"],
                   help="read: search and get; write: also add, replace, delete, STOW-RS")
    c.add_argument("--name", default=None, help="a name for the audit log (default ROLE-N)")
    c.set_defaults(run=run_create)
    ls = actions.add_parser("list", help="names, roles and creation times (not the tokens)")
    ls.add_argument("--data-dir", required=True)
    ls.set_defaults(run=run_list)
    r = actions.add_parser("revoke", help="delete a token by name (a running service stops accepting it)")
    r.add_argument("--data-dir", required=True)
    r.add_argument("--name", required=True)
    r.set_defaults(run=run_revoke)


def _db(args: argparse.Namespace, create: bool):  # type: ignore[no-untyped-def]
    from ..serve.db import Database, DataFolderError
    from ..exceptions import MedhashError

    try:
        return Database(args.data_dir, create=create)
    except DataFolderError as e:
        raise MedhashError(str(e)) from None


def run_create(args: argparse.Namespace) -> int:
    from ..serve.tokens import check_name, create

    if args.name is not None:
        check_name(args.name)
    db = _db(args, create=True)
    try:
        name, token = create(db, args.role, args.name)
    finally:
        db.close()
    print(f"created {args.role} token {name!r}; it is shown only this once:", file=sys.stderr)
    print(token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..serve.tokens import listing

    db = _db(args, create=False)
    try:
        for name, role, created in listing(db):
            print(f"{name}\t{role}\t{created}")
    finally:
        db.close()
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from ..exceptions import MedhashError
    from ..serve.tokens import revoke

    db = _db(args, create=False)
    try:
        if not revoke(db, args.name):
            raise MedhashError(f"no token named {args.name!r}")
    finally:
        db.close()
    print(f"revoked token {args.name!r}", file=sys.stderr)
    return 0

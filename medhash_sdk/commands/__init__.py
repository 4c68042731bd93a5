"""Subcommands of the `medhash` CLI: each module has register(subparsers) and run(args).

Convention::

    def register(sub):
        p = sub.add_parser("name", help="...")
        p.add_argument(...)
        p.set_defaults(run=run)

    def run(args) -> int: ...   # exit status; raise MedhashError for data problems
"""

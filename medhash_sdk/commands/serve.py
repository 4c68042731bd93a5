"""`medhash serve --data-dir DIR [--model M] [--host H] [--port P] [--dicom-port P --ae-title T]
[--tls-cert C --tls-key K]`: the similar-case service (medhash_sdk.serve)."""
from __future__ import annotations

import argparse
import os

from .arguments import port, positive_int, positive_number, providers


def _ae_title(s: str) -> str:
    if not 1 <= len(s) <= 16 or not s.isascii() or "\\" in s or not s.strip():
        raise argparse.ArgumentTypeError(f"an AE title is 1-16 ASCII characters without '\\', got {s!r}")
    return s


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the similar-case service (HTTP API, DICOM C-STORE SCP, viewer page)",
                       description="Serve the similar-case search over HTTP (JSON API, STOW-RS, a viewer page at /) "
                                   "and optionally DICOM C-STORE. Everything it stores lives in --data-dir. Needs "
                                   "the serve extra: pip install \"medhash-sdk[serve]\". Tokens: `medhash token "
                                   "create --data-dir DIR --role write|read`.")
    p.add_argument("--data-dir", required=True, help="folder of the database, snapshots and audit log (created if new)")
    p.add_argument("--model", default=None, help="model file (.onnx or .engine); default: the bundled model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="HTTP(S) port (default 8080)")
    p.add_argument("--dicom-port", type=port, default=None,
                   help="run a DICOM C-STORE SCP on this port (off unless given; 11112 is usual)")
    p.add_argument("--ae-title", type=_ae_title, default="MEDHASH", help="the SCP's AE title (default MEDHASH)")
    p.add_argument("--dicom-allow", default=None, metavar="AE[,AE...]",
                   help="accept associations only from these calling AE titles")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--max-upload-mb", type=positive_number, default=64.0,
                   help="largest request body in MiB (default 64)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="largest image in pixels (default: the Encoder's, 8192 x 8192)")
    p.add_argument("--dicomweb-url", default=None,
                   help="a PACS's DICOMweb root for searches by UID (WADO-RS/QIDO-RS), e.g. http://pacs:8042/dicom-web")
    p.add_argument("--kos-stow-url", default=None,
                   help="send Key Object Selection documents of search results here (STOW-RS root); "
                        "needs --dicomweb-url to read the matched studies' patient module")
    p.add_argument("--snapshot-interval", type=positive_number, default=300.0,
                   help="seconds between index snapshots while items change (default 300)")
    p.add_argument("--decode-threads", type=positive_int, default=None,
                   help="threads decoding uploads and DICOM instances (default: two per core, at least 4)")
    p.add_argument("--search-threads", type=positive_int, default=1,
                   help="cores one batched scan uses (default 1; 2 lifted search by id over 1M 256-bit codes "
                        "~30%% on CPUs without AVX-512, README 'Service')")
    p.add_argument("--providers", default="auto", help="ONNX Runtime providers (default auto)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)   # tests: the bound ports, as JSON
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    for f in (args.tls_cert, args.tls_key):
        if f is not None and not os.path.isfile(f):
            raise FileNotFoundError(2, "no such file", f)
    from ..serve import require

    require()
    from ..readers import MAX_PIXELS
    from ..serve.server import run as serve
    from ..serve.service import Settings

    settings = Settings(
        data_dir=os.path.abspath(args.data_dir), model=args.model, host=args.host, port=args.port,
        dicom_port=args.dicom_port, ae_title=args.ae_title,
        dicom_allow=[a.strip() for a in args.dicom_allow.split(",") if a.strip()] if args.dicom_allow else None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, max_upload=int(args.max_upload_mb * (1 << 20)),
        max_pixels=args.max_pixels or MAX_PIXELS, dicomweb_url=args.dicomweb_url, kos_stow_url=args.kos_stow_url,
        snapshot_interval=args.snapshot_interval, decode_threads=args.decode_threads,
        search_threads=args.search_threads,
        providers=providers(args.providers))
    return serve(settings, log_level=args.log_level, ready_file=args.ready_file)

"""Where the tests find the real data: ../shared/data beside the checkout, or $MEDHASH_DATA."""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("MEDHASH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
NIH_PNG_DIR = SHARED_DATA / "nih_png_1024"
NIH_PNGS = sorted(NIH_PNG_DIR.glob("*.png"))

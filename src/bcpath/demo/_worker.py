"""Child-process entry point: ``python -m bcpath.demo._worker OUT_DIR SEED INDEX [WxH]``.

Makes one demo slide and prints its cohort record as one JSON line on stdout; logs go to
stderr. Used by ``make_demo_cohort`` when ``threads > 1``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from bcpath.demo.cohort import make_demo_slide


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    out_dir, seed, index = Path(argv[0]), int(argv[1]), int(argv[2])
    size = tuple(int(v) for v in argv[3].split("x")) if len(argv) > 3 else None
    record = make_demo_slide(out_dir, seed, index, size, threads=1)  # type: ignore[arg-type]
    sys.stdout.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``bcpath`` command line: the library's steps without Snakemake.

    bcpath info SLIDE [--mpp 0.5]
    bcpath tissue SLIDE --out DIR [--mpp 0.5]
    bcpath tile SLIDE --out DIR [--mpp 0.5] [--tile-mpp 2.0] [--tile-px 512]
    bcpath demo --out DIR [--n-slides 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bcpath import __version__
from bcpath.errors import BcpathError

# Sub-commands contributed by stage packages: each registers itself on the subparsers.
_PLUGIN_REGISTRARS = (
    "bcpath.nuclei.cli:add_nuclei_subparser",
    "bcpath.ihc.cli:add_ihc_subparser",
    "bcpath.proliferation.cli:add_mitosis_subparser",
)


def _cmd_info(args: argparse.Namespace) -> int:
    from bcpath.pipeline import inspect_slide

    out = Path(args.out) if args.out else Path("/dev/stdout")
    slide_id = Path(args.slide).stem
    if args.out:
        inspect_slide(args.slide, slide_id, out, mpp=args.mpp, default_mpp=None)
    else:
        from bcpath.wsi import file_sha256, open_slide

        with open_slide(args.slide, mpp=args.mpp) as slide:
            info = slide.info()
        info["sha256"] = file_sha256(args.slide)
        print(json.dumps(info, indent=2))
    return 0


def _cmd_tissue(args: argparse.Namespace) -> int:
    from bcpath.tissue import extract_tissue
    from bcpath.wsi import open_slide

    with open_slide(args.slide, mpp=args.mpp) as slide:
        qc = extract_tissue(slide, Path(args.out), user_mask=args.mask)
    print(json.dumps(qc, indent=2))
    return 0


def _cmd_tile(args: argparse.Namespace) -> int:
    from bcpath.tiling import TilingParams, tile_slide
    from bcpath.tissue import TissueParams, detect_tissue
    from bcpath.wsi import open_slide

    out = Path(args.out)
    params = TilingParams(mpp=args.tile_mpp, tile_px=args.tile_px, min_tissue_fraction=args.min_tissue_fraction, compression=args.compression)
    with open_slide(args.slide, mpp=args.mpp) as slide:
        mask_mpp = max(TissueParams().mask_mpp, slide.mpp)
        mask = detect_tissue(slide.thumbnail(mask_mpp), mask_mpp)
        grid = tile_slide(slide, mask, mask_mpp, out / "tiles.zarr", out / "grid.parquet", out / "patches.h5", params=params, threads=args.threads, progress=True)
    print(f"{grid.n_tiles} tiles written to {out / 'tiles.zarr'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bcpath.demo import make_demo_cohort

    make_demo_cohort(Path(args.out), n_slides=args.n_slides, seed=args.seed, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcpath", description="Breast-cancer computational pathology tools.")
    parser.add_argument("--version", action="version", version=f"bcpath {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="reader, levels, µm/px and sha256 of a slide")
    info.add_argument("slide")
    info.add_argument("--mpp", type=float, help="µm/px to use when the file has none")
    info.add_argument("--out", help="write info.json here instead of printing")
    info.set_defaults(func=_cmd_info)

    tissue = sub.add_parser("tissue", help="tissue mask, GeoJSON, thumbnail and QC of a slide")
    tissue.add_argument("slide")
    tissue.add_argument("--out", required=True, help="output folder")
    tissue.add_argument("--mpp", type=float, help="µm/px to use when the file has none")
    tissue.add_argument("--mask", help="user mask (PNG over the whole slide, or GeoJSON in level-0 px)")
    tissue.set_defaults(func=_cmd_tissue)

    tile = sub.add_parser("tile", help="tile a slide's tissue into tiles.zarr + grid.parquet + patches.h5")
    tile.add_argument("slide")
    tile.add_argument("--out", required=True, help="output folder")
    tile.add_argument("--mpp", type=float, help="µm/px to use when the file has none")
    tile.add_argument("--tile-mpp", type=float, default=2.0, help="analysis µm/px (default 2.0)")
    tile.add_argument("--tile-px", type=int, default=512, help="tile edge in px (default 512)")
    tile.add_argument("--min-tissue-fraction", type=float, default=0.1)
    tile.add_argument("--compression", choices=["lossless", "jpeg"], default="lossless")
    tile.add_argument("--threads", type=int, default=2)
    tile.set_defaults(func=_cmd_tile)

    demo = sub.add_parser("demo", help="write the synthetic demo cohort")
    demo.add_argument("--out", required=True)
    demo.add_argument("--n-slides", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=2)
    demo.set_defaults(func=_cmd_demo)

    for target in _PLUGIN_REGISTRARS:
        module_name, _, function_name = target.partition(":")
        registrar: Callable[[argparse._SubParsersAction], None] | None
        try:
            module = __import__(module_name, fromlist=[function_name])
            registrar = getattr(module, function_name, None)
        except ModuleNotFoundError as error:
            # A stage that has not landed yet is skipped; a broken import inside one is not.
            if error.name is None or not module_name.startswith(error.name):
                raise
            registrar = None
        if registrar is not None:
            registrar(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BcpathError as error:
        print(f"bcpath: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

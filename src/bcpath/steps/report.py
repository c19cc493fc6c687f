"""Steps of rules/report.smk: report tables and overlays. The drawing is in :mod:`bcpath.report`
and :mod:`bcpath.overlays`."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def table_html_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.report import write_table_html

    write_table_html(input.csv, output.html, params.title, params.note)


def nuclei_overlay_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.report import nuclei_overlay

    nuclei_overlay(input.slide, input.info, input.labels, input.features, output.png, float(params.window_um))


def nuclei_counts_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.io import atomic_path, write_text
    from bcpath.overlays import html_table
    from bcpath.report import nuclei_counts

    table = nuclei_counts(list(params.slides), list(input.features), list(input.regions), list(input.qc), params.region)
    with atomic_path(output.csv) as tmp:
        table.to_csv(tmp, index=False)
    note = (
        f"Nuclei segmented per slide in the {params.region} region; nuclei_per_mm2 = n_nuclei / region_area_mm2. "
        "Per-nucleus measurements: results/slides/<slide>/nuclei/features.parquet."
    )
    write_text(output.html, html_table(table, "Nuclei per slide", note))


def hotspot_overlay_step(input: Any, output: Any, params: Any, **_: Any) -> None:
    from bcpath.report import hotspot_overlay

    hotspot_overlay(
        input.slide, input.info, input.thumbnail, input.qc, input.tumor, input.features, input.mitoses,
        output.png, int(params.closeup_px),
    )

"""Synthetic demo cohort: H&E slides with planted ER/PR/HER2 phenotypes and known truth.

``make_demo_cohort(out_dir, n_slides=8, seed=0, threads=1)`` writes pyramidal JPEG TIFF
slides at ``DEMO_MPP`` µm/px, ``samples.tsv``, QuPath GeoJSON region annotations and
ground-truth nuclei/mitoses (layout in ``bcpath.demo.cohort``). Region classes are
``"{ER|PR|HER2}-{positive|negative} tumor"`` and ``"non-tumor"``; ``region_label`` maps a
feature to the label of one biomarker (both in :mod:`bcpath.labels`, with ``BIOMARKERS``).

Modules: ``painting`` (stain-density drawing primitives), ``phenotypes`` (phenotype registry
and tumor painters), ``scene`` (slide composition), ``writer`` (files), ``cohort`` (labels,
orchestration), annotation classes: :mod:`bcpath.labels`.
"""

from bcpath.demo.cohort import (
    DEMO_MPP,
    GENERATOR_VERSION,
    demo_slide_ids,
    make_demo_cohort,
    plan_slide,
)

__all__ = [
    "DEMO_MPP",
    "GENERATOR_VERSION",
    "PHENOTYPES",
    "demo_slide_ids",
    "make_demo_cohort",
    "plan_slide",
]


def __getattr__(name: str) -> object:
    # PHENOTYPES pulls in OpenCV; load it on first use so `import bcpath.demo` stays fast.
    if name == "PHENOTYPES":
        from bcpath.demo.phenotypes import PHENOTYPES

        return PHENOTYPES
    raise AttributeError(f"module 'bcpath.demo' has no attribute {name!r}")

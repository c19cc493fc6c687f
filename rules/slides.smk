# Per-slide foundation: inspect → tissue mask + QC → tiles.zarr / grid.parquet / patches.h5.
# Steps: bcpath.steps.slides.


rule inspect_slide:
    input:
        slide=slide_path,
    output:
        info="results/slides/{slide}/info.json",
    log:
        "logs/inspect_slide/{slide}.log",
    params:
        code=step_code("inspect_slide"),
        slide_id=lambda wildcards: wildcards.slide,
        mpp=sheet_value("mpp"),
        stain=sheet_value("stain"),
        default_mpp=config.get("default_mpp"),
        fingerprint=slide_fingerprint,
        failure_record=failure_record("inspect_slide"),
    # The per-slide preparation (this rule, detect_tissue, tile_slide) goes first: it is cheap and
    # unblocks every slide-level step, which then runs beside the model trainings.
    priority: 10
    # one file read for the sha256; I/O bound
    threads: 1
    resources:
        mem_mb=1000,
        runtime=20,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/inspect_slide.py"


rule detect_tissue:
    input:
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        user_mask=user_tissue_mask,
    output:
        mask="results/slides/{slide}/tissue/mask.png",
        geojson="results/slides/{slide}/tissue/tissue.geojson",
        thumbnail=report(
            "results/slides/{slide}/tissue/thumbnail.png",
            category="QC",
            subcategory="tissue",
            caption="../report/qc_thumbnail.rst",
            labels={"slide": "{slide}", "figure": "tissue contour"},
        ),
        qc="results/slides/{slide}/tissue/qc.json",
    log:
        "logs/detect_tissue/{slide}.log",
    benchmark:
        "benchmarks/detect_tissue/{slide}.tsv"
    params:
        code=step_code("detect_tissue"),
        tissue=config["tissue"],
        qc=config["qc"],
        user_mask=sheet_value("tissue_mask"),
        failure_record=failure_record("detect_tissue"),
    # thumbnail read + morphology on a small image: single-threaded
    priority: 10
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/detect_tissue.py"


rule tile_slide:
    input:
        slide=slide_path,
        info="results/slides/{slide}/info.json",
        mask="results/slides/{slide}/tissue/mask.png",
        qc="results/slides/{slide}/tissue/qc.json",
    output:
        zarr=directory("results/slides/{slide}/tiles.zarr"),
        grid="results/slides/{slide}/grid.parquet",
        h5="results/slides/{slide}/patches.h5",
    log:
        "logs/tile_slide/{slide}.log",
    benchmark:
        "benchmarks/tile_slide/{slide}.tsv"
    params:
        code=step_code("tile_slide"),
        tiling=config["tiling"],
        failure_record=failure_record("tile_slide"),
    # decode (OpenSlide) and resize (OpenCV) release the GIL: reads run in parallel threads
    # (2; 1 on a 2-core machine, so tiling starts beside a 1-thread training)
    priority: 10
    threads: half_the_cores(LOCAL_CORES, cap=2)
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/tile_slide.py"


rule aggregate_qc:
    input:
        qc=slide_outputs("results/slides/{slide}/tissue/qc.json"),
        info=slide_outputs("results/slides/{slide}/info.json"),
        grid=slide_outputs("results/slides/{slide}/grid.parquet"),
    output:
        csv="results/cohort/qc.csv",
    log:
        "logs/aggregate_qc/cohort.log",
    params:
        code=step_code("aggregate_qc"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/aggregate_qc.py"

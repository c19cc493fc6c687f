# The embedded synthetic demo cohort (used when neither `cohort` nor `samples` is set).
# Step: bcpath.steps.demo.

DEMO_IDS = HE_SLIDES if IS_DEMO else []
DEMO_TMA = [DEMO_TMA_ID] if IS_DEMO and config["demo"]["tma"] else []


rule make_demo_cohort:
    output:
        slides=expand("results/demo_cohort/slides/{slide}.tiff", slide=DEMO_IDS),
        annotations=expand("results/demo_cohort/annotations/{slide}.geojson", slide=DEMO_IDS),
        nuclei=expand("results/demo_cohort/truth/{slide}.nuclei.csv", slide=DEMO_IDS),
        mitoses=expand("results/demo_cohort/truth/{slide}.mitoses.csv", slide=DEMO_IDS),
        tma=expand("results/demo_cohort/slides/{slide}.tiff", slide=DEMO_TMA),
        tma_annotations=expand("results/demo_cohort/annotations/{slide}.geojson", slide=DEMO_TMA),
        tma_truth=expand("results/demo_cohort/truth/{slide}.{kind}.csv", slide=DEMO_TMA, kind=["hscore", "cores"]),
        samples="results/demo_cohort/samples.tsv",
        cohort="results/demo_cohort/cohort.json",
    log:
        "logs/make_demo_cohort/demo.log",
    benchmark:
        "benchmarks/make_demo_cohort/demo.tsv"
    params:
        code=step_code("make_demo_cohort"),
        n_slides=config["demo"]["n_slides"],
        seed=config["demo"]["seed"],
        tma=config["demo"]["tma"],
    # slides are painted independently, one process per thread
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/wsi.yaml"
    script:
        "../workflow_scripts/make_demo_cohort.py"

# Report set-up shared by rules/report.smk: the report's front page, its targets and input functions.


report: "../report/workflow.rst"


NUCLEI_REPORT_REGION = "tumour" if NUCLEI_IN_TUMOR else "tissue"


def _nuclei_region_masks(wildcards):
    pattern = "results/slides/{slide}/nuclei/region.png" if NUCLEI_IN_TUMOR else "results/slides/{slide}/tissue/mask.png"
    return nuclei_slide_outputs(pattern)


def report_targets():
    """The figures and tables rules/report.smk makes in a run (rule all)."""
    targets = ["results/cohort/qc.html"]
    if NUCLEI["enabled"] and NUCLEI_SLIDES:
        targets += [*nuclei_slide_outputs("results/slides/{slide}/nuclei/overlay.png"), "results/cohort/nuclei/counts.html"]
    if PROLIF_ON:
        targets += he_slide_outputs("results/slides/{slide}/proliferation/hotspot.png")
    if IHC_SLIDES:
        targets.append("results/cohort/ihc/hscore.html")
    return targets

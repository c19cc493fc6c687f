"""The steps layer: what each Snakemake rule does, callable without Snakemake.

One module per rule file: ``bcpath.steps.<family>`` holds the ``*_step`` functions of
``rules/<family>.smk`` (slides, demo, erpr, nuclei, ihc, proliferation, report). A step takes
the job's named ``input``, ``output`` and ``params`` (and ``threads``) as
:func:`bcpath.workflow.run_rule` passes them, reads its settings from ``params`` and calls the
library functions of the systems below; those never see Snakemake's shapes. Imports of the
systems stay inside each step, so a rule's ``step_code`` counts only the code its step reaches.
"""

"""bcpath: breast-cancer computational pathology, as a library and a Snakemake workflow."""

__version__ = "0.1.0"

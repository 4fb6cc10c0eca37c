"""caliban-flows: Caliban's reproducible Docker experiments, rebuilt on Prefect 3."""

__version__ = "0.1.0"

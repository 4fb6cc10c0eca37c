"""Prefect flows: one experiment group per submission, plus stop, resubmit and sync."""

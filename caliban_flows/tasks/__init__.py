"""Prefect tasks: build, push, expand, submit, monitor, cancel."""

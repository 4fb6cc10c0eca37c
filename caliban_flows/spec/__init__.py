"""Pure domain logic: no I/O beyond reading package data, no Prefect, no cloud SDKs."""

"""Prefect blocks for settings that outlive a command."""

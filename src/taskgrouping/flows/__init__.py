"""Prefect flows: only sequencing."""

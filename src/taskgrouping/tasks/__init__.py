"""Prefect task wrappers (the DAG's steps), a few lines each around the pure code."""

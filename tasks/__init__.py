"""Thin Prefect task wrappers: caching, retries, storage and logging around the library."""

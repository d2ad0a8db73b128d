"""Deployment definitions: prefect.yaml (work pool), serve.py (one process) and their shared settings."""

"""Flows: Prefect flows that compose the packages into the continuous loop, and the demo."""

"""Flows: Prefect flows that compose the packages into the continuous loop (the demo, one layer up, drives them)."""

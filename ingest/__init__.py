"""Ingest: the v1 feedback event contract, the Python SDK and the HTTP gateway into Kafka."""

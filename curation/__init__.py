"""Curation: the stream stage that drops adversarial and low-quality feedback and builds preference data."""

"""The seeded attacked feedback stream, its scorer and curation workers run as processes (tests and bench/curation)."""

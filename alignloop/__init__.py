"""alignloop's core: settings, the store foundation, the local stack and the CLI that composes the packages."""

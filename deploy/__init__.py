"""Deploy: the adapter registry, serving with hot swap, canary routing and rollback."""

"""The ground every stage stands on: settings base, store base and migrations, the error root, the local stack, keys."""

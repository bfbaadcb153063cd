"""alignloop: the ground package `alignloop.core` below every stage, and the composition (`alignloop.cli`,
`alignloop.demo`) above them all."""

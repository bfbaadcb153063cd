"""The `alignloop retrain` command group; heavy imports stay inside the commands."""

import typer

app = typer.Typer(help=__import__("retrain").__doc__, no_args_is_help=True)

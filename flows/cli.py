"""The `alignloop flows` command group and `alignloop demo`; heavy imports stay inside the commands."""

import typer

app = typer.Typer(help=__import__("flows").__doc__, no_args_is_help=True)


def demo() -> None:
    """Run the whole loop on the embedded defaults (until the loop exists: the stack and a smoke check)."""
    from flows.smoke import run_smoke

    run_smoke()

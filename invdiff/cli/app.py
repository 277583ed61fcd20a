"""The Typer application object every subcommand module registers on."""

import typer

app = typer.Typer(
    name="invdiff",
    help="Scientific inverse problems (CT, MRI, microscopy) with score-based diffusion priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

"""The command line layer: the Typer app (:mod:`tritoncorr.cli.app`) and one module per command group
that reads the options, runs the library and prints the results. Only this package imports typer;
bad input ends through :func:`tritoncorr.cli.common.fail` (``error: ...``, exit status 2)."""

from tritoncorr.cli.app import app

__all__ = ["app"]

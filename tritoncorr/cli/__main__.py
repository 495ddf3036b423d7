"""``python -m tritoncorr.cli ...`` (e.g. under ``torchrun``) runs the ``tritoncorr`` command."""

from tritoncorr.cli.app import app

app()

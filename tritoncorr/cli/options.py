"""The options several commands share, each declared once (its type, default and help text).

:class:`PropagationOptions` holds the model and propagation settings of every ``eval`` command and of
``propagate``; :func:`with_options` gives a command some or all of its fields as command-line options
and hands them to it as one ``opts`` object. The other shared options (``--overwrite``,
``--cache-features``, ``--workers``, ``--overlays``, ...) are the ``Annotated`` aliases below.
"""

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer


def path_option(*flags: str, help: str):
    """The declaration of an optional path option (default None): ``Annotated[Optional[Path],
    typer.Option(*flags, help=help)]``, written once for the commands' roots, outputs and inputs."""
    return Annotated[Optional[Path], typer.Option(*flags, help=help)]


def dataset_root_option(contents: str, folder: str, note: str = ""):
    """``--root`` of a benchmark: the help names the root's ``contents`` and its default, the first of
    ``$TRITONCORR_DATA/<folder>`` and ``~/.cache/tritoncorr/<folder>`` (:func:`tritoncorr.data.config.find_dataset`)."""
    return path_option(help=f"{contents}. Default: $TRITONCORR_DATA/{folder} or ~/.cache/tritoncorr/{folder}{note}.")


CHECKPOINT_HELP = (
    "Weights: a training run's model.safetensors / init.safetensors (the method, its features and its preset are "
    "read from it), a run folder, a plain ResNet-18 backbone .safetensors, a published name (tritoncorr weights "
    "list), an https:// URL or hf://OWNER/REPO/PATH."
)

Checkpoint = Annotated[Optional[str], typer.Option(help=CHECKPOINT_HELP + " Default: random init (seeded).")]
Seed = Annotated[
    int,
    typer.Option(
        help="Seed of the random-init backbone (no --checkpoint). A training run's "
        "initial weights are those of its recipe seed (recipes/dul.py: 32)."
    ),
]
Preset = Annotated[
    Optional[str],
    typer.Option(
        help="Propagation preset (dul, crw, stt, liir, mast, or common: DUL's kNN protocol for any method, the same "
        "window in pixels at any stride). Default: the checkpoint's method preset (dul for plain backbones and "
        "random init), with its settings for the task."
    ),
]
Context = Annotated[Optional[int], typer.Option(help="Previous frames in the context (preset: 20).")]
Radius = Annotated[
    Optional[int],
    typer.Option(
        help="Spatial radius in feature cells (default: the preset's window in pixels at the checkpoint's stride, "
        "e.g. 12 at stride 8, 24 at 4)."
    ),
]
Topk = Annotated[Optional[int], typer.Option(help="Top-k neighbours (preset: 10).")]
Temperature = Annotated[Optional[float], typer.Option(help="Softmax temperature (preset: 0.05).")]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
Precision = Annotated[
    str,
    typer.Option(
        help="Feature extractor precision: fp32 (the papers' protocol) or bf16 (autocast; ~4x faster features on CPUs "
        "with AMX; DAVIS J&F moved by 0.001 on bear)."
    ),
]


Overwrite = Annotated[
    bool,
    typer.Option(
        help="Start again in --out even if it holds an evaluation with other settings or another checkpoint (by "
        "default a rerun with the same settings skips the finished sequences and other settings are refused)."
    ),
]
CacheFeatures = path_option(
    "--cache-features",
    help="Feature cache folder: each sequence's features are stored once (safetensors, keyed "
    "by the checkpoint's SHA-256, input size, padding and precision) and read back by later runs with other "
    "propagation settings (--topk, --temperature, --radius, --context, --preset).",
)
Workers = Annotated[int, typer.Option(min=0, help="Score sequences in this many processes (0 = in this one).")]
Split = Annotated[str, typer.Option(help="ImageSets/2017/<split>.txt")]
Resolution = Annotated[str, typer.Option(help="480p or Full-Resolution")]
Sequences = Annotated[Optional[list[str]], typer.Option("--sequence", "-s", help="Only these sequences (repeatable).")]
Videos = Annotated[Optional[list[str]], typer.Option("--video", "-s", help="Only these videos (repeatable).")]
MaskOverlays = Annotated[bool, typer.Option(help="Also write frames with coloured masks for viewing.")]
SIZE_HELP = "Network input side: frames resized to SIZE x SIZE (0 = native). Default: the task preset's"


@dataclasses.dataclass(frozen=True)
class PropagationOptions:
    """The model and propagation settings of ``tritoncorr eval *`` and ``tritoncorr propagate``.

    ``checkpoint``/``seed`` choose the weights; ``preset`` the propagation protocol (None: the
    checkpoint's); ``context``, ``radius`` (feature cells), ``topk``, ``temperature`` override the
    preset's fields (None: keep); ``device`` is ``cpu``, ``cuda`` or ``auto``; ``precision`` the
    feature extractor's (``fp32`` or ``bf16``). Each field's type is its command-line declaration.
    """

    checkpoint: Checkpoint = None
    seed: Seed = 0
    preset: Preset = None
    context: Context = None
    radius: Radius = None
    topk: Topk = None
    temperature: Temperature = None
    device: Device = "auto"
    precision: Precision = "fp32"

    def overrides(self) -> dict:
        """The propagation fields given on the command line (not None), e.g. ``{"topk": 5}``."""
        fields = dict(context=self.context, radius=self.radius, topk=self.topk, temperature=self.temperature)
        return {k: v for k, v in fields.items() if v is not None}


#: The placeholder default of a command's ``opts`` parameter (:func:`with_options` puts the fields in its place).
DEFAULT_OPTIONS = PropagationOptions()


def with_options(*names: str):
    """Decorator of a Typer command with an ``opts`` parameter: in its place the command gets the
    :class:`PropagationOptions` fields ``names`` (default: all) as options, each with its declaration
    in the class, and receives them as one ``opts`` object (the fields not named keep their defaults)."""
    chosen = names or tuple(f.name for f in dataclasses.fields(PropagationOptions))
    declared = typing.get_type_hints(PropagationOptions, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(PropagationOptions)}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        params = []
        for p in signature.parameters.values():
            if p.name != "opts":
                params.append(p)
                continue
            params += [inspect.Parameter(n, p.kind, annotation=declared[n], default=defaults[n]) for n in chosen]

        @functools.wraps(command)
        def run(**kwargs):
            opts = PropagationOptions(**{n: kwargs.pop(n) for n in chosen})
            return command(opts=opts, **kwargs)

        run.__signature__ = signature.replace(parameters=params)
        return run

    return decorate

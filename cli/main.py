"""`talk`: the command line, one sub-app (or command) per module of cli/."""

from __future__ import annotations

import typer

import talk  # noqa: F401  (sets HF_HUB_OFFLINE before anything hub-aware loads)
from talk.cli.audio_features import audio_features
from talk.cli.cache_latents import cache_latents
from talk.cli.crop_align import crop_align
from talk.cli.discover import discover
from talk.cli.doctor import doctor
from talk.cli.embed import embed
from talk.cli.evaluate import evaluate
from talk.cli.finetune_disc import finetune_disc
from talk.cli.fit_vae import fit_vae
from talk.cli.preprocess import preprocess
from talk.cli.pretrain_prior import pretrain_prior
from talk.cli.render import render
from talk.cli.sample_data import sample_data
from talk.cli.serve import serve
from talk.cli.train import train
from talk.cli.train_diffusion import train_diffusion
from talk.cli.train_sync import train_sync

app = typer.Typer(
    name="talk",
    help="Audio-driven, emotion-controllable talking-portrait video (DICE-Talk / SVP), end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Audio-driven, emotion-controllable talking-portrait video (DICE-Talk / SVP), end to end."""


app.command("doctor")(doctor)
app.command("sample-data")(sample_data)
app.command("discover")(discover)
app.command("crop-align")(crop_align)
app.command("audio-features")(audio_features)
app.command("fit-vae")(fit_vae)
app.command("cache-latents")(cache_latents)
app.command("preprocess")(preprocess)
app.command("pretrain-prior")(pretrain_prior)
app.command("train-diffusion")(train_diffusion)
app.command("finetune-disc")(finetune_disc)
app.command("train-sync")(train_sync)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("render")(render)
app.command("embed")(embed)
app.command("serve")(serve)


def main() -> None:
    from talk.core.fs import on_sigterm_exit

    on_sigterm_exit()  # SIGTERM removes the temporaries of the outputs being written, as SIGINT does
    app()


if __name__ == "__main__":
    main()

"""Architecture config of the image autoencoder (``model.vae`` in params.yaml; torch-free).

talk/core/params.py imports this module on every `talk` command, so it must not import torch. The
factory, losses and metrics live in models/vae.py, which re-exports ``VaeConfig``.
"""

from __future__ import annotations

import dataclasses

from talk.models.errors import ConfigError

OWN = "own"  # VaeConfig.source: the small autoencoder trained by `talk fit-vae`


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """Which KL autoencoder maps crops to latents (LDM §3) and, for ``own``, its architecture.

    ``source: own`` trains a small ``diffusers.AutoencoderKL`` on the training crops (the CPU
    profile); a path names a local diffusers AutoencoderKL folder (e.g. Stable Diffusion's VAE, as
    DICE-Talk §3.1 / SVP §3 use), whose own config then replaces the fields below. With n widths
    the latent of an S px crop is (latent_channels, S / 2^(n-1), S / 2^(n-1)).
    """

    source: str = OWN  # "own" (trained by fit_vae) or a local diffusers AutoencoderKL folder (full profile: SD's VAE)
    block_out_channels: tuple[int, ...] = dataclasses.field(default=(16, 32, 64, 64), metadata={"range": (1, None)})  # own: widths per level, full resolution first; downsampling 2^(levels-1)
    layers_per_block: int = dataclasses.field(default=1, metadata={"range": (1, None)})  # own: resnets per encoder level (the decoder has one more)
    latent_channels: int = dataclasses.field(default=4, metadata={"range": (1, None)})  # own: C, channels of the latent
    norm_num_groups: int = dataclasses.field(default=8, metadata={"range": (1, None)})  # own: GroupNorm groups; divides every width
    mid_attention: bool = False  # own: self-attention in the bottleneck (slow on CPU at 32x32, little gain here)

    @property
    def is_own(self) -> bool:
        return self.source == OWN

    def downsampling(self) -> int:
        """Image side / latent side of the ``own`` architecture."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:

        if not self.source:
            raise ConfigError("model.vae.source: give 'own' or a local diffusers AutoencoderKL folder")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"model.vae.norm_num_groups={self.norm_num_groups} does not divide the widths {bad} "
                f"of model.vae.block_out_channels"
            )

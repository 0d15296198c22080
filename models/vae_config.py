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

    ``source: own`` trains a small autoencoder on the training crops (the CPU profile), of
    ``kind`` ``patch`` (models/patch_vae.py: block-PCA linear path + residual nets; latent
    (latent_channels, S / patch_size, S / patch_size)) or ``kl`` (a diffusers AutoencoderKL with
    n widths; latent (latent_channels, S / 2^(n-1), S / 2^(n-1))). A path names a local diffusers
    AutoencoderKL folder (e.g. Stable Diffusion's VAE, as DICE-Talk §3.1 / SVP §3 use), whose own
    config then replaces the fields below.
    """

    source: str = OWN  # "own" (trained by fit_vae) or a local diffusers AutoencoderKL folder (full profile: SD's VAE)
    kind: str = "kl"  # own: patch (block-PCA autoencoder, models/patch_vae.py) | kl (diffusers AutoencoderKL)
    patch_size: int = dataclasses.field(default=8, metadata={"range": (1, None)})  # own patch: image px per latent px
    width: int = dataclasses.field(default=128, metadata={"range": (1, None)})  # own patch: channels of the residual nets at latent resolution
    encoder_blocks: int = dataclasses.field(default=1, metadata={"range": (0, None)})  # own patch: residual blocks of the encoder
    decoder_blocks: int = dataclasses.field(default=2, metadata={"range": (0, None)})  # own patch: residual blocks of the decoder
    refine_width: int = dataclasses.field(default=32, metadata={"range": (1, None)})  # own patch: channels of the full-resolution refinement
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
        return self.patch_size if self.kind == "patch" else 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:

        if not self.source:
            raise ConfigError("model.vae.source: give 'own' or a local diffusers AutoencoderKL folder")
        if self.kind not in ("patch", "kl"):
            raise ConfigError(f"model.vae.kind: {self.kind!r} is not one of patch, kl")
        widths = (self.width,) if self.kind == "patch" else self.block_out_channels
        bad = [c for c in widths if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"model.vae.norm_num_groups={self.norm_num_groups} does not divide the widths {bad} "
                f"of model.vae.{'width' if self.kind == 'patch' else 'block_out_channels'}"
            )

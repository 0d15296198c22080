"""Stage ``fit_vae``: the image autoencoder whose latent space the diffusion model works in (LDM §3).

``model.vae.source: own`` trains a small ``diffusers.AutoencoderKL`` on patches of the training
crops (``paths.crops``) with the shared training loop; a local diffusers folder (the full
profile: SD's ``vae/``) is loaded, never trained (DICE-Talk §3.1, SVP §3). Either way the stage
measures the latent scaling factor and the val reconstruction PSNR / SSIM (talk/training/vae.py).

Output ``paths.vae``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (a diffusers
folder whatever the source; ``load_vae``), ``metrics.json``, ``loss.tsv`` (training curve),
``params.yaml`` and ``checkpoints/`` (kept between runs: re-running resumes). The VAE identity
(hash of config + weights) keys the latent cache.
"""

from __future__ import annotations

from typing import Any

from talk.artifacts.vae import vae_identity, vae_source_dir
from talk.core.runtime import console
from talk.training.vae import FitVaeConfig, run_stage, summary

SECTIONS = ("base", "paths", "model", "fit_vae")  # every section read


class Config(FitVaeConfig):
    """The ``fit_vae`` section (talk/training/vae.py ``FitVaeConfig``)."""

    def pretrained(self, params) -> list:
        """For `talk doctor`: the pretrained VAE folder, when ``model.vae.source`` names one."""
        from talk.core import weights

        src = params.model.vae.source
        if params.model.vae.is_own:
            return []
        return [weights.check("image VAE (diffusers AutoencoderKL)", src, True, lambda: vae_source_dir(src))]


def run(params) -> dict[str, Any]:
    """Train (own) or load (pretrained) the VAE, measure scaling factor and val PSNR / SSIM, save."""
    cfg: Config = params.fit_vae
    result = run_stage(params, cfg, lambda tmp: params.write_resolved(tmp / "params.yaml", SECTIONS))
    identity = vae_identity(params.paths.vae)
    console.print(summary(result, params.paths.vae, identity, params.model.image_size))
    return {**result["metrics"], "identity": identity}

"""Data contracts and caches between stages: the crop manifest, clip sets, latent windows, the LMDB latent cache."""

"""Training: the one loop (trainer: Accelerate, EMA, resumable checkpoints, early stopping) and what
each training stage gives it — a loss and its data: vae (fit_vae), prior (pretrain_prior),
diffusion (train_diffusion), discriminator (finetune_disc)."""

"""Speech features: Whisper checkpoints (converted offline) and the 50 Hz encoder states."""

"""Video and audio files (PyAV) and faces in them: detection, tracking, alignment, crops."""

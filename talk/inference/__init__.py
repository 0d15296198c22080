"""Inference: the TalkPipeline (portrait + speech + emotion -> video) and reference-clip embedding."""

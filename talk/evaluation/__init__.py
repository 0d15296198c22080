"""Evaluation: metrics, emotion judges and the HTML report."""

"""The pipeline's DVC stages: one module per stage, each a typed Config and a thin run(params)."""

"""nn.Modules, losses and samplers of the talk model family (no file I/O, no argument parsing)."""

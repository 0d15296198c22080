"""What every part of talk shares: user errors, atomic writes, params parsing, runtime, weight lookup."""

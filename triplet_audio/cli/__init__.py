"""Stage 8: command-line flags and the binaries' entry points (the only code that reads flags)."""

"""bench: a harness comparing prompt-time and train-time distillation on equal terms."""

__version__ = "0.1.0"

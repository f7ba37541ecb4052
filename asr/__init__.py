"""Semi-supervised CTC speech recognition with an EMA teacher that scales with the GPU count."""

__version__ = "0.1.0"

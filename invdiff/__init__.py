"""invdiff: scientific inverse problems with score-based diffusion priors."""

__version__ = "0.1.0"

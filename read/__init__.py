"""READ: reasoning segmentation with Similarity-as-Points prompts on LLaVA + SAM."""

__version__ = "0.1.0"

"""Compression chains per task (``compression.pipeline.CHAINS``); the noise chain lives in ``compression.pipeline``."""

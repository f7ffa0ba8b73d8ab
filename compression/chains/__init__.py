"""Compression chains per task (registered in ``compression.tasks``); the noise chain lives in ``compression.pipeline``."""

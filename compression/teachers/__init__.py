"""Teacher networks (PyTorch) and their fine-tuning."""

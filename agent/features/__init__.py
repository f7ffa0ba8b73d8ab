"""Signal front-ends shared by training, evaluation and the device (numpy/scipy only)."""

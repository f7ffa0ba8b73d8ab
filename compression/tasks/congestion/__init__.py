"""Congestion forecasting from loop detectors (a speed CSV shaped like los_speed.csv); persistence and
the historical average are scored beside the model."""

from compression.tasks import CompressionTask, register

register(CompressionTask(
    "congestion",
    recipe="compression.tasks.congestion.recipe:CongestionRecipe",
    chain="compression.tasks.congestion.chain:run_congestion",
    evaluate="compression.tasks.congestion.evaluate:evaluate_congestion",
    data_root="compression.tasks.congestion.traffic:find_speed_file",
))

"""Congestion forecasting from loop detectors (a speed CSV shaped like los_speed.csv); persistence and
the historical average are scored beside the model."""

from . import CompressionTask, register

register(CompressionTask(
    "congestion",
    recipe="compression.chains.congestion_recipe:CongestionRecipe",
    chain="compression.chains.congestion:run_congestion",
    evaluate="compression.chains.congestion_eval:evaluate_congestion",
    data_root="compression.datasets.traffic:find_speed_file",
))

"""Vehicle classification from camera crops: image front-end, ResNet teacher, small CNN student."""

from . import CompressionTask, register

register(CompressionTask(
    "vehicles",
    recipe="compression.chains.vehicles_recipe:VehiclesRecipe",
    chain="compression.chains.vehicles:run_vehicles",
    evaluate="compression.evaluate:evaluate_vehicles",
    data_root="compression.datasets.vehicles:find_root",
    checkpoint="compression.teachers.vehicles:load_checkpoint",
))

"""Vehicle classification from camera crops: image front-end, ResNet teacher, small CNN student."""

from compression.tasks import CompressionTask, register

register(CompressionTask(
    "vehicles",
    recipe="compression.tasks.vehicles.recipe:VehiclesRecipe",
    chain="compression.tasks.vehicles.chain:run_vehicles",
    evaluate="compression.tasks.vehicles.evaluate:evaluate_vehicles",
    data_root="compression.tasks.vehicles.dataset:find_root",
    checkpoint="compression.tasks.vehicles.teacher:load_checkpoint",
))

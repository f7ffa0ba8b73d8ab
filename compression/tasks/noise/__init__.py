"""Urban noise classification (UrbanSound8K): log-mel front-end, CNN student distilled from MN04."""

from . import CompressionTask, register

register(CompressionTask(
    "noise",
    recipe="compression.recipe:CompressionRecipe",
    chain="compression.pipeline:run_noise",
    evaluate="compression.evaluate:evaluate_noise",
    data_root="compression.datasets.urbansound:find_root",
    checkpoint="compression.teachers.noise:load_checkpoint",
    checkpoint_folds="compression.teachers.noise:training_folds",
))

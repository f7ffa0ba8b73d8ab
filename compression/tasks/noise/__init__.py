"""Urban noise classification (UrbanSound8K): log-mel front-end, CNN student distilled from MN04."""

from compression.tasks import CompressionTask, register

register(CompressionTask(
    "noise",
    recipe="compression.tasks.noise.recipe:CompressionRecipe",
    chain="compression.tasks.noise.chain:run_noise",
    evaluate="compression.tasks.noise.evaluate:evaluate_noise",
    data_root="compression.tasks.noise.urbansound:find_root",
    checkpoint="compression.tasks.noise.teacher:load_checkpoint",
    checkpoint_folds="compression.tasks.noise.teacher:training_folds",
    teacher_train="compression.tasks.noise.teacher:train_summary",
))

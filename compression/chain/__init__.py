"""The shared tail of every compression chain, written once.

A task's chain (``compression/tasks/<task>/chain.py``) trains what differs (teacher, student,
distillation, pruning) and hands the FP32 model to ``tail.finish``, which runs the same steps
for every task: INT8 per target (``targets``), the choice per target, the TensorRT engine, the
gate, then the report and the manifest (``artefacts``). Each stage is one record in ``stages``;
``lineage`` writes a record beside a stage's output and reuses the output when the record matches.
"""

"""Evaluation: a contrastive scorer trained apart from the GAN (never a training loss) and the metrics it gives.

`scorer`: the image and text encoders; `scorer_training`: their training
(`python -m t2i_core.evaluation.scorer_training`).
`metrics`: R-precision, alignment, FD, diversity (pure functions on features); `report`: the evaluation of a model
(`evaluate`, rows generated / real / retrieval / random) that `python -m t2i_core eval` prints (t2i_core.cli.evaluate).
"""

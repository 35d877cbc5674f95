"""Evaluation: a contrastive scorer trained apart from the GAN (never a training loss) and the metrics it gives.

`scorer`: the image and text encoders and their training (`python -m t2i_core.evaluation.scorer`).
`metrics`: R-precision, FD, diversity, copying, compositional prompts, and `python -m t2i_core eval`.
"""

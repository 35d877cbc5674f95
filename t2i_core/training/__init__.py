"""Training and fine-tuning, one routine: `train(TrainConfig(...))` (also `python -m t2i_core train`)."""

"""The networks and their files: `Generator`, `Discriminator`, the layers they share, and model-folder I/O.

Imports nothing from training, evaluation or the command line.
"""

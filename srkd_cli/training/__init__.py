"""Training and distillation: data, losses, recipes and the loop. `train(TrainConfig)` runs a job."""

from .trainer import RunResult, TrainConfig, TrainingDiverged, train

__all__ = ["RunResult", "TrainConfig", "TrainingDiverged", "train"]

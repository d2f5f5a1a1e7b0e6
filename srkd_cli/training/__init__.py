"""Training and distillation: data, losses, recipes and the loop. `train(TrainConfig)` runs a job."""

from .trainer import ARCH_DEFAULTS, RunResult, TrainConfig, TrainingDiverged, train

__all__ = ["ARCH_DEFAULTS", "RunResult", "TrainConfig", "TrainingDiverged", "train"]

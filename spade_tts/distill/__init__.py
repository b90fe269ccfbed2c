"""Multi-level distillation of a pruned student from its full teacher (SPADE's second half).

``matching`` says which teacher layer each student layer imitates, ``losses`` what is
compared, ``hooks`` how it is recorded, ``data`` which token sequences are used and in what
order, and ``trainer`` runs it on Hugging Face Accelerate (one CPU, or ``accelerate launch``).
"""
from spade_tts.distill.losses import DistillLoss, LossWeights, kd_loss
from spade_tts.distill.matching import dynamic_matching, layer_matching, static_matching
from spade_tts.distill.trainer import DistillConfig, distill

__all__ = ["DistillConfig", "DistillLoss", "LossWeights", "distill", "dynamic_matching", "kd_loss",
           "layer_matching", "static_matching"]

"""Layer removal: skip layers as a view (for scoring), prune them for good (for a smaller checkpoint)."""
from spade_tts.pruning.layers import (
                                      decoder_layers,
                                      find_decoder,
                                      model_fingerprint,
                                      prune_layers,
                                      residual_stream,
                                      skip_layers,
)
from spade_tts.pruning.prune import PruneConfig, choose_kept_layers, n_keep_from, prune_checkpoint

__all__ = ["decoder_layers", "find_decoder", "model_fingerprint", "prune_layers", "residual_stream", "skip_layers",
           "PruneConfig", "choose_kept_layers", "n_keep_from", "prune_checkpoint"]

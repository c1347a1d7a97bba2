"""CAV-MAE and Social-MAE models, their registry and checkpoint handling."""

from socialfeat.models.avmae import Encoding
from socialfeat.models.cav_mae import CAVMAE, CAVMAEFT
from socialfeat.models.checkpoint import (
                                          CheckpointError,
                                          ModelInfo,
                                          create_model,
                                          read_checkpoint,
                                          save_checkpoint,
                                          strip_prefix,
)
from socialfeat.models.hub import WeightsUnavailableError, cache_dir, fetch, is_cached
from socialfeat.models.loading import load_model
from socialfeat.models.registry import (
                                          PretrainedCfg,
                                          UnknownModelError,
                                          get_arch_config,
                                          get_pretrained_cfg,
                                          list_architectures,
                                          list_pretrained,
                                          register_pretrained,
)
from socialfeat.models.social_mae import SocialMAE, SocialMAEFT

__all__ = ["CAVMAE", "CAVMAEFT", "SocialMAE", "SocialMAEFT", "Encoding", "ModelInfo", "CheckpointError",
           "create_model", "load_model", "read_checkpoint", "save_checkpoint", "strip_prefix",
           "PretrainedCfg", "UnknownModelError", "get_arch_config", "get_pretrained_cfg", "list_architectures",
           "list_pretrained", "register_pretrained", "WeightsUnavailableError", "cache_dir", "fetch", "is_cached"]

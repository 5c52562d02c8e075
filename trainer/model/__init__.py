"""Transformers with full activation access (`call_with_all_aux`) and cache interventions."""

from ._aux import Cache as Cache
from ._aux import ModuleWithAux as ModuleWithAux
from ._aux import layer_cache as layer_cache
from ._aux import make_cache_assign as make_cache_assign
from ._aux import sub_cache as sub_cache
from ._config import ModelConfig as ModelConfig
from ._layers import MASKED_SCORE as MASKED_SCORE
from ._layers import MLP as MLP
from ._layers import Attention as Attention
from ._layers import Block as Block
from ._layers import LayerNorm as LayerNorm
from ._layers import rotate_interleaved as rotate_interleaved
from ._params import build_model as build_model
from ._params import leaf_specs as leaf_specs
from ._params import load_named_leaves as load_named_leaves
from ._params import named_leaves as named_leaves
from ._params import params_from_named as params_from_named
from ._transformer import Transformer as Transformer
from ._transformer import interleave_exemplars as interleave_exemplars
from ._transformer import regression_tokens as regression_tokens
from .losses import next_token_correct as next_token_correct
from .losses import next_token_losses as next_token_losses
from .losses import query_correct as query_correct
from .losses import query_loss as query_loss
from .losses import regression_losses as regression_losses
from .losses import regression_predictions as regression_predictions

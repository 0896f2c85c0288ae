"""cyclax: cyclical pruning for JAX as an optax transformation.

Add one line at the end of an optax chain and the weights are exactly sparse
after every step::

  tx = optax.chain(optax.adamw(1e-3), cyclax.cyclical_prune(0.9, num_cycles=3, cycle_steps=1000))
"""

from cyclax._chain import chain as chain
from cyclax._distance import mask_distance as mask_distance
from cyclax._distribution import erk_num_to_prune as erk_num_to_prune
from cyclax._exact import num_to_prune as num_to_prune
from cyclax._export import sparse_size_report as sparse_size_report
from cyclax._export import strip_pruning as strip_pruning
from cyclax._export import to_bcoo as to_bcoo
from cyclax._inspect import find_prune_state as find_prune_state
from cyclax._inspect import get_masks as get_masks
from cyclax._inspect import sparsity_report as sparsity_report
from cyclax._leaves import default_filter as default_filter
from cyclax._metrics import pruning_metrics as pruning_metrics
from cyclax._moments import ResetRegrownMomentsState as ResetRegrownMomentsState
from cyclax._moments import reset_regrown_moments as reset_regrown_moments
from cyclax._packing import PackedMask as PackedMask
from cyclax._packing import pack_mask as pack_mask
from cyclax._packing import unpack_mask as unpack_mask
from cyclax._patterns import nm_mask as nm_mask
from cyclax._pruning import cyclical_prune as cyclical_prune
from cyclax._pruning import magnitude_prune as magnitude_prune
from cyclax._schedules import constant_sparsity_schedule as constant_sparsity_schedule
from cyclax._schedules import cyclical_sparsity_schedule as cyclical_sparsity_schedule
from cyclax._schedules import gradual_sparsity_schedule as gradual_sparsity_schedule
from cyclax._schedules import one_shot_sparsity_schedule as one_shot_sparsity_schedule
from cyclax._schedules import periodic as periodic
from cyclax._shrink import shrink_dense_stack as shrink_dense_stack
from cyclax._state import CyclicalPruneState as CyclicalPruneState
from cyclax._state import MagnitudePruneState as MagnitudePruneState
from cyclax._state import PruningOrderWarning as PruningOrderWarning
from cyclax._state import PruningTransformation as PruningTransformation
from cyclax._state import PruningValueWarning as PruningValueWarning
from cyclax._structured import Block as Block
from cyclax._structured import Channel as Channel

__version__ = "0.2.0"

__all__ = [
  "Block",
  "Channel",
  "CyclicalPruneState",
  "MagnitudePruneState",
  "PackedMask",
  "PruningOrderWarning",
  "PruningTransformation",
  "PruningValueWarning",
  "ResetRegrownMomentsState",
  "chain",
  "constant_sparsity_schedule",
  "cyclical_prune",
  "cyclical_sparsity_schedule",
  "default_filter",
  "erk_num_to_prune",
  "find_prune_state",
  "get_masks",
  "gradual_sparsity_schedule",
  "magnitude_prune",
  "mask_distance",
  "nm_mask",
  "num_to_prune",
  "one_shot_sparsity_schedule",
  "pack_mask",
  "periodic",
  "pruning_metrics",
  "reset_regrown_moments",
  "shrink_dense_stack",
  "sparse_size_report",
  "sparsity_report",
  "strip_pruning",
  "to_bcoo",
  "unpack_mask",
]

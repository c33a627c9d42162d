"""Compare a checkpoint's state dict with a model's before loading it.

Both encoder weights and MIL teacher checkpoints must fit exactly: a partial load would give a silently
half-random model, which is the failure users of CLAM-style scripts meet most often and notice last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def state_dict_problems(
    own: Mapping[str, Any],
    state: Mapping[str, Any],
    ignore: Callable[[str], bool] = lambda key: False,
) -> list[str]:
    """What stops ``state`` from loading into a model whose state dict is ``own`` (empty when it fits).

    ``ignore`` names checkpoint keys of parts a model drops on purpose (a classifier head, say);
    BatchNorm's ``num_batches_tracked`` counters may be absent.
    """
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not ignore(k)]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[0]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    return problems

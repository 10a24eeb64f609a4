"""Sparse networks that run faster on a CPU: pruning, group patterns, kernels, runtime.

- :func:`prune` one-shot magnitude pruning (masks as ``weight_mask`` buffers);
  :func:`cubic_sparsity` the gradual schedule; :mod:`.training` the training hook.
- :func:`compile` the sparse runtime (numba kernels, the ``[sparse]`` extra).
"""

from edgevision.sparse.masks import (
    add_masks_from_state_dict,
    masked_modules,
    strip_masks,
)
from edgevision.sparse.prune import prunable_layers, prune, sparsity_report
from edgevision.sparse.schedule import cubic_sparsity


def compile(model, example=None, **options):  # noqa: A001 - the issue's public name
    """The sparse runtime for ``model`` (see :mod:`edgevision.sparse.runtime`)."""
    from edgevision.sparse.runtime import compile_sparse

    return compile_sparse(model, example, **options)


__all__ = ["prune", "prunable_layers", "sparsity_report", "cubic_sparsity", "masked_modules",
           "strip_masks", "add_masks_from_state_dict", "compile"]

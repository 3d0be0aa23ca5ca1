"""Loading PyTorch state dicts safely, with errors that name the file at fault."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class CheckpointError(ValueError):
    """A weights file is missing, unreadable or does not fit the model."""


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True`` onto the CPU.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.pth``/``.pt`` file holding a mapping of names to tensors.

    Returns
    -------
    dict of str to Tensor

    Raises
    ------
    CheckpointError
        If the file is missing, is not a torch file, or holds something else than
        a flat mapping of tensors.

    Examples
    --------
    >>> import tempfile, torch
    >>> p = tempfile.mktemp(suffix=".pth")
    >>> torch.save({"w": torch.ones(2)}, p)
    >>> load_state_dict_file(p)["w"]
    tensor([1., 1.])
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def load_into(module: M, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> M:
    """``module.load_state_dict(state, strict=True)`` with an error naming ``path``.

    Parameters
    ----------
    module : nn.Module
        The freshly built model.
    state : Mapping of str to Tensor
        Its weights.
    path : str or os.PathLike
        Where ``state`` came from, for the error message.

    Returns
    -------
    nn.Module
        ``module``, switched to eval mode with gradients off.

    Raises
    ------
    CheckpointError
        On missing or unexpected keys, or mismatched shapes.

    Examples
    --------
    >>> from torch import nn
    >>> load_into(nn.Linear(2, 1), nn.Linear(2, 1).state_dict(), "x.pth").training
    False
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        name = type(module).__name__
        raise CheckpointError(f"weights in {path} do not fit {name}: {exc}") from exc
    module.eval()
    module.requires_grad_(False)
    return module

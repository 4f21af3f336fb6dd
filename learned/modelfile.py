"""Model files: weights as a PyTorch ``state_dict`` (tensors only, read back with
``torch.load(..., weights_only=True)``, never a pickle of objects) beside a JSON model card.

The card (format :data:`~modules.extensions.CARD_FORMAT`) says what the model is and how it
was made:

- ``kind``, ``weights`` (the weights file, beside the card) and ``weights_sha256``;
- ``model``: the shape (states and their ``exits``, ``bin_days``, ``max_bins``), the
  ``covariates`` with their public bounds or levels, and the ``features`` they become;
- ``data``: the data set's name, ``fingerprint`` (the key of its privacy ledger), rows
  (events), patients, stays and person-period rows used, origin;
- ``privacy``: ``epsilon``, ``delta``, ``accountant``, every mechanism (noise multiplier,
  sample rate, steps), the clipping norm, what was public and what spent budget;
- ``training``: epochs, batch size, learning rate, seed, device, seconds, whether training
  stopped at the budget;
- ``metrics``: what the training measured (see ``learned.learn``).

>>> import tempfile, torch
>>> from learned.hazard import HazardModel, HazardSpec
>>> model = HazardModel(HazardSpec({"A": ("B",)}, 30.0, 2))
>>> folder = Path(tempfile.mkdtemp())
>>> card = save_model(folder, model, {"model": model_section(model.spec, [])})
>>> sorted(p.name for p in folder.iterdir())
['card.json', 'weights.pt']
>>> sorted(load_weights(folder / "card.json"))
['allowed', 'linear.bias', 'linear.weight']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modules.errors import ModuleError
from modules.extensions import CARD_FORMAT, read_card, sha256_file

__all__ = ["CARD_NAME", "WEIGHTS_NAME", "save_model", "load_weights", "load_model",
           "model_section", "write_json"]

CARD_NAME = "card.json"
WEIGHTS_NAME = "weights.pt"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_section(spec: Any, covariates: Sequence[Any]) -> dict[str, Any]:
    """The card's ``model``: a HazardSpec and the covariates it was built from."""
    return {"exits": {s: list(e) for s, e in spec.exits.items()},
            "bin_days": spec.bin_days, "max_bins": spec.max_bins,
            "covariates": [c.to_dict() for c in covariates], "spec": spec.to_dict()}


def save_model(folder: Path, model: Any, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s state_dict to ``folder/weights.pt`` and the card, completed with
    the format, kind, weights file and its SHA-256, to ``folder/card.json``. Returns the
    card as written."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".weights.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    full = {"format": CARD_FORMAT, "kind": card.get("kind", "hazard"), "weights": WEIGHTS_NAME,
            "weights_sha256": sha256_file(weights),
            **{k: v for k, v in card.items() if k not in ("format", "kind", "weights")}}
    write_json(folder / CARD_NAME, full)
    return full


def _card(card_path: Path) -> dict[str, Any]:
    card, problems = read_card(card_path)
    if card is None:
        raise ModuleError("; ".join(f"{card_path}: {p + ': ' if p else ''}{m}"
                                    for p, m in problems))
    return card


def load_weights(card_path: Path) -> dict[str, np.ndarray]:
    """The weights a card names, as numpy arrays, read with ``weights_only=True`` (only
    tensors and plain containers can be in the file). Raises ModuleError when the file is
    missing, does not match the card's SHA-256, or holds anything but tensors."""
    import pickle

    import torch

    card = _card(card_path)
    path = card_path.parent / card["weights"]
    if not path.is_file():
        raise ModuleError(f"{path}: the weights file named by {card_path} is missing")
    if card.get("weights_sha256") and sha256_file(path) != card["weights_sha256"]:
        raise ModuleError(f"{path} does not match its card {card_path} (SHA-256 differs)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ModuleError(f"{path}: not a state_dict of tensors ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModuleError(f"{path}: not a state_dict of tensors")
    return {k: v.numpy() for k, v in state.items()}


def load_model(card_path: Path) -> tuple[dict[str, Any], Any]:
    """(card, HazardModel) of a hazard model card, for use with torch."""
    import torch

    from learned.hazard import HazardModel, HazardSpec

    card = _card(card_path)
    model = HazardModel(HazardSpec.from_dict(card["model"]["spec"]))
    weights = load_weights(card_path)
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    except RuntimeError as exc:
        raise ModuleError(f"{card_path}: the weights do not fit the card's model ({exc})") \
            from None
    return card, model

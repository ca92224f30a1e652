"""What later stages derive from the ReLU ANN, computed once and kept with it.

Activation statistics (λ's initial value in ``phase1``, the channel-wise start of ``phase2``,
the MaxNorm/RobustNorm/channelnorm thresholds of ``eval``) and the ANN's MACs (eq. 18's
denominator) depend on ``ann.pt`` and a few settings only, so no stage recomputes what an
earlier one measured. The statistics live in ``ann_stats.pt`` beside ``ann.pt``: one entry per
parameter set, each naming the ``ann.pt`` (fingerprint and creation time) and the images
(data config, count, batch size) and percentile it was measured with. An entry that does not
match, or a file that cannot be read, is recomputed and replaced, never trusted. The MACs go
into ``ann.pt``'s own metrics when stage ``ann`` writes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowlat.artifacts import ANN_STATS, atomic_write, fingerprint
from lowlat.convert import activation_stats, fold_bn
from lowlat.simulate import layer_macs
from lowlat.stages.common import Context, calibration_images, log

STATS_FORMAT = 1
Stats = dict[str, dict[str, Any]]


def network_macs(net: nn.Module, sample: torch.Tensor) -> float:
    """MACs per sample of ``net``'s conv/linear layers once BatchNorm is folded: what its SNN
    (any conversion of it; neurons add no MACs) would cost as an ANN, eq. 18's denominator."""
    return sum(layer_macs(fold_bn(net), sample[:1]).values())


def _read_entries(path) -> dict[str, dict]:
    """The entries of ``ann_stats.pt``; none for a missing, torn or foreign file."""
    if not path.is_file():
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        entries = data["entries"] if data.get("format") == STATS_FORMAT else None
        if isinstance(entries, dict) and all(
                isinstance(e, dict) and isinstance(e.get("params"), dict)
                and isinstance(e.get("stats"), dict) for e in entries.values()):
            return entries
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is recomputed
        log.warning("%s cannot be read (%s): the statistics are recomputed", path, e)
        return {}
    log.warning("%s is not a lowlat statistics file: the statistics are recomputed", path)
    return {}


def ann_stats(ctx: Context, ann_art: dict, ann: nn.Module, dm, n: int, percentile: float,
              device: torch.device | str = "cpu") -> Stats:
    """:func:`~lowlat.convert.activation_stats` of the ANN of ``ann_art`` (``ann``, already
    built) on the first ``n`` training images, from ``ann_stats.pt`` when it holds them for
    this very ``ann.pt`` and these settings; else computed (on ``device``) and stored there."""
    path = ctx.run_dir / ANN_STATS
    params = {"ann": ann_art["fingerprint"], "ann_created": ann_art.get("created"),
              "data": ctx.fp("data"), "images": int(n), "batch_size": int(dm.batch_size),
              "percentile": float(percentile)}
    key = fingerprint(params)
    entries = _read_entries(path)
    hit = entries.get(key)
    if hit is not None and hit["params"] == params:
        log.info("ANN statistics (%d images, percentile %g) read from %s", n, percentile, path)
        return hit["stats"]
    xs = [x for x, _ in calibration_images(dm, int(n), dm.batch_size, device)]
    stats = activation_stats(ann, xs, percentile=float(percentile))
    same_ann = {k: e for k, e in entries.items()  # other parameter sets of this ann.pt stay
                if (e["params"].get("ann"), e["params"].get("ann_created"))
                == (params["ann"], params["ann_created"])}
    payload = {"format": STATS_FORMAT, "kind": "ann_stats",
               "entries": {**same_ann, key: {"params": params, "stats": stats}}}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    log.info("ANN statistics (%d images, percentile %g) computed, stored in %s", n, percentile,
             path)
    return stats

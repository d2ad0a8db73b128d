"""The paper's released measurements (Hub dataset ``Aimpoint-Digital/pythia-massive-activations``), read
into the store's own ``stats/`` layout, and the published fits beside ours.

Per model ``pythia_<size>/``: ``stats/exp2_pythia_<size>_step<N>[.ext]``, one file per checkpoint, an
array of shape (sequences, 4, L): axis 1 is [top1, top2, top3, median] of |h| over a sequence's tokens ×
dims, axis 2 the L decoder blocks' outputs (layer 0 is the first block's output; no embedding row).
A file is a Python/JSON literal, numpy's printed form or ``.npy``; whatever its extension says.
``params/layer_fit_params_<series>.json``: the published per-layer fits.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from massive_activations.capture.capture import layer_ratios
from massive_activations.capture.capture_run import RATIOS, STATS
from massive_activations.errors import BadInputError
from massive_activations.fit.emergence import PARAMS, classify, emergence, identification, peak_step
from massive_activations.sources.catalog import architecture_key, pythia_model
from massive_activations.sources.checkpoints import HubSource
from massive_activations.store import Store

log = logging.getLogger(__name__)

REPO = "Aimpoint-Digital/pythia-massive-activations"
REVISION = "c4c539ac4f8c8fc9694603895d00c1f1af940a20"
SIZES = ("14m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
SERIES = ("ratio", "top1", "median")
# The paper's Table 1: mean R² of the ratio per model (arXiv 2508.03616; 0.984 over all 188 layers).
PAPER_TABLE1 = {"pythia-14m": 0.931, "pythia-70m": 0.968, "pythia-160m": 0.983, "pythia-410m": 0.994,
                "pythia-1b": 0.992, "pythia-1.4b": 0.996, "pythia-2.8b": 0.969, "pythia-6.9b": 0.995,
                "pythia-12b": 0.983}
STATS_FILE = re.compile(r"^pythia_(?P<size>[0-9.]+[mb])/stats/exp2_pythia_(?P=size)_step(?P<step>\d+)(\.[A-Za-z]+)?$")
PARAMS_FILE = re.compile(r"^pythia_(?P<size>[0-9.]+[mb])/params/layer_fit_params_(?P<series>\w+)\.json$")
# stats/ columns the released files do not carry: null (not a made-up number) in the imported rows
_UNKNOWN_FLOAT = ("mean_abs", "top1_excl0", "median_excl0")
_UNKNOWN_INT = {"top1_pos": pa.int32(), "top1_dim": pa.int32(), "top1_token": pa.int64(),
                "n_above_abs": pa.int64(), "n_above_rel": pa.int64(), "n_values": pa.int64()}


def model_name(size: str) -> str:
    """The store's model name of a released folder's size (``1.4b`` → ``pythia-1.4b``)."""
    if size not in SIZES:
        raise BadInputError(f"unknown Pythia size {size!r} in the released dataset; known: {', '.join(SIZES)}")
    return f"pythia-{size}"


@dataclass(frozen=True)
class ReleasedFiles:
    """What a listing of the dataset holds, per model: step → stats file, series → published fits."""

    stats: dict[str, dict[int, str]]
    params: dict[str, dict[str, str]]


def discover(paths: Iterable[str], models: Iterable[str] | None = None) -> ReleasedFiles:
    """The stats and published-fit files of each model (``pythia-<size>``), from a repository listing."""
    wanted = set(models) if models is not None else None
    stats: dict[str, dict[int, str]] = {}
    params: dict[str, dict[str, str]] = {}
    for path in paths:
        if (m := STATS_FILE.match(path)) and m.group("size") in SIZES:
            name = model_name(m.group("size"))
            if wanted is None or name in wanted:
                stats.setdefault(name, {})[int(m.group("step"))] = path
        elif (m := PARAMS_FILE.match(path)) and m.group("size") in SIZES and m.group("series") in SERIES:
            name = model_name(m.group("size"))
            if wanted is None or name in wanted:
                params.setdefault(name, {})[m.group("series")] = path
    return ReleasedFiles(stats, params)


class BadFileError(ValueError):
    """A released file that cannot be imported; the message says why."""


_NUMBER_GAP = re.compile(r"(?<=[0-9.\]])\s+(?=[-+0-9.\[])")


def parse_stats(data: bytes) -> np.ndarray:
    """The array a stats file holds, whichever of the three forms it is in (float64)."""
    if data[:6] == b"\x93NUMPY":
        try:
            return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=float)
        except (ValueError, OSError) as err:
            raise BadFileError(f"not a readable .npy array ({err})") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadFileError("neither .npy nor text") from None
    if "..." in text:
        raise BadFileError("numpy's summarised print ('...'): the values it elides are lost")
    if "," not in text:  # numpy's printed form: numbers and rows separated by white space only
        text = _NUMBER_GAP.sub(",", text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise BadFileError("not a Python/JSON literal, numpy's printed form or .npy") from None
    try:
        return np.asarray(value, dtype=float)
    except (ValueError, TypeError):
        raise BadFileError("a ragged list: rows of different lengths") from None


def check_stats(values: np.ndarray, n_layers: int | None) -> str:
    """Why an array cannot be a checkpoint's stats ("" when it can): shape (n ≥ 1, 4, L) with L the model's
    layer count, finite values with top1 ≥ top2 ≥ top3 ≥ median ≥ 0."""
    if values.ndim != 3 or values.shape[0] < 1 or values.shape[1] != 4:
        return f"shape {values.shape}, not (sequences ≥ 1, 4, layers)"
    if n_layers is not None and values.shape[2] != n_layers:
        return f"{values.shape[2]} layers where the model has {n_layers}"
    if not np.isfinite(values).all():
        return "values that are not finite"
    top1, top2, top3, median = (values[:, i, :] for i in range(4))
    if not ((top1 >= top2) & (top2 >= top3) & (top3 >= median) & (median >= 0)).all():
        return "values out of order: top1 ≥ top2 ≥ top3 ≥ median ≥ 0 does not hold"
    return ""


def stats_table(values: np.ndarray) -> pa.Table:
    """A checkpoint's array as a ``stats/`` partition: one row per (layer, sequence), sequences as the
    file's rows; what the file does not carry is null."""
    n_seq, _, n_layers = values.shape
    layer = np.repeat(np.arange(n_layers), n_seq)
    seq = np.tile(np.arange(n_seq), n_layers)
    pick = lambda i: values[:, i, :].T.reshape(-1)  # noqa: E731 - (layer, seq) order
    columns: dict[str, pa.Array] = {"layer": pa.array(layer, pa.int32()), "seq": pa.array(seq, pa.int32()),
                                    "top1": pa.array(pick(0)), "top2": pa.array(pick(1)), "top3": pa.array(pick(2))}
    columns |= {name: pa.nulls(layer.size, kind) for name, kind in _UNKNOWN_INT.items() if name.startswith("top1_")}
    columns["median"] = pa.array(pick(3))
    columns |= {name: pa.nulls(layer.size, pa.float64()) for name in _UNKNOWN_FLOAT}
    columns |= {name: pa.nulls(layer.size, kind) for name, kind in _UNKNOWN_INT.items()
                if not name.startswith("top1_")}
    return pa.table(columns)


def published_fits(data: bytes, model: str, series: str) -> list[dict[str, Any]]:
    """The published per-layer fits of one series: parameters, their standard errors (from pcov), R², AIC."""
    try:
        layers = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadFileError(f"not JSON ({err})") from None
    if not isinstance(layers, list):
        raise BadFileError("not a per-layer list")
    rows = []
    for layer, entry in enumerate(layers):
        try:
            original = entry["original"]
            names, popt = original["param_names"], [float(v) for v in original["popt"]]
            pcov = np.asarray(original.get("pcov") or np.full((5, 5), np.nan), dtype=float)
            residuals = original.get("residuals") or []
        except (KeyError, TypeError, ValueError) as err:
            raise BadFileError(f"layer {layer}: no readable 'original' fit ({err!r})") from None
        if len(names) != 5 or len(popt) != 5:
            raise BadFileError(f"layer {layer}: {len(popt)} parameters, not the five A, λ, γ, t0, K")
        se = np.sqrt(np.clip(np.diag(pcov), 0, None)) if pcov.shape == (5, 5) else np.full(5, np.nan)
        rows.append({"model": model, "series": series, "layer": layer,
                     **dict(zip(PARAMS, popt, strict=True)), **{f"se_{p}": float(s) for p, s in zip(PARAMS, se,
                                                                                                     strict=True)},
                     "r2": float(original.get("r2", np.nan)), "aic": float(original.get("aic", np.nan)),
                     "n_points": len(residuals)})
    return rows


def compare(ours: list[dict[str, Any]], published: list[dict[str, Any]],
            data: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Per (model, series, layer) with both fits: R² ours vs published (as published, and the published
    curve's R² on the imported data), parameters where both are identified, and each fit's class.

    ``data``: the imported (steps, values) per (model, series, layer), what both curves are judged on."""
    theirs = {(r["model"], r["series"], r["layer"]): r for r in published}
    rows = []
    for mine in ours:
        key = (mine["model"], mine["series"], mine["layer"])
        if key not in theirs or key not in data:
            continue
        pub, (steps, values) = theirs[key], data[key]
        params = tuple(pub[p] for p in PARAMS)
        with np.errstate(all="ignore"):
            curve = emergence(steps, *params)
            ss_tot = float(np.sum((values - values.mean()) ** 2))
            r2_on_data = 1 - float(np.sum((values - curve) ** 2)) / ss_tot if ss_tot > 0 else np.nan
        t_stat = peak_step(pub["lam"], pub["gamma"], pub["t0"]) if pub["gamma"] > 0 else np.nan
        reasons = identification(params, {p: pub[f"se_{p}"] for p in PARAMS}, float(np.ptp(values)),
                                 float(steps.max()))
        their_identified = not reasons and all(np.isfinite(pub[f"se_{p}"]) for p in PARAMS)
        row = {"model": key[0], "series": key[1], "layer": key[2], "r2_ours": mine["r2"],
               "r2_published": pub["r2"], "r2_published_on_data": r2_on_data,
               "class_ours": mine["peak_class"], "class_published": classify(pub["A"], pub["lam"], t_stat, steps),
               "identified_ours": bool(mine["identified"]), "identified_published": their_identified,
               "identification_published": "; ".join(reasons)}
        both = row["identified_ours"] and their_identified
        for p in PARAMS:
            row[f"{p}_ours"], row[f"{p}_published"] = (mine[p], pub[p]) if both else (np.nan, np.nan)
        rows.append(row)
    return rows


CODE_MODULES = ("massive_activations.sources.released", "massive_activations.capture.capture")
RELEASED_FITS, COMPARISON = "released_fits", "released/comparison"


def import_model(store: Store, source: HubSource, repo: str, revision: str, model: str,
                 files: dict[int, str], force: bool = False) -> dict[str, Any]:
    """One model's stats files into ``stats/`` and ``ratios/``, one partition per step, each recording the
    repository, commit, file and its sha256. A bad file is skipped with its reason (nothing stored for
    its step is touched); a step already imported from the same bytes is skipped (``force``: anyway)."""
    parsed: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    bad: list[dict[str, str]] = []
    for step, path in sorted(files.items()):
        local, commit = source.dataset_file(repo, revision, path)
        data = local.read_bytes()
        origin = {"repo": repo, "revision": revision, "commit": commit, "path": path,
                  "sha256": hashlib.sha256(data).hexdigest()}
        try:
            parsed[step] = (parse_stats(data), origin)
        except BadFileError as err:
            bad.append({"path": path, "reason": str(err)})
    shapes = [v.shape[2] for v, _ in parsed.values() if v.ndim == 3 and v.shape[1] == 4]
    n_layers = max(set(shapes), key=shapes.count) if shapes else None  # what most of the model's files hold
    imported, skipped = [], []
    for step, (values, origin) in parsed.items():
        if reason := check_stats(values, n_layers):
            bad.append({"path": origin["path"], "reason": reason})
            continue
        inputs = {"model": model, "step": step, "source": origin}
        part = {"model": model, "step": step}
        if not force and store.current(STATS, part, inputs, CODE_MODULES):
            skipped.append(step)
            continue
        stats = stats_table(values)
        store.write_partition(RATIOS, part, layer_ratios(stats), inputs=inputs, code_modules=CODE_MODULES,
                              overwrite=True)
        store.write_partition(STATS, part, stats, inputs=inputs, code_modules=CODE_MODULES, overwrite=True)
        imported.append(step)
    if (imported or skipped) and not store.exists(architecture_key(model)):
        store.write_json(architecture_key(model), pythia_model(model).as_dict())
    for item in bad:
        log.warning("%s: skipped %s: %s", model, item["path"], item["reason"])
    return {"model": model, "imported": imported, "skipped": skipped, "bad": sorted(bad, key=lambda b: b["path"]),
            "n_layers": n_layers}


def import_published(store: Store, source: HubSource, repo: str, revision: str, model: str,
                     files: dict[str, str]) -> dict[str, Any]:
    """A model's published fits into ``released_fits/`` (one partition per model); a bad file is reported."""
    rows, bad, origins = [], [], []
    for series, path in sorted(files.items()):
        local, commit = source.dataset_file(repo, revision, path)
        data = local.read_bytes()
        try:
            rows += published_fits(data, model, series)
        except BadFileError as err:
            bad.append({"path": path, "reason": str(err)})
            continue
        origins.append({"repo": repo, "revision": revision, "commit": commit, "path": path,
                        "sha256": hashlib.sha256(data).hexdigest()})
    if rows:
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "model"} for r in rows])
        store.write_partition(RELEASED_FITS, {"model": model}, table, inputs={"model": model, "sources": origins},
                              code_modules=CODE_MODULES, overwrite=True)
    return {"model": model, "series": sorted({r["series"] for r in rows}), "bad": bad}

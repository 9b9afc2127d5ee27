"""``simulate``: a noisy copy of a dataset's labels with known truth, for measuring audits.

Noise types (``T[i, j] = P(noisy = j | true = i)``, rate ``r``, ``C`` classes):

* ``uniform``: ``T = (1 − r) I + (r / C) 11ᵀ``; a label is redrawn from all classes, the true
  one included (MLC's Uniform), so the realised flip rate is ``r (C − 1) / C``.
* ``flip-random``: ``T = (1 − r) I + r / (C − 1) (11ᵀ − I)``; to any *other* class (MLC's
  Flip-Random, MLNT's symmetric noise).
* ``flip-to-one``: each class flips with probability r to one fixed other class, chosen at
  random per class with the seed (MLC's Flip-To-One).
* ``pair``: flip-to-one with class i going to class i+1 (mod C).
* ``asymmetric``: a user map (``cat:dog,truck:automobile``); mapped classes flip with
  probability r to their target, others never (MLNT's CIFAR-10 setting).
* ``instance``: feature-dependent. A softmax regression on downsampled pixels is fitted to the
  clean labels; the ``r·n`` samples with the lowest margin between their true class and the
  best other class are flipped to that class (the most ambiguous samples go to their most
  similar class, as in the MSLG paper).
* ``human``: confusions of a CNN, as annotators confuse hard images. ``small_cnn`` is trained
  with cross-entropy on the clean labels of one half and predicts the other (and the other
  way round: two trainings of 8 epochs at 32 pixels), so every image gets an out-of-sample
  class distribution ``p``. ``r·n`` samples are drawn without replacement with probability
  proportional to ``1 − p(true)`` (ambiguous images are likely, clear ones rare, as in
  crowd-sourced labels), and each takes a class drawn from ``p`` without the true class (the
  classes this image is confused with).
* ``neighbor``: ``r·n`` random samples take the label of a random one of their 10 nearest
  neighbours (FAISS, downsampled pixels) whose label differs; a sample with no such
  neighbour keeps its label.

Trusted samples (``trusted_per_class`` per class, drawn first) are never made noisy. The
realised rate and transition matrix are returned and written beside the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from labelclean.data.dataset import InputTable, label_text, load_input
from labelclean.data.images import decode_images
from labelclean.errors import ConfigError, DataError
from labelclean.io import write_json, write_table
from labelclean.knn import FaissKnn
from labelclean.run.writer import rewrite_paths
from labelclean.scoring import transition_from_labels

NOISE_TYPES = ("uniform", "flip-random", "flip-to-one", "pair", "asymmetric", "instance", "human",
               "neighbor")
#: Noise types that look at the images.
IMAGE_NOISE = ("instance", "human", "neighbor")
#: ``human`` noise: epochs and image side of its two cross-fitted trainings.
HUMAN_EPOCHS, HUMAN_IMAGE_SIZE = 8, 32


def parse_map(text: str, classes: list[str]) -> dict[int, int]:
    """``"cat:dog,truck:automobile"`` -> class index map, with one-line errors."""
    out: dict[int, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if ":" not in pair:
            raise ConfigError(f"--map: expected SOURCE:TARGET pairs, found {pair!r}")
        a, b = (s.strip() for s in pair.split(":", 1))
        for name in (a, b):
            if name not in classes:
                raise ConfigError(f"--map: {name!r} is not a class; classes: {', '.join(classes)}")
        if a == b:
            raise ConfigError(f"--map: {a!r} maps to itself")
        out[classes.index(a)] = classes.index(b)
    if not out:
        raise ConfigError("--map: expected at least one SOURCE:TARGET pair for asymmetric noise")
    return out


def transition_for(kind: str, rate: float, c: int, rng: np.random.Generator,
                   mapping: dict[int, int] | None = None) -> np.ndarray:
    """The documented matrix of a class-conditional noise type (rows: true class)."""
    eye = np.eye(c)
    if kind == "uniform":
        return (1 - rate) * eye + rate / c
    if kind == "flip-random":
        return (1 - rate) * eye + rate / (c - 1) * (1 - eye)
    if kind in ("flip-to-one", "pair", "asymmetric"):
        if kind == "pair":
            mapping = {i: (i + 1) % c for i in range(c)}
        elif kind == "flip-to-one":
            mapping = {i: int((i + rng.integers(1, c)) % c) for i in range(c)}
        assert mapping is not None
        t = eye.copy()
        for i, j in mapping.items():
            t[i, i] = 1 - rate
            t[i, j] = rate
        return t
    raise ValueError(f"{kind} noise has no class-level matrix")


@dataclass
class Simulation:
    noisy: np.ndarray  # (N,) class index after noise
    true: np.ndarray
    trusted: np.ndarray  # (N,) bool
    matrix: np.ndarray | None  # documented matrix, class-conditional types only
    realised: np.ndarray  # realised transition (rows true)
    trusted_sample: bool = False  # trusted rows are a random sample, noisy like the rest

    @property
    def in_manifest(self) -> np.ndarray:
        """Rows of the noisy manifest: all of them when the trusted rows are a sample."""
        return np.ones(len(self.true), dtype=bool) if self.trusted_sample else ~self.trusted

    @property
    def realised_rate(self) -> float:
        free = self.in_manifest
        return float((self.noisy[free] != self.true[free]).mean()) if free.any() else 0.0


def _pixel_features(paths: list[str], size: int = 12) -> np.ndarray:
    pixels, failures, _ = decode_images(paths, size)
    if failures:
        i, reason = next(iter(failures.items()))
        raise DataError(f"{paths[i]}: {reason} (simulate needs every image readable)")
    x = pixels.float().div(255).flatten(1)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
    return x.numpy()


def _softmax_regression(x: np.ndarray, y: np.ndarray, c: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = torch.nn.Linear(x.shape[1], c)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt) + 1e-3 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return model(xt).softmax(1).numpy()


def human_flips(probs: np.ndarray, true: np.ndarray, free: np.ndarray, count: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``human`` noise's draw: ``count`` rows of ``free`` with probability proportional to
    ``1 − probs[i, true_i]`` (without replacement), each to a class drawn from ``probs[i]``
    without the true class. Returns the rows and their new labels."""
    c = probs.shape[1]
    weight = np.clip(1.0 - probs[free, true[free]], 1e-6, None)
    keys = np.log(weight) + rng.gumbel(size=len(free))  # Gumbel top-k: a weighted draw
    chosen = free[np.argsort(-keys, kind="stable")[:count]]
    target = np.empty(len(chosen), dtype=true.dtype)
    for k, i in enumerate(chosen):
        off = np.clip(probs[i].astype(np.float64), 1e-12, None)
        off[true[i]] = 0.0
        target[k] = rng.choice(c, p=off / off.sum())
    return chosen, target


def _confusions(paths: list[str], true: np.ndarray, c: int, seed: int) -> np.ndarray:
    """Out-of-sample class probabilities ``(N, C)`` from two cross-fitted ``small_cnn`` runs."""
    import tempfile

    from labelclean.config import RunConfig
    from labelclean.methods.ce import CrossEntropy
    from labelclean.progress import Reporter
    from labelclean.train import train

    pixels, failures, _ = decode_images(paths, HUMAN_IMAGE_SIZE)
    if failures:
        i, reason = next(iter(failures.items()))
        raise DataError(f"{paths[i]}: {reason} (simulate needs every image readable)")
    n = len(true)
    half = np.random.default_rng(seed).permutation(n) % 2
    probs = np.full((n, c), 1.0 / c)
    y = torch.from_numpy(true.astype(np.int64))
    with tempfile.TemporaryDirectory() as tmp:
        for part in (0, 1):
            fit, held = np.flatnonzero(half != part), np.flatnonzero(half == part)
            if not len(fit) or not len(held):
                continue
            config = RunConfig(dataset=".", method="ce", epochs=HUMAN_EPOCHS, image_size=HUMAN_IMAGE_SIZE,
                               batch_size=int(min(128, max(8, len(fit) // 8))), seed=seed + part,
                               augment="crop")
            rows = torch.from_numpy(fit)
            result = train(config, pixels[rows], y[rows], torch.zeros(len(fit), dtype=torch.bool),
                           [str(i) for i in fit], c, CrossEntropy(), Path(tmp), Reporter())
            probs[held] = _predict(result.model, pixels[torch.from_numpy(held)], pixels[rows])
    return probs


def _predict(model: torch.nn.Module, pixels: torch.Tensor, fit_pixels: torch.Tensor) -> np.ndarray:
    from labelclean.train.loop import _normalisation

    mean, std = _normalisation(model, fit_pixels)  # type: ignore[arg-type]
    device = next(model.parameters()).device  # the model trained where --device auto put it
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), 512):
            x = pixels[i:i + 512].float().div(255).sub(mean).div(std).to(device)
            out.append(model(x).softmax(1).double().cpu().numpy())
    return np.concatenate(out)


def simulate_labels(
    true: np.ndarray, c: int, kind: str, rate: float, seed: int, trusted_per_class: int = 0,
    mapping: dict[int, int] | None = None, paths: list[str] | None = None,
    trusted_sample: bool = False,
) -> Simulation:
    """Draw noisy labels for ``true`` (class indices). ``paths`` are needed for instance and
    neighbor noise.

    ``trusted_sample``: the trusted rows are a simple random sample of ``trusted_per_class * c``
    rows that get noise like every other row (what a team verifying a random sample has; the
    audit's exam needs it); otherwise ``trusted_per_class`` clean rows per class, never noisy.
    """
    if kind not in NOISE_TYPES:
        raise ConfigError(f"--noise: expected one of {', '.join(NOISE_TYPES)}, found {kind!r}")
    if not 0 <= rate <= 1:
        raise ConfigError(f"--rate: expected a value in [0, 1], found {rate}")
    rng = np.random.default_rng(seed)
    n = len(true)
    trusted = np.zeros(n, dtype=bool)
    if trusted_sample:
        trusted[rng.choice(n, min(n, trusted_per_class * c), replace=False)] = True
    else:
        for k in range(c):
            members = np.flatnonzero(true == k)
            take = min(trusted_per_class, len(members))
            trusted[rng.choice(members, take, replace=False)] = True
    free = np.flatnonzero(~trusted) if not trusted_sample else np.arange(n)
    noisy = true.copy()
    matrix = None
    if kind == "human":
        if paths is None:
            raise ValueError(f"{kind} noise needs image paths")
        probs = _confusions(paths, true, c, seed)
        chosen, target = human_flips(probs, true, free, min(round(rate * len(free)), len(free)), rng)
        noisy[chosen] = target
    elif kind in ("instance", "neighbor"):
        if paths is None:
            raise ValueError(f"{kind} noise needs image paths")
        features = _pixel_features(paths)
        count = round(rate * len(free))
        if kind == "instance":
            probs = _softmax_regression(features, true, c, seed)
            other = probs.copy()
            other[np.arange(n), true] = -1
            best_other = other.argmax(1)
            margin = probs[np.arange(n), true] - probs[np.arange(n), best_other]
            chosen = free[np.argsort(margin[free], kind="stable")[:count]]
            noisy[chosen] = best_other[chosen]
        else:
            neighbours = FaissKnn().fit(features).kneighbors(10)
            for i in rng.choice(free, count, replace=False):
                options = [j for j in neighbours[i] if true[j] != true[i]]
                if options:
                    noisy[i] = true[options[rng.integers(len(options))]]
    else:
        if kind == "asymmetric" and not mapping:
            raise ConfigError("--noise asymmetric needs --map SOURCE:TARGET,...")
        matrix = transition_for(kind, rate, c, rng, mapping)
        u = rng.random(len(free))
        cdf = np.cumsum(matrix[true[free]], axis=1)
        noisy[free] = np.minimum((u[:, None] > cdf).sum(1), c - 1)
    rows = ~trusted if not trusted_sample else np.ones(n, dtype=bool)
    realised = transition_from_labels(true[rows], noisy[rows], c)
    return Simulation(noisy, true, trusted, matrix, realised, trusted_sample)


def simulate(
    dataset: Path, out: Path, kind: str, rate: float, seed: int = 0, trusted_per_class: int = 10,
    class_map: str | None = None, path_column: str = "path", label_column: str = "label",
    id_column: str | None = None, trusted_sample: bool = False,
) -> dict[str, Any]:
    """Write ``noisy.{csv,parquet}``, ``truth.csv``, ``trusted.csv`` and ``noise.json`` to ``out``.

    Images are referenced, never copied or changed. The noisy manifest keeps the input's
    columns (a folder becomes a CSV with ``path`` and ``label``) with paths rewritten to
    resolve from ``out``; ids are the input's ids (for a folder: paths relative to it, which
    the noisy manifest carries in an ``id`` column so the audit's ids match ``truth.csv``).
    """
    inp: InputTable = load_input(Path(dataset), path_column, label_column, id_column)
    labels = [label_text(v) for v in inp.frame[inp.label_column]]
    classes = sorted(set(labels), key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    index = {name: i for i, name in enumerate(classes)}
    true = np.array([index[v] for v in labels])
    counts = np.bincount(true, minlength=len(classes))
    if not trusted_sample and trusted_per_class >= counts.min():
        small = classes[int(counts.argmin())]
        raise ConfigError(
            f"--trusted-per-class {trusted_per_class}: class {small!r} has only "
            f"{counts.min()} samples, and every class needs some left for the noisy manifest "
            f"(expected at most {counts.min() - 1})")
    mapping = parse_map(class_map, classes) if kind == "asymmetric" and class_map else None
    paths = [str((inp.base_dir / p).resolve()) if not Path(p).is_absolute() else p
             for p in map(str, inp.frame[inp.path_column])] if kind in IMAGE_NOISE else None
    sim = simulate_labels(true, len(classes), kind, rate, seed, trusted_per_class, mapping, paths,
                          trusted_sample)
    out = Path(out)
    if out.resolve() == inp.base_dir.resolve():
        raise ConfigError(f"--out {out}: choose a folder other than the dataset's own")
    ids = inp.ids()
    frame = inp.frame.copy()
    if inp.kind == "folder":
        frame.insert(0, "id", ids)
    frame[inp.path_column] = rewrite_paths(frame[inp.path_column].astype(object), inp.base_dir, out)
    names = np.array(classes, dtype=object)
    noisy_values = [label_text(v) for v in names[sim.noisy]]
    frame[inp.label_column] = _like(inp.frame[inp.label_column], noisy_values)
    keep = sim.in_manifest
    fmt = "parquet" if inp.kind == "parquet" else "csv"
    write_table(out / f"noisy.{fmt}", frame[keep].reset_index(drop=True))
    trusted = frame[sim.trusted][[c for c in frame.columns if c in ("id", inp.path_column, inp.label_column)]]
    trusted = trusted.assign(**{inp.label_column: _like(inp.frame[inp.label_column], list(names[sim.true[sim.trusted]]))})
    write_table(out / "trusted.csv", trusted.reset_index(drop=True))
    truth = pd.DataFrame({"id": ids, "path": frame[inp.path_column], "label": names[sim.true]})
    write_table(out / "truth.csv", truth[keep].reset_index(drop=True))
    write_table(out / "realised_transition.csv",
                pd.DataFrame(sim.realised, index=pd.Index(classes, name="true\\noisy"), columns=classes).reset_index())
    report = {
        "noise": kind, "rate": rate, "seed": seed, "trusted_per_class": trusted_per_class,
        "trusted_sample": trusted_sample,
        "classes": classes, "samples": int(keep.sum()), "trusted": int(sim.trusted.sum()),
        "flipped": int((sim.noisy[keep] != sim.true[keep]).sum()),
        "realised_rate": round(sim.realised_rate, 6),
        "matrix": None if sim.matrix is None else sim.matrix.round(6).tolist(),
        "realised_matrix": sim.realised.round(6).tolist(),
        "map": class_map, "outputs": [f"noisy.{fmt}", "trusted.csv", "truth.csv",
                                      "realised_transition.csv", "noise.json"],
    }
    write_json(out / "noise.json", report)
    return report


def _like(original: pd.Series, values: list[str]) -> list[Any]:
    """Labels in the input's own type (ints stay ints in Parquet)."""
    if pd.api.types.is_integer_dtype(original.dtype):
        return [int(v) for v in values]
    return values

"""The learned near-duplicate detector of CLIP's appendix C: model, loss, training, calibration.

Model (Radford et al. 2021, appendix C): a ResNet-50 "with the anti-alias improvements (Zhang,
2019)", "weight norm instead of batch norm" and GELU, ending in an L2-normalised embedding.

* Anti-aliasing follows Zhang, "Making Convolutional Networks Shift-Invariant Again" (ICML 2019):
  every stride-2 step becomes a stride-1 op followed by a BlurPool (a fixed binomial low-pass
  filter applied depthwise, then subsampling): the stem's max-pool becomes MaxPool(k=2, s=1) +
  BlurPool, a strided 3x3 conv becomes conv(s=1) + GELU + BlurPool, and a strided 1x1 projection
  shortcut becomes BlurPool + conv 1x1.
* No batch norm at all (so nothing leaks between images of a batch, and an image's embedding does
  not depend on its batch-mates): every conv/linear weight is weight-normalised
  (Salimans & Kingma 2016, ``torch.nn.utils.parametrizations.weight_norm``) and has a bias. Without
  normalisation a deep residual net needs its residual branches to start small, so each block
  multiplies its residual branch by a learnable scalar initialised to 0 ("SkipInit", De & Smith
  2020), so every block starts as the identity.
* Head: global average pooling (``pool_grid`` 1, ResNet's), or average pooling to a
  ``pool_grid`` x ``pool_grid`` grid whose cells are concatenated, then a linear layer and L2
  normalisation. A grid keeps the coarse layout that global pooling throws away; copies keep
  their layout under the edits we target (crops <= 30%, borders, small rotations), and with it a
  small CPU-trained model separates copies from look-alike distractors far better (bench/dedup.py:
  at 300 steps, muAP 0.92 -> 0.98, HSV-jittered copies 0.16 -> 0.81; docs/dedup.md).
* ``arch`` presets: ``resnet50`` (the paper's: bottleneck blocks [3, 4, 6, 3], width 64, 224 px,
  global pooling), ``small`` ([1, 2, 2, 1], width 24, 96 px, 2x2 grid) and ``tiny`` ([1, 1, 1, 1],
  width 16, 64 px, 2x2 grid; trains on a CPU in minutes). ``layers``, ``width``, ``embed_dim``,
  ``image_size`` and ``pool_grid`` override a preset.

Loss: InfoNCE / n-pair (Sohn 2016; Oord et al. 2018) with the paper's fixed temperature 0.07. Row
i of batch A (an image) and row i of batch B (its transformed variant) are the positive pair; all
other rows of the other view are negatives. We use the symmetric form (mean of the A->B and B->A
cross-entropies), as CLIP does for image/text.

Input pipeline (train and inference alike): decode, RGB, squash-resize the whole image to
``image_size`` x ``image_size`` with bilinear filtering (no centre crop, so borders, pads and
stretched copies keep all their content), scale to [-1, 1].

The detector file is one ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``:
``{"format": "wit-dedup-detector", "version": 1, "config": {...}, "model": state_dict,
"threshold": float | None, "calibration": dict | None, "train": {...}, "optimizer": ...}``.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
import time
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.parametrizations import weight_norm

from wit_builder.augment import as_rng, augment, resize, to_rgb
from wit_builder.core import WitError, atomic_open, exists, open_read
from wit_builder.imageshards import ImageSource

FORMAT = "wit-dedup-detector"
VERSION = 1
TEMPERATURE = 0.07  # fixed, CLIP appendix C

ARCHS: dict[str, dict] = {
    "resnet50": {"layers": [3, 4, 6, 3], "width": 64, "image_size": 224},
    "small": {"layers": [1, 2, 2, 1], "width": 24, "image_size": 96, "pool_grid": 2},
    "tiny": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "pool_grid": 2},
}
DEFAULT_LR = {"resnet50": 3e-4, "small": 1e-3, "tiny": 2e-3}


def make_config(arch: str = "resnet50", *, layers: Sequence[int] | None = None, width: int | None = None,
                embed_dim: int = 256, image_size: int | None = None, blur_size: int = 3,
                pool_grid: int | None = None) -> dict:
    """A plain-dict model config (stored in the detector file)."""
    if arch not in ARCHS:
        raise WitError(f"unknown detector arch {arch!r}; choose from {', '.join(ARCHS)}")
    base = ARCHS[arch]
    cfg = {
        "arch": arch,
        "layers": [int(x) for x in (layers if layers is not None else base["layers"])],
        "width": int(width if width is not None else base["width"]),
        "embed_dim": int(embed_dim),
        "image_size": int(image_size if image_size is not None else base["image_size"]),
        "blur_size": int(blur_size),
        "pool_grid": int(pool_grid if pool_grid is not None else base.get("pool_grid", 1)),
    }
    if len(cfg["layers"]) != 4 or min(cfg["layers"]) < 1:
        raise WitError(f"layers must be four positive block counts, got {cfg['layers']}")
    if cfg["width"] < 4 or cfg["embed_dim"] < 2 or cfg["image_size"] < 32 or cfg["pool_grid"] < 1:
        raise WitError("width must be >= 4, embed_dim >= 2, image_size >= 32 and pool_grid >= 1")
    return cfg


# --- model --------------------------------------------------------------------------------------

class BlurPool(nn.Module):
    """Zhang (2019) anti-aliased downsampling: depthwise binomial blur, then stride-2 subsampling."""

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2):
        super().__init__()
        row = np.array([math.comb(filt_size - 1, k) for k in range(filt_size)], dtype=np.float32)
        kernel = torch.from_numpy(np.outer(row, row) / np.outer(row, row).sum())
        self.register_buffer("kernel", kernel[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.stride = stride
        self.channels = channels
        left = (filt_size - 1) // 2
        self.pad = (left, filt_size - 1 - left, left, filt_size - 1 - left)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="reflect")
        return F.conv2d(x, self.kernel, stride=self.stride, groups=self.channels)


def _wn_conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # GELU ~ ReLU gain
    nn.init.zeros_(conv.bias)
    return weight_norm(conv)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, blur_size: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _wn_conv(cin, width, 1)
        self.conv2 = _wn_conv(width, width, 3)
        self.blur = BlurPool(width, blur_size) if stride == 2 else nn.Identity()
        self.conv3 = _wn_conv(width, cout, 1)
        self.gain = nn.Parameter(torch.zeros(()))  # SkipInit: the block starts as the identity
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(BlurPool(cin, blur_size) if stride == 2 else nn.Identity(),
                                          _wn_conv(cin, cout, 1))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = self.blur(F.gelu(self.conv2(y)))
        y = self.conv3(y)
        return F.gelu(self.shortcut(x) + self.gain * y)


class DetectorNet(nn.Module):
    """Anti-aliased, weight-normalised, GELU ResNet (bottleneck blocks) -> L2-normalised embedding."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        w, blur = config["width"], config["blur_size"]
        self.stem = _wn_conv(3, w, 7, stride=2)
        self.stem_pool = nn.Sequential(nn.MaxPool2d(2, stride=1), BlurPool(w, blur))
        blocks: list[nn.Module] = []
        cin = w
        for stage, n in enumerate(config["layers"]):
            width = w * 2 ** stage
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(Bottleneck(cin, width, stride, blur))
                cin = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.grid = int(config.get("pool_grid", 1))
        head = nn.Linear(cin * self.grid ** 2, config["embed_dim"])
        nn.init.zeros_(head.bias)
        self.head = weight_norm(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(F.gelu(self.stem(x)))
        x = self.blocks(x)
        if self.grid == 1:
            x = x.mean(dim=(2, 3))
        else:
            x = F.adaptive_avg_pool2d(x, self.grid).flatten(1)
        return F.normalize(self.head(x), dim=-1)


def build_model(config: dict) -> DetectorNet:
    return DetectorNet(config)


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE / n-pair loss of two batches of L2-normalised embeddings: (a[i], b[i]) are
    positives, every other row of the other view is a negative; fixed temperature."""
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# --- images -> tensors --------------------------------------------------------------------------

def to_array(img: Image.Image, image_size: int) -> np.ndarray:
    """The model's input pipeline, minus normalisation: squash-resize (bilinear) to a square uint8
    HxWx3 array."""
    img = to_rgb(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def to_batch(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --- the detector file --------------------------------------------------------------------------

def save_detector(path: str, state: dict) -> None:
    """Atomically (re)write a detector file."""
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def read_detector(path: str) -> dict:
    """Load and validate a detector file (weights_only); clear WitErrors for every bad case."""
    if not exists(path):
        raise WitError(f"detector file {path!r} does not exist (train one with `wit dedup train`)")
    try:
        with open_read(path) as fh:
            state = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WitError(f"{path!r} is not a readable detector file: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WitError(f"{path!r} is not a wit dedup detector (format {found!r}, expected {FORMAT!r}); "
                       "a CLIP trainer checkpoint cannot be used here")
    if state.get("version") != VERSION:
        raise WitError(f"{path!r} has detector format version {state.get('version')!r}; this wit reads {VERSION}")
    for k in ("config", "model"):
        if k not in state:
            raise WitError(f"detector file {path!r} lacks {k!r}")
    return state


def model_from_state(state: dict, path: str = "detector") -> DetectorNet:
    try:
        model = build_model(state["config"])
    except (KeyError, TypeError) as exc:
        raise WitError(f"{path!r} has a bad model config {state['config']!r}: {exc}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise WitError(f"{path!r}: weights do not match its config {state['config']}: "
                       f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def weights_fingerprint(state: dict) -> str:
    """A hash of config + weights: embeddings cached on disk are reused only for the same detector."""
    h = hashlib.blake2b(digest_size=12)
    h.update(repr(sorted(state["config"].items())).encode())
    for name in sorted(state["model"]):
        h.update(name.encode())
        h.update(state["model"][name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_device(device: str | None = "auto") -> torch.device:
    """"auto" (or None): the first CUDA GPU if torch sees one, else the CPU; otherwise a torch
    device string such as "cpu" or "cuda:1"."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise WitError(f"bad --device {device!r}: {exc}") from None


class Embedder:
    """Batched inference with a loaded detector."""

    def __init__(self, path: str, threads: int | None = None, device: str | None = "auto"):
        self.state = read_detector(path)
        self.path = path
        self.device = resolve_device(device)
        self.model = model_from_state(self.state, path).to(self.device)
        self.config = self.state["config"]
        self.image_size = int(self.config["image_size"])
        self.threshold = self.state.get("threshold")
        self.fingerprint = weights_fingerprint(self.state)
        if threads:
            torch.set_num_threads(int(threads))

    @torch.no_grad()
    def embed_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if not len(arrays):
            return np.zeros((0, self.config["embed_dim"]), np.float32)
        return self.model(to_batch(arrays).to(self.device)).cpu().numpy().astype(np.float32)

    def embed_images(self, images: Iterable[Image.Image], batch_size: int = 64) -> np.ndarray:
        out, buf = [], []
        for img in images:
            buf.append(to_array(img, self.image_size))
            if len(buf) >= batch_size:
                out.append(self.embed_arrays(buf))
                buf = []
        if buf:
            out.append(self.embed_arrays(buf))
        return np.concatenate(out) if out else np.zeros((0, self.config["embed_dim"]), np.float32)


# --- training -----------------------------------------------------------------------------------

def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _training_pair(img: Image.Image, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(original, transformed variant) as model inputs. For speed, an image larger than twice the
    model's input is first shrunk so its longer side is 2 x image_size (random interpolation: one
    more resize augmentation); the model only ever sees image_size pixels anyway."""
    if max(img.size) > 2 * size:
        scale = 2 * size / max(img.size)
        img = resize(img, (max(1, img.size[0] * scale), max(1, img.size[1] * scale)), rng)
    return to_array(img, size), to_array(augment(img, rng), size)


def _load_with_retry(source, i: int, rng: np.random.Generator, min_size: int) -> Image.Image:
    """Image ``i`` of ``source``; an undecodable one (recorded in ``source.bad``) is replaced by a
    random other."""
    img = source.load(i, min_size=min_size)
    tries = 0
    while img is None:
        tries += 1
        if tries > 100 or len(source.bad) >= len(source):
            raise WitError(f"too many undecodable images in the training shards ({len(source.bad)} found)")
        j = int(rng.integers(len(source)))
        if j not in source.bad:
            img = source.load(j, min_size=min_size)
    return img


def _training_batch(source, seed: int, step: int, batch_size: int, size: int) -> tuple[list, list]:
    """The batch of step ``step``: ``batch_size`` distinct images and one augmented copy of each.
    Its randomness comes only from (seed, step), so a resumed or prefetched run draws exactly the
    batches of an uninterrupted one."""
    rng = np.random.default_rng([seed, step])
    originals, variants = [], []
    for i in rng.choice(len(source), size=batch_size, replace=False):
        img = _load_with_retry(source, int(i), rng, 2 * size)
        a, b = _training_pair(img, rng, size)
        originals.append(a)
        variants.append(b)
    return originals, variants


def _prefetch(make, items: Iterable, depth: int = 2):
    """Yield ``make(item)`` for each item, computed up to ``depth`` ahead in a background thread
    (image decoding, PIL resampling and JPEG coding release the GIL, so this overlaps with the
    model's step). An exception of the producer is re-raised in the consumer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, make(item)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put((False, exc))
            return
        q.put((True, done))

    worker = threading.Thread(target=produce, name="dedup-batches", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def train_detector(shards: Sequence[str] | None, out: str, *, steps: int = 1000, batch_size: int = 64,
                   arch: str = "resnet50", lr: float | None = None, image_size: int | None = None,
                   embed_dim: int = 256, width: int | None = None, layers: Sequence[int] | None = None,
                   seed: int = 0, holdout: float = 0.1, checkpoint_every: int = 100,
                   weight_decay: float = 1e-4, restart: bool = False, threads: int | None = None,
                   images: Sequence | None = None, progress: bool = True, log_every: int = 10,
                   device: str | None = "auto", pool_grid: int | None = None) -> dict:
    """Train (or resume training) a detector and write it to ``out``.

    Each step draws ``batch_size`` distinct images uniformly from the shards (leaving out the
    held-out split of :func:`wit_builder.dedup.is_holdout`, used by calibration) and makes one pair
    (image, augment(image)) of each; all randomness of a batch derives from (seed, step). Batches
    are prepared ahead in a background thread. ``out`` is rewritten atomically every
    ``checkpoint_every`` steps and at the end; if ``out`` already holds a detector with the same
    config and fewer steps done, training resumes from it (model, optimiser, step), unless
    ``restart``; the result is the same as an uninterrupted run. ``images`` (a list of PIL images
    or encoded bytes) can replace ``shards`` (tests, benchmark). ``device``: see
    :func:`resolve_device` (the CPU unless torch sees a GPU).
    """
    from tqdm import tqdm


    if threads:
        torch.set_num_threads(int(threads))
    if steps < 1 or batch_size < 2:
        raise WitError("--steps must be >= 1 and --batch-size >= 2 (InfoNCE needs in-batch negatives)")
    config = make_config(arch, layers=layers, width=width, embed_dim=embed_dim, image_size=image_size,
                         pool_grid=pool_grid)
    lr = float(lr if lr is not None else DEFAULT_LR[arch])
    source = ImageSource(shards=shards, images=images, split="train", holdout=holdout)
    if len(source) < batch_size:
        raise WitError(f"only {len(source)} training images (after holding out {holdout:.0%} for "
                       f"calibration); need at least --batch-size={batch_size}")
    torch.manual_seed(seed)
    device = resolve_device(device)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    start, history = 0, []
    if exists(out) and not restart:
        state = read_detector(out)
        train = state.get("train") or {}
        if state["config"] != config:
            raise WitError(f"{out!r} holds a detector with config {state['config']}, not {config}; "
                           "use --restart to overwrite it or another --out")
        for k, mine in (("seed", seed), ("batch_size", batch_size)):
            if k in train and train[k] != mine:
                raise WitError(f"{out!r} was trained with {k.replace('_', '-')} {train[k]}, not {mine}; "
                               "pass the same value to resume, or --restart")
        model.load_state_dict(state["model"])
        start = int(train.get("step", 0))
        history = list(train.get("loss_history", []))
        source.bad.update(int(i) for i in train.get("undecodable", []))
        if state.get("optimizer"):
            opt.load_state_dict(state["optimizer"])
        if start >= steps:
            source.close()
            return {"step": start, "resumed_from": start, "loss_history": history, "images": len(source),
                    "skipped_images": len(source.bad)}
    resumed_from = start
    warmup = max(1, min(200, steps // 20))
    size = config["image_size"]

    def save(step: int) -> None:
        save_detector(out, {
            "format": FORMAT, "version": VERSION, "config": config,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "threshold": None, "calibration": None,
            "train": {"step": step, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                      "holdout": holdout, "weight_decay": weight_decay, "images": len(source),
                      "skipped_images": len(source.bad), "undecodable": sorted(source.bad),
                      "loss_history": history[-1000:], "time": time.time()},
            "optimizer": opt.state_dict(),
        })

    model.train()
    bar = tqdm(total=steps, initial=start, desc="dedup train", unit="step", disable=not progress)
    batches = _prefetch(lambda step: _training_batch(source, seed, step, batch_size, size), range(start, steps))
    ema = None
    try:
        for step, (originals, variants) in zip(range(start, steps), batches):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, lr, warmup)
            loss = info_nce_loss(model(to_batch(originals).to(device)), model(to_batch(variants).to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            history.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{ema:.3f}")
            if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                save(step + 1)
    finally:
        batches.close()
        bar.close()
        source.close()
    save(steps)
    return {"step": steps, "resumed_from": resumed_from, "loss_history": history,
            "images": len(source), "skipped_images": len(source.bad)}


# --- calibration --------------------------------------------------------------------------------

def precision_recall_curve(scores: np.ndarray, labels: np.ndarray, n_positives: int | None = None):
    """Sorted scores (desc), precision and recall after each cut (ties resolved by stable order)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    n_pos = int(y.sum()) if n_positives is None else int(n_positives)
    precision = tp / np.maximum(1, tp + fp)
    recall = tp / max(1, n_pos)
    return s, precision, recall


def threshold_for_precision(scores: np.ndarray, labels: np.ndarray, target: float) -> dict:
    """The lowest similarity threshold whose precision (pairs with score >= threshold) is still >=
    ``target`` — i.e. the highest recall at that precision. The threshold is the midpoint between
    the last accepted and the first rejected score. Cuts inside a run of tied scores are not allowed."""
    s, precision, recall = precision_recall_curve(scores, labels)
    n = len(s)
    if n == 0 or not labels.any():
        raise WitError("calibration needs at least one positive pair")
    valid = np.ones(n, bool)
    valid[:-1] = s[:-1] > s[1:]  # a cut must fall between two different scores
    ok = np.nonzero((precision >= target) & valid)[0]
    if len(ok) == 0:
        raise WitError(f"no similarity threshold reaches precision {target}; best precision "
                       f"{float(precision.max()):.4f}: train the detector longer or lower --target-precision")
    k = int(ok[-1])
    thr = float(s[k]) if k == n - 1 else float(0.5 * (s[k] + s[k + 1]))
    return {"threshold": thr, "precision": float(precision[k]), "recall": float(recall[k]),
            "accepted_pairs": k + 1}


def calibrate_detector(detector: str, shards: Sequence[str] | None = None, *, target_precision: float = 0.99,
                       max_images: int = 1000, use_all: bool = False, seed: int = 0, batch_size: int = 64,
                       images: Sequence | None = None, threads: int | None = None, write: bool = True,
                       progress: bool = True, device: str | None = "auto") -> dict:
    """Pick the duplicate threshold on held-out images and store it in the detector file.

    For each held-out image (at most ``max_images``) one transformed copy is made with the training
    augmentation pipeline (fixed ``seed``). Every (copy, original) similarity is scored: the copy's
    own original is a positive pair, the other originals are negative pairs, except those that are
    duplicates of the copy's original themselves (closer to it than its copy; counted as
    ``ambiguous_pairs``). The threshold is the lowest one with precision >= ``target_precision``
    (see :func:`threshold_for_precision`). The detector file is rewritten atomically with
    ``threshold`` and ``calibration`` set.
    """
    from tqdm import tqdm


    if not 0.0 < target_precision <= 1.0:
        raise WitError("--target-precision must be in (0, 1]")
    emb = Embedder(detector, threads=threads, device=device)
    holdout = float((emb.state.get("train") or {}).get("holdout", 0.1))
    source = ImageSource(shards=shards, images=images, split="all" if use_all else "holdout", holdout=holdout)
    if len(source) < 10:
        raise WitError(f"only {len(source)} calibration images (the held-out {holdout:.0%} split"
                       f"{'' if use_all else '; pass --all-images if these shards were not used for training'}); "
                       "need at least 10")
    rng = as_rng(seed)
    picks = np.sort(rng.choice(len(source), size=min(max_images, len(source)), replace=False))
    size = emb.image_size
    refs, queries, skipped = [], [], 0
    for i in tqdm(picks, desc="dedup calibrate", unit="img", disable=not progress):
        img = source.load(int(i), min_size=2 * size)
        if img is None:
            skipped += 1
            continue
        a, b = _training_pair(img, rng, size)
        refs.append(a)
        queries.append(b)
    r = np.concatenate([emb.embed_arrays(refs[i:i + batch_size]) for i in range(0, len(refs), batch_size)])
    q = np.concatenate([emb.embed_arrays(queries[i:i + batch_size]) for i in range(0, len(queries), batch_size)])
    sims = q @ r.T
    labels = np.eye(len(r), dtype=bool)
    # Images drawn from web shards can hold duplicates among themselves: if original j is at least
    # as close to original i as i's own augmented copy is, (copy i, original j) is no negative (any
    # threshold accepting the positive links i and j anyway). Such pairs are left out and counted.
    ambiguous = ((r @ r.T) >= np.diag(sims)[:, None]) & ~labels
    used = ~ambiguous
    result = threshold_for_precision(sims[used], labels[used], target_precision)
    pos, neg = sims[labels], sims[~labels & used]
    false_pairs = int((neg >= result["threshold"]).sum())
    calibration = {
        "target_precision": target_precision, **result, "images": int(len(r)), "skipped_images": skipped,
        "positive_pairs": int(labels.sum()), "negative_pairs": int(neg.size),
        "ambiguous_pairs": int(ambiguous.sum()), "false_pairs": false_pairs,
        # per-pair false-positive rate: a run over N images expects about fpr * N^2 / 2 false links
        "false_positive_rate": false_pairs / max(1, neg.size),
        "positive_mean": float(pos.mean()), "negative_mean": float(neg.mean()) if neg.size else None,
        "negative_max": float(neg.max()) if neg.size else None, "split": "all" if use_all else "holdout",
        "seed": seed, "time": time.time(),
    }
    if write:
        state = read_detector(detector)
        state["threshold"] = float(result["threshold"])
        state["calibration"] = calibration
        save_detector(detector, state)
    return calibration


def detector_summary(path: str) -> dict:
    state = read_detector(path)
    return {"config": state["config"], "threshold": state.get("threshold"),
            "calibration": state.get("calibration"), "train": {k: v for k, v in (state.get("train") or {}).items()
                                                                  if k != "loss_history"}}


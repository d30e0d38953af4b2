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
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.parametrizations import weight_norm

from wit_builder.augment import to_rgb
from wit_builder.core import WitError, atomic_open, exists, open_read

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


def detector_summary(path: str) -> dict:
    state = read_detector(path)
    return {"config": state["config"], "threshold": state.get("threshold"),
            "calibration": state.get("calibration"), "train": {k: v for k, v in (state.get("train") or {}).items()
                                                                  if k != "loss_history"}}


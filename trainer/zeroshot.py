"""Zero-shot classification with prompt ensembling (CLIP paper, section 3.1.4).

For each class, every template (``"a photo of a {}."``) is filled with the class name, the
texts are encoded, L2-normalised, averaged and re-normalised; the classifier is the matrix of
these class embeddings ``[embed_dim, num_classes]``. Images are classified by the cosine
similarity of their normalised embedding to each column. Classifiers are built once per
(model, classes, templates) and cached in memory, and on disk when a ``cache_path`` is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from wit_builder.core import WitError, atomic_open

__all__ = ["read_lines", "build_classifier", "ZeroShotClassifier", "DEFAULT_TEMPLATES",
           "topk_accuracy", "BUILTIN_LISTS", "load_list", "is_wnid", "read_wnid_map",
           "wnid_class_index"]

DEFAULT_TEMPLATES = ["a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a cropped photo of a {}.",
                     "a close-up photo of a {}.", "a bright photo of a {}.", "itap of a {}."]

_CACHE: dict[tuple, object] = {}

EVAL_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_data")
# Lists shipped with the package (trainer/eval_data/, sources in its README.md): a --classes or
# --templates value equal to one of these names means the shipped file ("./imagenet" for a
# file of that name in the working directory).
BUILTIN_LISTS = {
    "classes": {"imagenet": "imagenet_classes.txt"},       # OpenAI's 1000 ImageNet class names
    "templates": {"imagenet": "imagenet_templates.txt"},   # OpenAI's 80 ImageNet prompts
}
_WNID = re.compile(r"n[0-9]{8}")


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (class names or templates)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise WitError(f"{what} file {path}: {exc.strerror or exc}") from None
    if not lines:
        raise WitError(f"{what} file {path} is empty")
    return lines


def load_list(value: str, what: str) -> list[str]:
    """Lines of a shipped list (``value`` is a name of ``BUILTIN_LISTS[what]``) or of a file."""
    builtin = BUILTIN_LISTS.get(what, {})
    if value in builtin:
        return read_lines(os.path.join(EVAL_DATA_DIR, builtin[value]), f"shipped {what}")
    return read_lines(value, what)


def is_wnid(name: str) -> bool:
    """A WordNet noun id as ImageNet names its class folders (``n01440764``)."""
    return _WNID.fullmatch(name) is not None


def read_wnid_map(path: str) -> list[str]:
    """The wnids of a map file in class order: the first field of each line (so a plain wnid
    list and ImageNet's ``LOC_synset_mapping.txt``, "n01440764 tench, Tinca tinca", both work).
    Line i's wnid is class i of the class-name list."""
    wnids = [line.split()[0] for line in read_lines(path, "wnid map")]
    for i, w in enumerate(wnids):
        if not is_wnid(w):
            raise WitError(f"wnid map {path}: entry {i + 1} is {w!r}, not a wnid like n01440764")
    seen: set[str] = set()
    for w in wnids:
        if w in seen:
            raise WitError(f"wnid map {path}: {w} is listed twice")
        seen.add(w)
    return wnids


def wnid_class_index(root: str, folders: list[str], num_classes: int,
                     wnids: list[str] | None = None) -> dict[str, int]:
    """Class index of each wnid folder of ``root``. With ``wnids`` (a map file's list, one per
    class in class order) a folder's index is its position in the list; without, the folders
    must be all ``num_classes`` classes, and the i-th in sorted order is class i (ImageNet's
    standard order, which OpenAI's class-name list follows)."""
    if wnids is not None:
        if len(wnids) != num_classes:
            raise WitError(f"the wnid map lists {len(wnids)} wnids for {num_classes} class names")
        pos = {w: i for i, w in enumerate(wnids)}
        missing = [f for f in folders if f not in pos]
        if missing:
            raise WitError(f"{root}/{missing[0]}: wnid folder not in the wnid map "
                           f"({len(missing)} such folder(s))")
        return {f: pos[f] for f in folders}
    if len(folders) != num_classes:
        raise WitError(f"{root}: {len(folders)} wnid folders for {num_classes} class names; "
                       "give --wnid-map FILE (the class-order wnid list, e.g. ImageNet's "
                       "LOC_synset_mapping.txt) to map a subset")
    return {f: i for i, f in enumerate(sorted(folders))}


def _fill(template: str, name: str) -> str:
    if "{}" in template:
        return template.replace("{}", name)
    if "{c}" in template:
        return template.replace("{c}", name)
    raise WitError(f"template {template!r} has no '{{}}' placeholder for the class name")


def _model_fingerprint(model) -> str:
    import torch
    h = hashlib.blake2b(digest_size=12)
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            flat = p.detach().reshape(-1)
            if flat.numel():
                h.update(str([flat.numel(), float(flat.float().sum()), float(flat[:16].float().sum())]).encode())
    return h.hexdigest()


def build_classifier(model, tokenizer, classnames: list[str], templates: list[str],
                     device: str = "cpu", batch_size: int = 256, cache_path: str | None = None):
    """``FloatTensor [embed_dim, num_classes]`` of prompt-ensembled class embeddings.

    Cached in memory by (model weights fingerprint, classes, templates); with ``cache_path``
    (a directory) also on disk as ``zeroshot-<hash>.pt``.
    """
    import torch
    import torch.nn.functional as F
    if not classnames or not templates:
        raise WitError("zero-shot needs at least one class name and one template")
    key_src = json.dumps([_model_fingerprint(model), classnames, templates])
    key = hashlib.blake2b(key_src.encode(), digest_size=12).hexdigest()
    if key in _CACHE:
        return _CACHE[key].to(device)
    file = os.path.join(cache_path, f"zeroshot-{key}.pt") if cache_path else None
    if file and os.path.exists(file):
        weights = torch.load(file, map_location="cpu", weights_only=True)
        _CACHE[key] = weights
        return weights.to(device)
    texts = [_fill(t, c) for c in classnames for t in templates]
    embs = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start:start + batch_size]).to(device)
            embs.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    emb = torch.cat(embs).reshape(len(classnames), len(templates), -1)
    weights = F.normalize(F.normalize(emb.mean(dim=1), dim=-1), dim=-1).T.contiguous()
    _CACHE[key] = weights
    if file:
        with atomic_open(file, "wb") as fh:
            torch.save(weights, fh)
    return weights.to(device)


def topk_accuracy(logits, labels, ks=(1, 5)) -> dict[str, float]:
    """Top-k accuracies (k capped at the number of classes) as fractions."""
    out = {}
    n = max(1, labels.numel())
    for k in ks:
        kk = min(k, logits.shape[1])
        top = logits.topk(kk, dim=1).indices
        out[f"top{k}"] = float((top == labels[:, None]).any(dim=1).sum()) / n
    return out


class ZeroShotClassifier:
    """Holds a built classifier; ``logits(image_features)`` and ``evaluate(batches)``."""

    def __init__(self, model, tokenizer, classnames, templates, device="cpu", cache_path=None):
        self.model = model
        self.classnames = list(classnames)
        self.device = device
        self.weights = build_classifier(model, tokenizer, self.classnames, list(templates),
                                        device=device, cache_path=cache_path)

    def logits(self, images):
        import torch
        import torch.nn.functional as F
        with torch.no_grad():
            feats = F.normalize(self.model.encode_image(images.to(self.device)).float(), dim=-1)
        return 100.0 * feats @ self.weights

    def evaluate(self, batches) -> dict:
        """``batches`` yields ``(images, labels)``; returns top-1/top-5 and the count."""
        import torch
        all_logits, all_labels = [], []
        for images, labels in batches:
            all_logits.append(self.logits(images).cpu())
            all_labels.append(torch.as_tensor(labels))
        if not all_logits:
            raise WitError("zero-shot evaluation: no images")
        logits, labels = torch.cat(all_logits), torch.cat(all_labels)
        return {**topk_accuracy(logits, labels), "num_images": int(labels.numel()),
                "num_classes": len(self.classnames)}

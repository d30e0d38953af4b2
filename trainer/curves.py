"""``curves.png``: the training curves of a run, drawn from its ``log.jsonl``."""
from __future__ import annotations

from wit_builder.core import atomic_open

from trainer.checkpoint import read_log

__all__ = ["plot_curves"]


def plot_curves(log_path: str, out_path: str) -> None:
    """``curves.png``: loss, learning rate, logit scale, samples/s and eval metrics vs step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train:
        return
    steps = [r["step"] for r in train]
    panels = [("loss", "loss"), ("lr", "learning rate"), ("logit_scale", "logit scale (exp)"),
              ("samples_per_s", "samples/s")]
    eval_series = _eval_series(evals)
    n = len(panels) + (1 if eval_series else 0)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [r[key] for r in train])
        ax.set_title(title)
        ax.set_xlabel("step")
    if eval_series:
        ax = axes[-1]
        for name, pts in eval_series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_title("evaluation")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(out_path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


def _eval_series(evals: list[dict]) -> dict[str, list]:
    """``{"zeroshot top1": [(step, value), ...], ...}``: the plotted evaluation metrics."""
    eval_series: dict[str, list] = {}
    for r in evals:
        for group in ("zeroshot", "retrieval"):
            for key, value in (r.get(group) or {}).items():
                if key in ("top1", "top5", "image_to_text_R@1", "text_to_image_R@1"):
                    eval_series.setdefault(f"{group} {key}", []).append((r["step"], value))
    return eval_series

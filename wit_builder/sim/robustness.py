"""Effective robustness (CLIP paper, section 3.3 and Fig. 13-14): a model's accuracy on the held-out
set drawn like its training data ("in distribution") against its accuracy on sets drawn another way
("shifted"), for the zero-shot CLIP and for a supervised baseline trained on the same images with
class labels. A model on the diagonal loses nothing under the shift; the gap is in-distribution
minus shifted accuracy.

:func:`robustness_summary` turns per-set top-1 accuracies into ``eval/robustness.json``'s content;
:func:`robustness_section` draws the report's table and figure from it.
"""
from __future__ import annotations

import os

from wit_builder.core import read_json_or_none
from wit_builder.sim.reportdoc import Section, figure_png, pyplot

__all__ = ["robustness_summary", "robustness_section"]


def robustness_summary(models: dict[str, dict[str, float]], in_distribution: str,
                       shifted: list[str], chance: float) -> dict:
    """``models``: ``{model: {set: top1}}``; ``in_distribution``: the set drawn like the training
    data; ``shifted``: the distribution-shifted sets of the same classes. Returns per model the
    in-distribution and per-shifted-set top-1, their mean over the shifted sets and the gap."""
    out = {"in_distribution": in_distribution, "shifted": list(shifted), "chance": chance, "models": {}}
    for name, acc in models.items():
        shifted_acc = {s: acc[s] for s in shifted if s in acc}
        mean = sum(shifted_acc.values()) / len(shifted_acc) if shifted_acc else None
        top_in = acc.get(in_distribution)
        out["models"][name] = {"in_distribution": top_in, "shifted": shifted_acc,
                               "shifted_mean": mean,
                               "gap": None if mean is None or top_in is None else top_in - mean}
    return out


def robustness_section(eval_dir: str) -> Section:
    """The report's section: a table (model, in-distribution, each shifted set, mean, gap) and the
    in-distribution vs shifted scatter with the diagonal of perfect robustness."""
    s = Section("Robustness to distribution shift", "robustness")
    r = read_json_or_none(os.path.join(eval_dir, "robustness.json"))
    if not r or not r.get("models"):
        return s.note("no robustness results (eval/robustness.json is missing)")
    shifted = r["shifted"]
    s.p(f"Top-1 on the in-distribution held-out set (`{r['in_distribution']}`: the web's renderer "
        "and styles) and on sets of the same classes drawn by code the training web never used "
        f"({', '.join(f'`{x}`' for x in shifted)}). CLIP is zero-shot (prompt ensembles, no "
        "labels); the supervised baseline is the same image tower trained with a linear head on "
        "the same shards, its labels read from the captions. The gap is in-distribution minus "
        f"the shifted mean; chance is {100 * r['chance']:.1f}%.")
    rows = []
    for name, m in r["models"].items():
        rows.append([name, _pct(m["in_distribution"]), *[_pct(m["shifted"].get(x)) for x in shifted],
                     _pct(m["shifted_mean"]), _pct(m["gap"])])
    s.table(["model", r["in_distribution"], *shifted, "shifted mean", "gap"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="y = x (no loss under shift)")
    ax.axhline(r["chance"], color="lightgrey", linewidth=1, label="chance")
    markers = {x: m for x, m in zip(shifted, "os^vDP")}
    for (name, m), colour in zip(r["models"].items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        x = m["in_distribution"]
        if x is None:
            continue
        for sname, y in m["shifted"].items():
            ax.scatter([x], [y], color=colour, marker=markers.get(sname, "o"), alpha=0.55, s=30)
        if m["shifted_mean"] is not None:
            ax.scatter([x], [m["shifted_mean"]], color=colour, marker="*", s=160,
                       label=f"{name} (mean of shifted sets)")
    for sname, mk in markers.items():
        ax.scatter([], [], color="black", marker=mk, alpha=0.55, s=30, label=sname)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"top-1, in distribution ({r['in_distribution']})")
    ax.set_ylabel("top-1, shifted sets")
    ax.set_title("Effective robustness")
    ax.legend(fontsize=7, loc="upper left")
    return s.figure("robustness.png", figure_png(fig),
                    "In-distribution vs shifted top-1 (CLIP paper, Fig. 13): the closer to the "
                    "diagonal, the less a model loses under the shift")


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"

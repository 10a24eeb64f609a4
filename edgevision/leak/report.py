"""The leakage report: what the attack recovered, how exactly, and the trace segmented into blocks."""

from __future__ import annotations

from pathlib import Path

_COLORS = {"ds": "#4c72b0", "dsa": "#64b5cd", "ir": "#55a868", "cn": "#c44e52", "attn": "#8172b2",
           "stem": "#937860", "other": "#cccccc"}


def _fmt(v, pct=False):
    if v is None:
        return "—"
    return f"{100 * v:.0f}%" if pct else f"{v:.2f}"


def block_line(b: dict) -> str:
    if b["type"] == "attn":
        return f"{b.get('variant', '')} attention ({b.get('n_ops', '?')} ops)".strip()
    text = f"{b['type']:<3} k{b['k']} s{b['s']}"
    if b["type"] == "ir":
        text += f" e{b['e']:.2f}"
    text += f" c{b['c']}" + (" +SE" if b.get("se") else "") + (" +skip" if b.get("skip") else "")
    text += f" ({b['variant']})" if b.get("variant") else ""
    return text + (f" [{b['act']}]" if b.get("act") else "")


def report_text(name: str, audit: dict) -> str:
    """Plain-text leakage report of one audit (see :func:`edgevision.leak.audit`)."""
    r, s, tr = audit["result"], audit.get("scores") or {}, audit["trace"]
    lines = [f"Leakage audit of {name} — runtime {tr['runtime']}, {tr['size']}px, {tr['n_ops']} ops observed "
             f"({tr['repeats']} profiled runs; the observer sees op/kernel names and durations only)",
             f"recovered: family {r['family']}, stem c{r['stem']['c']}, {len(r['blocks'])} blocks, "
             f"head {r['head']['num_features']} features"]
    truth = s.get("truth") or []
    if s.get("kind") == "cnn":
        from edgevision.leak.score import align

        lines.append(f"block types {_fmt(s['block_type_acc'], True)}, kernel sizes {_fmt(s['kernel_acc'], True)}, "
                     f"strides {_fmt(s['stride_acc'], True)}, expansions {_fmt(s['expansion_acc'], True)} "
                     f"(within 10%), widths off by {_fmt(s['width_rel_err'], True)} on average "
                     f"({s['n_pred']} blocks recovered, {s['n_true']} true)")
        pred = [b for b in r["blocks"] if b["type"] != "attn"]
        lines.append(f"{'#':>3}  {'recovered':<42} true")
        for i, j in align(truth, pred):
            p = block_line(pred[j]) if j is not None else "(missed)"
            t = block_line(dict(truth[i], act=None, skip=False)) if i is not None else "(none)"
            lines.append(f"{(j if j is not None else '-'):>3}  {p:<42} {t}")
    else:
        if s:
            lines.append(f"hybrid: {s['pred_attention_blocks']} attention blocks found "
                         f"({s['true_attention_blocks']} in the model), {s['pred_conv_layers']} conv layers seen "
                         f"({s['true_convs']} Conv2d in the model); found {s['pred_variants']}, "
                         f"true {s['true_blocks_by_kind']}")
        for i, b in enumerate(r["blocks"]):
            lines.append(f"{i:>3}  {block_line(b)}")
    return "\n".join(lines)


def plot_trace(audit: dict, path, title: str = "") -> Path:
    """A PNG of the trace: one bar per op (width = duration), coloured by the block it was put in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgevision.io import save_figure

    ops = audit["trace"]["ops"]
    r = audit["result"]
    owner = ["other"] * len(ops)
    spans = [("stem", r["stem"]["span"])] + [(b["type"], b["span"]) for b in r["blocks"] if "span" in b]
    bounds = []
    for kind, (a, b) in spans:
        for i in range(a, min(b + 1, len(ops))):
            owner[i] = kind
        bounds.append(a)
    fig, ax = plt.subplots(figsize=(14, 3.2))
    t = 0.0
    total = sum(o["us"] for o in ops) or 1.0
    for o, kind in zip(ops, owner):
        ax.barh(0, o["us"] / 1e3, left=t / 1e3, color=_COLORS.get(kind, "#cccccc"), edgecolor="none")
        t += o["us"]
    cum = [0.0]
    for o in ops:
        cum.append(cum[-1] + o["us"])
    for a in bounds:
        ax.axvline(cum[a] / 1e3, color="black", lw=0.4)
    for kind, color in _COLORS.items():
        ax.barh(0, 0, color=color, label=kind)
    ax.set_yticks([])
    ax.set_xlabel(f"time (ms), {len(ops)} ops, {total / 1e3:.1f} ms total; lines = recovered block boundaries")
    ax.set_title(title or "trace segmented into blocks")
    ax.legend(ncol=len(_COLORS), loc="upper center", bbox_to_anchor=(0.5, -0.35), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path

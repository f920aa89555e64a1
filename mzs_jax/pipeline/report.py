"""Experiment report (Markdown + HTML): Table-3-style metrics table, box plots, overlay grid.

Every number is read from a metrics CSV written by `mzs evaluate` (or any CSV given to
`render_table_from_csv`, e.g. the retrieval CSV of `mzs eval-retrieval`); nothing is typed in.
"""

from __future__ import annotations

import csv
import html
import pathlib
from collections.abc import Sequence

import numpy as np

from mzs_jax.pipeline import evaluate
from mzs_jax.pipeline.stats import paired_ttest

# A report is a list of blocks: ("h", level, text) | ("p", text) | ("table", header, rows)
# | ("img", relative_path, alt). Markdown and HTML are both rendered from it.
Block = tuple
METRIC_NAMES = {"iou": "IoU", "dice": "DSC", "auc": "AUC", "nsd": "NSD", "hd95": "HD95"}
# Metrics reported in their own unit (mm with NIfTI spacing, else pixels), never ×100.
DISTANCE_METRICS = ("hd95",)


def metric_scale(metric: str, scale: float) -> float:
    """The table's ×`scale` for ratio metrics; 1 for distances (HD95)."""
    return 1.0 if metric in DISTANCE_METRICS else scale


def nsd_tolerances(rows: list[dict]) -> str:
    """The NSD tolerances recorded in the rows, e.g. "2" or "1, 2" ("n/a" when none)."""
    tols = sorted({float(r["nsd_tol"]) for r in rows if r.get("nsd_tol") not in (None, "")})
    return ", ".join(f"{t:g}" for t in tols if t == t) or "n/a"


def significance_mark(p: float) -> str:
    """`**` p < 0.01, `*` p < 0.05, "" otherwise (or NaN)."""
    if p != p:
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def _pm(mean: float, std: float, scale: float) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def _p(p: float) -> str:
    return "n/a" if p != p else f"{p:.4g}"


def metrics_table(
    rows: list[dict],
    *,
    class_: str = evaluate.CLASS_MEAN,
    reference: str | None = None,
    scale: float = 100.0,
) -> tuple[list[str], list[list[str]], list[list[str]], str]:
    """Table 3: one row per (method, dataset), `mean ± std` per metric, ×`scale` (percent).

    Mean ± std is across seeds when a method has ≥ 2 seeds (the paper), else across cases.
    With `reference`, each metric is marked by a paired t-test against that method on the same
    cases (`*` p<0.05, `**` p<0.01). Returns (header, rows, p-value rows, caption).
    """
    summary = evaluate.summarize(rows)
    by_key = {(s["method"], s["dataset"], s["metric"]): s for s in summary if s["class"] == class_}
    keys = sorted({(m, d) for m, d, _ in by_key}, key=lambda k: (k[1], k[0]))
    header = ["dataset", "method", *[METRIC_NAMES[m] for m in evaluate.METRICS]]
    body, pvals, spreads = [], [], set()
    for method, dataset in keys:
        cells = [dataset, method]
        for metric in evaluate.METRICS:
            s = by_key[(method, dataset, metric)]
            across = "seed" if s["n_seeds"] >= 2 else "case"
            spreads.add(across + "s")
            mean, std = s[f"{across}_mean"], s[f"{across}_std"]
            mark = ""
            if reference and method != reference and (reference, dataset, metric) in by_key:
                t = paired_ttest(rows, method, reference, metric, dataset=dataset, class_=class_)
                mark = significance_mark(t.pvalue)
                pvals.append([dataset, method, reference, metric, str(t.n), _p(t.pvalue)])
            cells.append(_pm(mean, std, metric_scale(metric, scale)) + mark)
        body.append(cells)
    caption = (
        f"Class `{class_}`; values ×{scale:g} except HD95 (mm with NIfTI spacing, else pixels); "
        f"NSD at tolerance {nsd_tolerances(rows)} (same units); mean ± sample std across "
        f"{' / '.join(sorted(spreads)) or 'cases'}; NaN (undefined AUC, metrics not measured) "
        "excluded."
    )
    if reference:
        caption += f" Marks: paired t-test vs `{reference}` (* p<0.05, ** p<0.01)."
    return header, body, pvals, caption


def box_plots(rows: list[dict], out_png: str | pathlib.Path, metric: str = "dice") -> pathlib.Path:
    """One panel per dataset: per-case `metric` per class, one box per (class, method)."""
    plt = pyplot()

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        rs = [r for r in rows if r["dataset"] == d]
        methods = sorted({r["method"] for r in rs})
        classes = sorted({r["class"] for r in rs})
        data, labels, colors = [], [], []
        for c in classes:
            for i, m in enumerate(methods):
                v = np.array([r[metric] for r in rs if r["class"] == c and r["method"] == m])
                data.append(v[~np.isnan(v)])
                labels.append(f"{c}\n{m}")
                colors.append(f"C{i}")
        parts = ax.boxplot(data, patch_artist=True)
        for patch, col in zip(parts["boxes"], colors, strict=True):
            patch.set_facecolor(col)
            patch.set_alpha(0.5)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=30)
        ax.set_title(f"{d}: per-case {metric}")
        ax.set_ylim(-0.02, 1.02)
    return save_figure(fig, out_png)


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png, dpi: int = 100) -> pathlib.Path:
    """Lay out, write (creating the folder) and close `fig`; returns the path."""
    fig.tight_layout()
    out_png = pathlib.Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    pyplot().close(fig)
    return out_png


def _as_image(x) -> np.ndarray:
    if isinstance(x, (str, pathlib.Path)):
        from PIL import Image

        if not pathlib.Path(x).is_file():
            raise FileNotFoundError(f"overlay image not found: {x}")
        return np.asarray(Image.open(x))
    return np.asarray(x)


def overlay_grid(items: Sequence, out_png: str | pathlib.Path) -> pathlib.Path:
    """Grid of qualitative figures, one row per case.

    Each item is a PNG path / array (shown as one panel) or a dict with `image` (H, W[, C]) and
    optional `saliency` (H, W), `box` (x0, y0, x1, y1), `mask` (H, W), `gt` (H, W), `title`:
    panels image | saliency | image + box | image + mask (red) and GT contour (green).
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    if not items:
        raise ValueError("overlay_grid: no items")
    rows = [it if isinstance(it, dict) else {"image": it} for it in items]
    panels = ["image", "saliency", "box", "mask"]
    ncol = max(1 + sum(k in r for k in panels[1:]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.4 * ncol, 2.4 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows, strict=True):
        img = _as_image(r["image"])
        names = ["image", *(k for k in panels[1:] if k in r)]
        for j, ax in enumerate(ax_row):
            ax.axis("off")
            if j >= len(names):
                continue
            if names[j] == "saliency":
                ax.imshow(_as_image(r["saliency"]), cmap="jet")
            else:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            if names[j] == "box":
                x0, y0, x1, y1 = r["box"]
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=2)
                )
            if names[j] == "mask":
                m = _as_image(r["mask"]) > 0
                ax.imshow(np.ma.masked_where(~m, m), cmap="autumn", alpha=0.5)
                if "gt" in r:
                    ax.contour(_as_image(r["gt"]) > 0, levels=[0.5], colors="lime", linewidths=1)
            name = names[j] + (" / GT" if names[j] == "mask" and "gt" in r else "")
            ax.set_title(f"{r.get('title', '')} {name}".strip(), fontsize=8)
    return save_figure(fig, out_png)


def render_table_from_csv(
    csv_path: str | pathlib.Path,
    columns: Sequence[str] | None = None,
    *,
    float_format: str = "{:.4f}",
) -> tuple[list[str], list[list[str]]]:
    """Any CSV (e.g. the retrieval CSV) as a table block: (header, rows); floats formatted."""
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV not found: {csv_path}")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(columns or reader.fieldnames or [])
        missing = set(header) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
        rows = []
        for r in reader:
            cells = []
            for c in header:
                v = r[c]
                try:
                    cells.append(float_format.format(float(v)) if "." in v else v)
                except ValueError:
                    cells.append(v)
            rows.append(cells)
    return header, rows


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(r) + " |" for r in rows]
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px}"
        "img{max-width:100%}</style></head><body>",
    ]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</table>")
        elif b[0] == "img":
            out.append(f"<img src='{e(b[1])}' alt='{e(b[2])}'>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    metrics_csv: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    title: str = "Experiment report",
    reference: str | None = None,
    overlays: Sequence | None = None,
    extra: Sequence[Block] = (),
) -> pathlib.Path:
    """Write `out_dir/report.md`, `report.html` and figures from a per-case metrics CSV.

    `extra` blocks (e.g. `("table", *render_table_from_csv(retrieval_csv))`) are appended.
    Returns the Markdown path.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = evaluate.with_class_mean(evaluate.read_csv(metrics_csv))
    header, body, pvals, caption = metrics_table(rows, reference=reference)
    blocks: list[Block] = [
        ("h", 1, title),
        ("p", f"Source: `{pathlib.Path(metrics_csv).name}` ({len(rows)} rows incl. class means)."),
        ("h", 2, "Segmentation metrics (Table 3 style)"),
        ("table", header, body),
        ("p", caption),
    ]
    if pvals:
        blocks += [
            ("h", 3, "Paired t-tests"),
            ("table", ["dataset", "method", "vs", "metric", "n", "p"], pvals),
        ]
    per_class = [r for r in rows if r["class"] != evaluate.CLASS_MEAN]
    blocks += [("h", 2, "Per class"), per_class_table(per_class)]
    for metric in ("dice", "iou"):
        png = box_plots(per_class, out_dir / f"box_{metric}.png", metric)
        blocks.append(("img", png.name, f"per-class {metric} box plot"))
    if overlays:
        png = overlay_grid(overlays, out_dir / "overlays.png")
        blocks += [("h", 2, "Qualitative results"), ("img", png.name, "overlay grid")]
    blocks += list(extra)
    md = out_dir / "report.md"
    md.write_text(to_markdown(blocks))
    (out_dir / "report.html").write_text(to_html(blocks, title))
    return md


PER_CLASS_HEADER = ["dataset", "method", "class", "metric", "cases", "NaN", "both empty",
                    "mean ± std (cases)"]  # fmt: skip


def per_class_table(per_class: Sequence[dict]) -> Block:
    """One row per (dataset, method, class, metric): case counts and mean ± std over cases."""
    body = [
        [s["dataset"], s["method"], s["class"], s["metric"], str(s["n_cases"]), str(s["n_nan"]),
         str(s["n_both_empty"]),
         _pm(s["case_mean"], s["case_std"], metric_scale(s["metric"], 100))]
        for s in evaluate.summarize(per_class)
    ]  # fmt: skip
    return ("table", PER_CLASS_HEADER, body)

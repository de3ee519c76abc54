"""The audit's reports: audit.json (everything found), audit.md (tables to read or diff) and a
self-contained audit.html (thumbnails of the suspected label errors with given vs suggested label and
score, duplicate and leak pairs side by side, the profile's plots), images embedded as data URIs so
the file can be mailed or opened from anywhere. Written with the standard library and matplotlib
rather than a templating package: one page of fixed structure."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from classifier.audit.duplicates import DuplicatePair
from classifier.evaluation.fonts import use_fonts_for
from classifier.files import write_atomically

AUDIT_JSON, AUDIT_MD, AUDIT_HTML, ISSUES_CSV = "audit.json", "audit.md", "audit.html", "issues.csv"
THUMBNAIL_SIDE = 96
# Rows of each table in audit.md (audit.json and issues.csv hold every finding).
MD_ROWS = 50


@dataclass(frozen=True)
class LabelFinding:
    """A suspected label error: the image, its given and suggested class indices, the ranking score
    (lower is more suspect) and the out-of-sample probabilities of both classes."""

    path: str
    split: str
    given_label: int
    suggested_label: int
    score: float
    p_given: float
    p_suggested: float


@dataclass
class AuditResult:
    class_names: list[str]
    split_sizes: dict[str, int]
    profile: dict[str, Any]
    labels: list[LabelFinding]
    pairs: list[DuplicatePair]
    out_of_sample: dict[str, Any]
    settings: dict[str, Any]
    seconds: dict[str, float]
    from_files: bool = True
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {
            "images": sum(self.split_sizes.values()),
            "label_issues": len(self.labels),
            "duplicates": sum(p.issue == "duplicate" for p in self.pairs),
            "leaks": sum(p.issue == "leak" for p in self.pairs),
        }

    def to_json(self) -> dict[str, Any]:
        names = self.class_names
        return {
            "counts": self.counts,
            "split_sizes": self.split_sizes,
            "out_of_sample": self.out_of_sample,
            "settings": self.settings,
            "seconds": self.seconds,
            "label_issues": [
                {
                    **asdict(f),
                    "given_label": names[f.given_label],
                    "suggested_label": names[f.suggested_label],
                }
                for f in self.labels
            ],
            "pairs": [asdict(p) for p in self.pairs],
            "profile": self.profile,
        }


def write_audit_reports(
    output_dir: Path, result: AuditResult, load: Callable[[str], Image.Image], thumbnails: int
) -> dict[str, float]:
    """audit.json, audit.md and audit.html in `output_dir`; returns the counts (the task's metrics)
    with the out-of-fold top-1."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically((json.dumps(result.to_json(), indent=2) + "\n").encode(), output_dir / AUDIT_JSON)
    write_atomically(audit_markdown(result).encode(), output_dir / AUDIT_MD)
    write_atomically(audit_html(result, load, thumbnails).encode(), output_dir / AUDIT_HTML)
    return {**result.counts, "out_of_fold_top1": float(result.out_of_sample.get("out_of_fold_top1", 0.0))}


# -- audit.md -------------------------------------------------------------------------------------------
def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _summary_rows(result: AuditResult) -> list[tuple[str, Any]]:
    oos = result.out_of_sample
    return [
        ("images", ", ".join(f"{s} {n:,}" for s, n in result.split_sizes.items())),
        ("classes", len(result.class_names)),
        ("suspected label errors", result.counts["label_issues"]),
        ("duplicate pairs (within a split, or val-test)", result.counts["duplicates"]),
        ("leaks (train and val/test)", result.counts["leaks"]),
        ("probabilities", f"{oos['method']} on {oos['features']}, {oos['folds']} folds"),
        ("out-of-fold top-1", f"{oos['out_of_fold_top1']:.4f}"),
        ("seconds", ", ".join(f"{k} {v:g}" for k, v in result.seconds.items())),
    ]


def audit_markdown(result: AuditResult) -> str:
    names = result.class_names
    lines = ["# Data audit", ""]
    lines += _md_table(("", ""), _summary_rows(result))
    lines += ["", f"## Suspected label errors ({len(result.labels)}, most suspect first)", ""]
    lines += _md_table(
        ("path", "split", "given", "suggested", "score", "p(given)", "p(suggested)"),
        [
            (
                f.path,
                f.split,
                names[f.given_label],
                names[f.suggested_label],
                f"{f.score:.4f}",
                f"{f.p_given:.3f}",
                f"{f.p_suggested:.3f}",
            )
            for f in result.labels[:MD_ROWS]
        ],
    )
    lines += ["", f"## Duplicates and leaks ({len(result.pairs)} pairs)", ""]
    lines += _md_table(
        ("issue", "path (listed to drop)", "other_path (kept)", "how", "similarity"),
        [(p.issue, p.path, p.other_path, p.how, f"{p.score:.3f}") for p in result.pairs[:MD_ROWS]],
    )
    lines += ["", "## Profile", ""] + _profile_markdown(result.profile)
    lines += [
        "",
        f"All findings: {ISSUES_CSV} (`python train.py data.exclude={ISSUES_CSV}` drops every listed `path`;"
        f" `data.relabel={ISSUES_CSV}` applies the suggested labels to train) and {AUDIT_JSON}.",
        "",
    ]
    return "\n".join(lines)


def _profile_markdown(profile: dict[str, Any]) -> list[str]:
    splits = profile["splits"]
    rows = []
    for name, s in splits.items():
        ratio = s["imbalance_ratio"]
        rows.append(
            (
                name,
                s["images"],
                s["readable"],
                "—" if ratio is None else f"{ratio:.2f}",
                f"{s['width']['min']}-{s['width']['max']}",
                f"{s['height']['min']}-{s['height']['max']}",
                ", ".join(f"{m} {n}" for m, n in s["modes"].items()),
                ", ".join(f"{f} {n}" for f, n in s["flags"].items() if n) or "—",
            )
        )
    lines = _md_table(("split", "images", "readable", "imbalance", "width", "height", "modes", "flags"), rows)
    lines += ["", "Images per class:", ""]
    lines += _md_table(
        ("class", *splits), [(c, *(splits[s]["per_class"][c] for s in splits)) for c in profile["classes"]]
    )
    for key, what in (
        ("broken", "Broken files"),
        ("tiny", "Tiny images"),
        ("extreme", "Extreme aspect ratios"),
    ):
        found = profile[key]
        lines += ["", f"{what}: {len(found)}"]
        lines += [
            f"- {item['split']}: {item['path']}" + (f" ({item['reason']})" if "reason" in item else "")
            for item in found[:MD_ROWS]
        ]
    return lines


# -- audit.html -----------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:220px;font-size:13px}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
.pair{display:flex;gap:6px} .path{color:#666;word-break:break-all;font-size:11px}
.given{color:#b00} .suggested{color:#070} .plots img{max-width:100%}
"""
# Counts the images the browser decoded, so a headless browser's DOM dump shows they render.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.naturalWidth > 0; }).length;
  document.body.dataset.images = imgs.length;
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(load: Callable[[str], Image.Image], path: str) -> str:
    """The image at `path` as a PNG data URI at most THUMBNAIL_SIDE on a side; '' when unreadable."""
    try:
        img = load(path).convert("RGB")
    except Exception:
        return ""
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def _img(uri: str, alt: str) -> str:
    if not uri:
        return f'<div class="path">(unreadable: {html.escape(alt)})</div>'
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _bar_plot(title: str, groups: dict[str, dict[str, int]], horizontal: bool = False) -> str:
    """A grouped bar chart (one bar colour per split) as a PNG data URI."""
    categories = list(next(iter(groups.values())))
    fig = Figure(figsize=(8, max(3.0, 0.25 * len(categories)) if horizontal else 3.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for number, (split, counts) in enumerate(groups.items()):
        positions = [i + number * width for i in range(len(categories))]
        values = [counts[c] for c in categories]
        (ax.barh if horizontal else ax.bar)(positions, values, width, label=split)
    ticks = [i + width * (len(groups) - 1) / 2 for i in range(len(categories))]
    if horizontal:
        ax.set_yticks(ticks, categories)
        ax.invert_yaxis()
    else:
        ax.set_xticks(ticks, categories, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return _data_uri(buffer.getvalue())


def audit_html(result: AuditResult, load: Callable[[str], Image.Image], thumbnails: int) -> str:
    names = result.class_names
    use_fonts_for(names)
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Data audit</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Data audit</h1><table>",
        *(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in _summary_rows(result)),
        "</table>",
        f"<h2 id='labels'>Suspected label errors ({len(result.labels)})</h2>",
        f"<p>The {min(thumbnails, len(result.labels))} most suspect, lowest score first"
        f" ({esc(result.settings['rank_by'])}); every one is in {ISSUES_CSV}.</p><div class='grid'>",
    ]
    for f in result.labels[:thumbnails]:
        parts.append(
            "<div class='card label-issue'>"
            + _img(thumbnail(load, f.path), f.path)
            + f"<div>given <b class='given'>{esc(names[f.given_label])}</b> ({f.p_given:.2f})</div>"
            + f"<div>suggested <b class='suggested'>{esc(names[f.suggested_label])}</b>"
            + f" ({f.p_suggested:.2f})</div>"
            + f"<div>score {f.score:.3f} · {esc(f.split)}</div><div class='path'>{esc(f.path)}</div></div>"
        )
    parts += [
        "</div>",
        f"<h2 id='pairs'>Duplicates and leaks ({len(result.pairs)} pairs)</h2>",
        "<p>Left: the copy listed to drop (<code>path</code>); right: the copy kept (<code>other_path</code>,"
        " the val/test copy of a leak).</p><div class='grid'>",
    ]
    for p in result.pairs[:thumbnails]:
        parts.append(
            f"<div class='card pair-card {esc(p.issue)}'>"
            + f"<div><b>{esc(p.issue)}</b> · {esc(p.how)} · {p.score:.3f}</div>"
            + "<div class='pair'>"
            + _img(thumbnail(load, p.path), p.path)
            + _img(thumbnail(load, p.other_path), p.other_path)
            + f"</div><div class='path'>{esc(p.path)}<br>{esc(p.other_path)}</div></div>"
        )
    parts += ["</div>", "<h2 id='profile'>Profile</h2><div class='plots'>"]
    splits = result.profile["splits"]
    parts.append(
        _img(
            _bar_plot("images per class", {s: v["per_class"] for s, v in splits.items()}, horizontal=True),
            "images per class",
        )
    )
    parts.append(
        _img(
            _bar_plot("shorter side (px)", {s: v["shorter_side_buckets"] for s, v in splits.items()}),
            "shorter side",
        )
    )
    parts.append(
        _img(
            _bar_plot("aspect ratio (width / height)", {s: v["aspect_buckets"] for s, v in splits.items()}),
            "aspect ratio",
        )
    )
    parts.append("</div>")
    parts += [
        "<div class='profile-md'><pre>",
        esc("\n".join(_profile_markdown(result.profile))),
        "</pre></div>",
    ]
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)

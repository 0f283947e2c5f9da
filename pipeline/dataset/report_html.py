"""The markup of ``report.html``: one self-contained page, readable with or without JavaScript.

Every string that came from a user or a provider goes through :func:`_esc` (``html.escape`` with
``quote=True``), and the page's Content-Security-Policy only runs the one inline script whose
hash it names, so even a missed escape could not run injected code. Markup is kept terse on
purpose: a 5,000-job page stays under 2 MB.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipeline.jobs import State
from pipeline.settings import redact

if TYPE_CHECKING:
    from pipeline.dataset.report_data import ReportJob, ReportTotals, Thumbs

PROMPT_SHOWN = 200
"""Longer prompts are cut on the page (the full text is in metadata.jsonl)."""

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5rem 3rem;color:#222;background:#f6f6f4}
h1{font-size:1.4rem;margin:1rem 0 .5rem}
.tot{display:flex;flex-wrap:wrap;gap:.5rem;margin:0;padding:0}
.tot div{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4rem .8rem}
.tot dt{font-size:.75rem;color:#666}.tot dd{margin:0;font-size:1.2rem;font-weight:600}
.shared{color:#444;margin:.6rem 0}
#bar{margin:.8rem 0;display:flex;gap:1rem;align-items:center}
[hidden]{display:none!important}
#cards>article{background:#fff;border:1px solid #ddd;border-left:6px solid #999;
border-radius:6px;margin:.6rem 0;padding:.5rem .8rem}
#cards>[data-state=done]{border-left-color:#2a8a3e}
#cards>[data-state=failed]{border-left-color:#c62828}
#cards>[data-state=needs_attention]{border-left-color:#e0a000}
h2{font-size:1rem;margin:0 0 .3rem;word-break:break-all}
h2 b{font-size:.75rem;font-weight:600;text-transform:uppercase;margin-left:.5rem;color:#555}
.t{display:flex;gap:6px;flex-wrap:wrap;align-items:flex-start}
.t img{height:160px;max-width:100%;object-fit:contain;background:#eee}
.t i{display:inline-flex;align-items:center;justify-content:center;width:90px;height:160px;
background:#e4e4e4;color:#777;font-size:.8rem;text-align:center}
article p{margin:.3rem 0;word-break:break-word}
code{font-size:.85em}
.err{background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;border-radius:4px;
padding:.3rem .5rem;white-space:pre-wrap}
"""

# The controls are hidden in the markup and shown by the script, so a page read without
# JavaScript shows every card in manifest order and no control that would do nothing.
_JS = """
(function(){
var c=document.getElementById('cards'),f=document.getElementById('f'),
o=document.getElementById('o'),n=document.getElementById('n'),
all=Array.prototype.slice.call(c.children);
function id(e){return e.firstChild.firstChild.nodeValue;}
function show(){var v=f.value,k=0;all.forEach(function(e){
var h=v!==''&&e.getAttribute('data-state')!==v;e.hidden=h;if(!h)k++;});
n.textContent=k+' of '+all.length+' shown';}
function order(){var l=all.slice(),v=o.value;
if(v!=='m'){l.sort(function(a,b){return id(a).localeCompare(id(b),undefined,
{numeric:true});});if(v==='d')l.reverse();}
var d=document.createDocumentFragment();l.forEach(function(e){d.appendChild(e);});
c.appendChild(d);}
f.addEventListener('change',show);o.addEventListener('change',order);
document.getElementById('bar').hidden=false;show();
})();
"""


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
    f"style-src {_sha256_source(_CSS)}; script-src {_sha256_source(_JS)}; "
    "base-uri 'none'; form-action 'none'"
)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, output_dir: Path) -> str:
    """A relative, percent-encoded link from the page to ``target`` (absolute if impossible)."""
    try:
        rel = Path(os.path.relpath(Path(target).absolute(), Path(output_dir).absolute()))
    except ValueError:  # another drive on Windows: no relative path exists
        return _esc(Path(target).absolute().as_uri())
    return _esc(quote(rel.as_posix(), safe="/"))


def _seconds(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f} s"


def _clock(value: float | None) -> str:
    if value is None:
        return "—"
    whole = round(value)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _trim_text(trim: Any) -> str:
    if trim is None:
        return "none"
    start = trim.get("start", 0) if isinstance(trim, Mapping) else getattr(trim, "start", 0)
    end = trim.get("end") if isinstance(trim, Mapping) else getattr(trim, "end", None)
    if not start and end is None:
        return "none"
    return f"{start or 0:g}–{'end' if end is None else format(end, 'g')} s"


def _prompt_text(prompt: Any) -> str:
    text = str(prompt or "")
    if not text:
        return "(none)"
    if len(text) > PROMPT_SHOWN:
        return f"{text[:PROMPT_SHOWN]}… (+{len(text) - PROMPT_SHOWN} chars)"
    return text


def _fields(job: ReportJob) -> dict[str, str]:
    """A job's settings as label -> text, in display order (unknown keys last)."""
    s = dict(job.settings)
    out = {"provider": job.provider, "model": job.model}
    if "mode" in s:
        out["mode"] = str(s.pop("mode"))
    if "character_orientation" in s:
        out["orientation"] = str(s.pop("character_orientation"))
    if "keep_original_sound" in s:
        out["sound"] = "kept" if s.pop("keep_original_sound") else "removed"
    requested = s.pop("trim", None)
    applied = job.applied
    if applied is None:  # nothing sent yet: what the manifest asks for
        out["trim"] = _trim_text(requested)
    else:  # what was really cut from the clip that was sent
        out["trim"] = _trim_text(applied.get("trim"))
        scale = applied.get("scale")
        if isinstance(scale, Mapping):
            out["scaled"] = f"{scale.get('width')}x{scale.get('height')}"
        if applied.get("audio") not in (None, "kept"):
            out["audio"] = str(applied["audio"])
    out["prompt"] = _prompt_text(s.pop("prompt", ""))
    out.update((str(k), str(v)) for k, v in s.items())
    return out


def _shared_fields(all_fields: Sequence[dict[str, str]]) -> dict[str, str]:
    """Fields with one value across the whole batch: said once at the top, not 5,000 times."""
    if not all_fields:
        return {}
    first = all_fields[0]
    return {k: v for k, v in first.items() if all(f.get(k) == v for f in all_fields[1:])}


def _field_list(fields: Mapping[str, str]) -> str:
    return " · ".join(f"{_esc(k)} <b>{_esc(v)}</b>" for k, v in fields.items())


def _thumb(path: str | None, alt: str, missing: str) -> str:
    if path is None:
        return f"<i>{missing}</i>"
    return f'<img src="{_esc(quote(path, safe="/"))}" alt="{alt}" loading="lazy">'


def _card(job: ReportJob, fields: Mapping[str, str], thumbs: Thumbs, output_dir: Path) -> str:
    state = str(getattr(job.state, "value", job.state))
    parts = [
        f'<article data-state="{_esc(state)}">',
        f"<h2>{_esc(job.id)}<b>{_esc(state.replace('_', ' '))}</b></h2><div class=t>",
        _thumb(thumbs.image, "image", "no image"),
        _thumb(thumbs.driving, "driving frame", "no clip"),
        _thumb(thumbs.result, "result frames", "no result"),
        f"</div><p>{_esc(job.image)} → {_esc(job.video)}",
    ]
    if fields:
        parts.append(f"<br>{_field_list(fields)}")
    facts = [f"billed {_seconds(job.billed_seconds)}", f"duration {_seconds(job.duration, 2)}"]
    if job.task_id:
        facts.append(f"task <code>{_esc(job.task_id)}</code>")
    if job.output_path is not None:
        facts.append(f'<a href="{_href(job.output_path, output_dir)}">result video</a>')
    parts.append(f"<br>{' · '.join(facts)}</p>")
    if job.error:
        parts.append(f"<p class=err>{_esc(redact(job.error))}</p>")
    elif state in (State.FAILED, State.NEEDS_ATTENTION):
        parts.append("<p class=err>no reason was recorded</p>")
    parts.append("</article>")
    return "".join(parts)


def _totals(t: ReportTotals) -> str:
    cost = "—" if t.estimated_cost is None else f"{t.estimated_cost:,.2f} {t.currency}"
    tiles = [
        ("done", str(t.done)),
        ("failed", str(t.failed)),
        ("needs attention", str(t.needs_attention)),
        ("pending or running", str(t.other)),
        ("seconds billed", _seconds(t.seconds_billed)),
        ("estimated cost", cost),
        ("wall time", _clock(t.wall_time_seconds)),
    ]
    body = "".join(f"<div><dt>{k}</dt><dd>{_esc(v)}</dd></div>" for k, v in tiles)
    return f'<dl class="tot">{body}</dl>'


def _controls(jobs: Sequence[ReportJob]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        state = str(getattr(job.state, "value", job.state))
        counts[state] = counts.get(state, 0) + 1
    known = [s.value for s in State]
    states = [s for s in known if s in counts] + sorted(s for s in counts if s not in known)
    options = "".join(
        f'<option value="{_esc(s)}">{_esc(s.replace("_", " "))} ({counts[s]})</option>'
        for s in states
    )
    return (
        '<div id="bar" hidden><label>state <select id="f">'
        f'<option value="">all ({len(jobs)})</option>{options}</select></label>'
        '<label>order <select id="o"><option value="m">as in the manifest</option>'
        '<option value="a">job id A→Z</option><option value="d">job id Z→A</option>'
        '</select></label><span id="n"></span></div>'
    )


def render(
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    *,
    title: str,
    thumbs: Sequence[Thumbs],
    output_dir: Path,
) -> str:
    """The whole page as one string; ``thumbs[i]`` belongs to ``jobs[i]``."""
    all_fields = [_fields(job) for job in jobs]
    shared = _shared_fields(all_fields)
    cards = "\n".join(
        _card(
            job,
            {k: v for k, v in fields.items() if k not in shared},
            job_thumbs,
            output_dir,
        )
        for job, fields, job_thumbs in zip(jobs, all_fields, thumbs, strict=True)
    )
    shared_line = (
        f'<p class="shared">Every job: {_field_list(shared)}</p>' if shared and len(jobs) else ""
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_esc(title)}</h1>{_totals(totals)}{shared_line}"
        "<p>Each card: reference image, a frame of the driving clip, frames of the result.</p>"
        f'{_controls(jobs)}<main id="cards">\n{cards}\n</main>'
        f"<script>{_JS}</script></body></html>\n"
    )

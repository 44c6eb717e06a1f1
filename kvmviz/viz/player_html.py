"""The HTML player: one self-contained file that steps through a call with no kernel.

All frames are inline SVG (each distinct picture once), the step texts are
the Stepper's, and a few dozen lines of plain JavaScript give the same
transport: buttons, a slider, the arrow keys, Home/End and play. It opens
at the step the Stepper shows. No network, no CDN: the file can be mailed
or attached to a bug report.

>>> import kvmviz
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
>>> page = kvmviz.viz.player(vm); page.startswith("<!DOCTYPE html>") and "step 15 of 15" in page and "http" not in page.split("<script>")[1]
True
"""

import html
import json
import re

_JS = r"""
var F = JSON.parse(document.getElementById('kv-frames').textContent), k = 0, timer = null;
function $(id) { return document.getElementById(id); }
function show(n) {
  k = Math.max(0, Math.min(F.frames.length - 1, n));
  var f = F.frames[k];
  $('kv-pos').textContent = f.position; $('kv-stage').innerHTML = f.stage;
  $('kv-text').innerHTML = f.text; $('kv-gen').innerHTML = f.gen;
  $('kv-figure').innerHTML = F.figures[f.figure]; $('kv-slider').value = k;
  var c = document.querySelector('#kv-timeline .kv-cursor rect');
  if (c) c.setAttribute('x', (F.cursor[0] + F.cursor[1] * (k - 0.5)).toFixed(1));
  $('kv-first').disabled = $('kv-back').disabled = k === 0;
  $('kv-next').disabled = $('kv-last').disabled = k === F.frames.length - 1;
  if (k === F.frames.length - 1) stop();
}
function stop() { if (timer) { clearInterval(timer); timer = null; $('kv-play').textContent = 'play ▶▶'; } }
function play() {
  if (timer) { stop(); return; }
  if (k === F.frames.length - 1) { $('kv-pos').textContent += ' (the call has finished: |◀ to watch again)'; return; }
  $('kv-play').textContent = 'pause ❚❚'; timer = setInterval(function () { show(k + 1); }, 500);
}
$('kv-first').onclick = function () { show(0); };
$('kv-back').onclick = function () { show(k - 1); };
$('kv-next').onclick = function () { show(k + 1); };
$('kv-last').onclick = function () { show(F.frames.length - 1); };
$('kv-play').onclick = play;
$('kv-slider').max = F.frames.length - 1;
$('kv-slider').oninput = function () { show(+this.value); };
document.addEventListener('keydown', function (e) {
  var m = {ArrowRight: 1, ArrowLeft: -1}[e.key];
  if (e.target.tagName === 'INPUT' && e.target.type !== 'range') return;
  if (m) { show(k + m); e.preventDefault(); }
  else if (e.key === 'Home') { show(0); e.preventDefault(); }
  else if (e.key === 'End') { show(F.frames.length - 1); e.preventDefault(); }
  else if (e.key === ' ') { play(); e.preventDefault(); }
});
show(F.start);
"""

_CSS = ("body{font:14px sans-serif;margin:12px;color:#222}#kv-main{display:flex;gap:12px;align-items:flex-start}"
        "#kv-left{width:380px}#kv-right{width:566px}button{font-size:14px;padding:3px 8px;margin:1px}"
        "#kv-text{margin:6px 0}#kv-gen{font-size:13px}")


def page(stepper):
    """The HTML player of ``stepper``'s current call, as one self-contained page (a string)."""
    return _page(stepper)[0]


def iframe(stepper):
    """The player inside an ``<iframe srcdoc>``, to sit in a notebook's exported page (``make html``).

    A page in the page: the player's ids, styles and keys stay its own, so
    several Steppers of one notebook each get a working player. Its height
    fits the tallest picture of the call.

    >>> import kvmviz
    >>> from kvmviz.viz.widgets import Stepper
    >>> st = Stepper(); _ = st.begin(1, 0, 0, 0x1000, 0x10000); frame = iframe(st)
    >>> frame.startswith("<iframe srcdoc=") and "kv-frames" in frame and "&lt;!DOCTYPE html&gt;" in frame
    True
    """
    doc, height = _page(stepper)
    title = html.escape(f"HTML player: {stepper.title()}", quote=True)
    return (f"<iframe srcdoc=\"{html.escape(doc, quote=True)}\" title=\"{title}\" "
            f"style='width:100%;max-width:1000px;height:{height}px;border:1px solid #ccc'></iframe>")


def _page(stepper):
    """(the page, the px height its content needs)."""
    frames = stepper.frames()
    figures, index, rows = [], {}, []
    for f in frames:
        if f["figure"] not in index:
            index[f["figure"]] = len(figures)
            figures.append(f["figure"])
        rows.append({**{key: f[key] for key in ("position", "stage", "text", "gen")}, "figure": index[f["figure"]]})
    timeline, cursor = stepper.timeline_parts()
    data = json.dumps({"frames": rows, "figures": figures, "cursor": cursor, "start": stepper.position_k()}
                      ).replace("</", "<\\/")
    title = html.escape(stepper.title())
    html_page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body><h3 style='margin:4px 0'>{title}</h3><div id='kv-main'>"
            "<div id='kv-left'><div><button id='kv-first' title='first (Home)'>|◀</button>"
            "<button id='kv-back' title='back (←)'>◀ back</button><button id='kv-next' title='next (→)'>next ▶"
            "</button><button id='kv-last' title='last (End)'>▶|</button><button id='kv-play' title='play (space)'>"
            "play ▶▶</button></div><input id='kv-slider' type='range' min='0' value='0' style='width:250px'>"
            "<div id='kv-pos'></div><div id='kv-stage'></div><div id='kv-text'></div><div id='kv-gen'></div>"
            "<p style='color:#666;font-size:12px'>keys: ← → Home End, space plays. Made by kvmviz; "
            "no network needed.</p></div>"
            f"<div id='kv-right'><div id='kv-figure'></div><div id='kv-timeline'>{timeline}</div></div></div>"
            f"<script type='application/json' id='kv-frames'>{data}</script><script>{_JS}</script></body></html>\n")
    right = max(map(_svg_height, figures), default=0) + _svg_height(timeline)
    return html_page, int(max(right, 430) + 80)       # the title, margins; the left pane is about 430 px


def _svg_height(markup):
    """Height in px of the first ``<svg>`` in ``markup`` (0 if none)."""
    found = re.search(r'<svg [^>]*?height="([\d.]+)px"', markup)
    return float(found.group(1)) if found else 0.0

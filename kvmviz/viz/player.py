"""The HTML player: one self-contained file that steps through a call with no kernel.

All frames are inline SVG (each distinct picture once), the step texts are
the Stepper's, and a few dozen lines of plain JavaScript give the same
transport: buttons, a slider, the arrow keys, Home/End and play. No
network, no CDN: the file can be mailed or attached to a bug report.

>>> import kvmviz
>>> vm = kvmviz.VM(); _ = vm.set_user_memory_region(1, 0, 0, 0x1000, 0x10000)
>>> page = player(vm); page.startswith("<!DOCTYPE html>") and "step 15 of 15" in page and "http" not in page.split("<script>")[1]
True
"""

import html
import json
from pathlib import Path

from ..step import Step

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
show(0);
"""

_CSS = ("body{font:14px sans-serif;margin:12px;color:#222}#kv-main{display:flex;gap:12px;align-items:flex-start}"
        "#kv-left{width:380px}#kv-right{width:566px}button{font-size:14px;padding:3px 8px;margin:1px}"
        "#kv-text{margin:6px 0}#kv-gen{font-size:13px}")


def player(source, path=None, vm=None):
    """The HTML player of a call, as a string; also written to ``path`` if given.

    ``source`` is a ``Stepper`` (its current call), a ``VM`` (its last call),
    or the list of steps a call returned, with ``vm`` the VM they ran on.
    """
    from .widgets import Stepper
    stepper = source if isinstance(source, Stepper) else Stepper.for_call(*_call_of(source, vm))
    frames = stepper.frames()
    figures, index, rows = [], {}, []
    for f in frames:
        if f["figure"] not in index:
            index[f["figure"]] = len(figures)
            figures.append(f["figure"])
        rows.append({**{key: f[key] for key in ("position", "stage", "text", "gen")}, "figure": index[f["figure"]]})
    timeline, cursor = stepper.timeline_parts()
    data = json.dumps({"frames": rows, "figures": figures, "cursor": cursor}).replace("</", "<\\/")
    title = html.escape(stepper.title())
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
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
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def write_player(stepper, path):
    """``player(stepper, path)``; returns ``path``."""
    player(stepper, path)
    return path


def _call_of(source, vm):
    """(vm, first history index, end index) of the call ``source`` names."""
    if isinstance(source, (list, tuple)):
        if vm is None or not source:
            raise ValueError("a list of steps needs the VM they ran on: player(steps, vm=vm)")
        return vm, source[0].index, source[-1].index + 1
    vm = source
    events = vm.history.events[:vm.history.cursor]
    last = next((e for e in reversed(events) if isinstance(e, Step)), None)
    if last is None:
        raise ValueError("this VM has run no call yet: nothing to play")
    start = last.index
    while start > 0 and getattr(events[start - 1], "call", None) == last.call:
        start -= 1
    return vm, start, last.index + 1

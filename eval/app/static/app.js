// avbench app: the three pages (pairs, score, rate) drawn from the JSON API of eval/app/server.py.
// Shard metadata, file names and scores come from files anyone may have written: every text goes
// into the page through textContent (el()), never as HTML.
"use strict";

const $main = document.getElementById("main");
let CONFIG = null;
let onKey = null;  // the current page's keyboard handler

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fill(node, ...children) {  // replaceChildren, with lists flattened and nulls left out
  node.replaceChildren(...children.flat(Infinity).filter(c => c !== null && c !== undefined));
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function say(text, isError) {
  const m = document.getElementById("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json", "X-AVBench": "1"}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: `${r.status} ${r.statusText}`}));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toFixed(3));
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function opsText(ops) {
  if (!Array.isArray(ops) || !ops.length) return "(none)";
  return ops.map(o => {
    const params = o && typeof o.params === "object" && o.params ? o.params : {};
    return `${o && o.name}(${Object.entries(params).map(([k, v]) => `${k}=${fmt(v)}`).join(", ")})`;
  }).join(" + ");
}

function clock(t) {
  if (!isFinite(t)) return "0.00";
  return t.toFixed(2);
}

function select(id, label, options, value, onchange) {
  const s = el("select", {id, onchange: () => onchange(s.value)});
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o === "" ? "(any)" : o];
    s.append(el("option", {value: v, selected: String(v) === String(value)}, text));
  }
  return el("label", {}, label, s);
}

// Two videos, one play / pause and one seek bar for both; the sound comes from one side at a time.
function syncPlayer(sides) {
  const videos = sides.map(s => {
    const v = el("video", {preload: "auto", playsinline: true, src: s.url});
    v.addEventListener("error", () => {  // a codec the browser cannot play: the server re-encodes it once
      if (!v.src.includes("compat=1")) v.src = s.url + (s.url.includes("?") ? "&" : "?") + "compat=1";
    });
    return v;
  });
  let hear = 0;
  const play = el("button", {id: "play", class: "primary"}, "Play");
  const seek = el("input", {id: "seek", type: "range", min: 0, max: 1000, value: 0});
  const time = el("span", {id: "time", class: "mono"}, "0.00 s");
  const soundButtons = sides.map((s, i) => el("button", {class: i === hear ? "on" : "", onclick: () => listen(i)},
                                               `sound: ${s.label}`));
  function duration() { return Math.max(...videos.map(v => isFinite(v.duration) ? v.duration : 0)); }
  function listen(i) {
    hear = i;
    videos.forEach((v, j) => { v.muted = j !== hear; });
    soundButtons.forEach((b, j) => { b.className = j === hear ? "on" : ""; });
  }
  function playing() { return videos.some(v => !v.paused); }
  function toggle() {
    if (playing()) { videos.forEach(v => v.pause()); return; }
    const t = videos[0].ended ? 0 : videos[0].currentTime;
    videos.forEach(v => { v.currentTime = t; });
    videos.forEach(v => v.play().catch(err => say(`cannot play: ${err.message}`, true)));
  }
  function seekTo(t) { videos.forEach(v => { v.currentTime = Math.min(t, isFinite(v.duration) ? v.duration : t); }); }
  play.addEventListener("click", toggle);
  seek.addEventListener("input", () => seekTo(seek.value / 1000 * duration()));
  function showTime() {
    const t = videos[0].currentTime, d = duration();
    if (d) seek.value = Math.round(t / d * 1000);
    time.textContent = `${clock(t)} / ${clock(d)} s`;
  }
  videos[0].addEventListener("timeupdate", () => {
    showTime();
    const t = videos[0].currentTime, other = videos[1];
    if (!other.paused && !other.ended && Math.abs(other.currentTime - t) > 0.1) other.currentTime = t;  // drift
  });
  videos.forEach(v => v.addEventListener("loadedmetadata", showTime));
  videos.forEach(v => {
    v.addEventListener("play", () => { play.textContent = "Pause"; });
    v.addEventListener("pause", () => { if (!playing()) play.textContent = "Play"; });
    v.addEventListener("ended", () => videos.forEach(w => w.pause()));
  });
  listen(0);
  const figures = sides.map((s, i) => el("figure", {}, el("figcaption", {}, s.label), videos[i]));
  const root = el("div", {class: "player"}, el("div", {class: "videos"}, figures),
                  el("div", {class: "controls"}, play, seek, time, soundButtons));
  return {root, videos, toggle, listen: () => listen(1 - hear), seekTo};
}

// ------------------------------------------------------------------------------------ pairs

async function pairsPage() {
  const state = {loc: "0", split: CONFIG.split, dim: "", op: "", severity: "", source: "", key: null};
  if (!CONFIG.locations.length) {
    $main.append(el("p", {class: "panel"}, "No shards given: start the app with --shards DIR (make app SHARDS=...)."));
    return;
  }
  const bar = el("div", {class: "bar"});
  const count = el("span", {id: "count", class: "muted"});
  const list = el("div", {class: "list", id: "pair-list"});
  const detail = el("div", {class: "panel", id: "pair-detail"}, el("p", {class: "muted"}, "Choose a pair."));
  $main.append(bar, el("div", {class: "layout"}, list, detail));
  let listing = null;

  function loc() { return CONFIG.locations[+state.loc] || CONFIG.locations[0]; }
  function drawBar() {
    const f = listing ? listing.facets : {dim: [], op: [], severity: [], source: []};
    const splits = loc().splits;
    if (!splits.includes(state.split)) state.split = splits.includes("test") ? "test" : splits[0];
    bar.replaceChildren(
      select("f-loc", "shards", CONFIG.locations.map(l => [l.id, l.name]), state.loc,
             v => { state.loc = v; state.dim = state.op = state.severity = state.source = ""; load(); }),
      select("f-split", "split", splits, state.split, v => { state.split = v; load(); }),
      select("f-dim", "dimension", ["", ...f.dim], state.dim, v => { state.dim = v; load(); }),
      select("f-op", "operator", ["", ...f.op], state.op, v => { state.op = v; load(); }),
      select("f-severity", "severity", ["", ...f.severity], state.severity, v => { state.severity = v; load(); }),
      select("f-source", "source", ["", ...f.source], state.source, v => { state.source = v; load(); }),
      count);
  }
  async function load() {
    const q = new URLSearchParams({loc: state.loc, split: state.split, dim: state.dim, op: state.op,
                                   severity: state.severity, source: state.source});
    say("reading shards…");
    delete detail.dataset.key;
    try {
      listing = await api(`/api/pairs?${q}`);
      say("");
    } catch (err) {
      listing = null;
      say(err.message, true);
      list.replaceChildren();
      detail.replaceChildren(el("p", {class: "status-bad"}, err.message));
      drawBar();
      return;
    }
    drawBar();
    const bad = listing.bad.length ? `; ${listing.bad.length} broken samples skipped` : "";
    count.textContent = `${listing.matched} of ${listing.total} pairs${bad}`;
    list.replaceChildren(...listing.pairs.map(p => el("div", {class: "item", "data-key": p.key,
        onclick: () => show(p.key)},
      el("div", {}, el("b", {}, p.operators.join(" + ") || "(no op)"), ` severity ${fmt(p.severity)}`),
      el("div", {class: "sub"}, opsText(p.ops)), el("div", {class: "sub"}, p.key))));
    if (listing.pairs.length) show(listing.pairs.some(p => p.key === state.key) ? state.key : listing.pairs[0].key);
    else detail.replaceChildren(el("p", {class: "muted"}, "No pair matches the filters."));
  }
  async function show(key) {
    state.key = key;
    for (const item of list.children) item.classList.toggle("selected", item.dataset.key === key);
    let pair;
    try { pair = await api(`/api/pair?${new URLSearchParams({loc: state.loc, split: state.split, key})}`); }
    catch (err) { say(err.message, true); return; }
    const player = syncPlayer([{label: "chosen", url: pair.media.chosen}, {label: "rejected", url: pair.media.rejected}]);
    onKey = e => {
      if (e.key === " ") { player.toggle(); return true; }
      if (e.key === "h") { player.listen(); return true; }
      return false;
    };
    const meta = pair.meta || {};
    const opsRows = (ops, side) => (Array.isArray(ops) ? ops : []).map(o => el("tr", {},
      el("td", {}, side), el("td", {class: "mono"}, String(o && o.name)),
      el("td", {class: "mono"}, Object.entries((o && typeof o.params === "object" && o.params) || {}).map(([k, v]) => `${k} = ${fmt(v)}`).join(", "))));
    const opsTable = el("table", {id: "ops"}, el("tr", {}, el("th", {}, "side"), el("th", {}, "operator"),
                                                 el("th", {}, "params")),
                        opsRows(meta.ops, "rejected"), opsRows(meta.chosen_ops, "chosen"));
    const facts = ["dim", "question", "source_id", "window", "severity", "chosen_severity", "defect", "margin", "kind",
                   "recipe"].filter(k => meta[k] !== undefined && meta[k] !== null);
    const factTable = el("table", {}, facts.map(k => el("tr", {}, el("th", {}, k), el("td", {}, fmt(meta[k])))),
                         el("tr", {}, el("th", {}, "shard / key"), el("td", {class: "mono"}, `${pair.shard} ${pair.key}`)));
    const scores = el("div", {id: "pair-scores"});
    detail.replaceChildren(player.root, el("p", {class: "keys muted"}, el("kbd", {}, "Space"), " play / pause  ",
                           el("kbd", {}, "H"), " sound from the other side"), scores,
                           el("h3", {}, "Recorded operations"), opsTable, factTable);
    detail.dataset.key = key;  // what is shown (the tests wait for it)
    if (CONFIG.scorers.length) {
      scores.append(el("p", {class: "muted"}, "scoring both sides…"));
      try {
        const res = await api(`/api/pair_scores?${new URLSearchParams({loc: state.loc, split: state.split, key})}`);
        if (state.key !== key) return;
        scores.replaceChildren(el("h3", {}, "Scores"), el("table", {},
          el("tr", {}, el("th", {}, "judge"), el("th", {}, "chosen"), el("th", {}, "rejected")),
          CONFIG.scorers.map((s, i) => el("tr", {}, el("td", {}, s.dim),
            ["chosen", "rejected"].map(side => {
              const j = res[side].judges[i];
              return el("td", {}, el("b", {}, j.score === null ? "–" : j.score.toFixed(3)),
                        j.status !== "ok" ? ` (${j.status})` : "", j.offset_words ? el("div", {class: "muted"}, j.offset_words) : null);
            })))));
      } catch (err) { scores.replaceChildren(el("p", {class: "status-bad"}, err.message)); }
    }
  }
  drawBar();
  await load();
}

// ------------------------------------------------------------------------------------ score

function timeline(windows, video) {
  const W = 620, H = 170, L = 36, R = 10, T = 10, B = 26;
  const end = Math.max(...windows.map(w => w.end), 0.001);
  const x = t => L + (W - L - R) * t / end, y = p => T + (H - T - B) * (1 - p);
  const g = svg("svg", {class: "timeline", id: "timeline", width: W, height: H, viewBox: `0 0 ${W} ${H}`});
  g.append(svg("line", {class: "axis", x1: L, y1: y(0), x2: W - R, y2: y(0)}),
           svg("line", {class: "axis", x1: L, y1: y(0), x2: L, y2: y(1)}),
           svg("line", {class: "half", x1: L, y1: y(0.5), x2: W - R, y2: y(0.5)}));
  for (const p of [0, 0.5, 1]) g.append(svg("text", {x: 4, y: y(p) + 4}, p.toFixed(1)));
  const ticks = Math.min(10, Math.ceil(end));
  for (let i = 0; i <= ticks; i++) {
    const t = end * i / ticks;
    g.append(svg("text", {x: x(t), y: H - 8, "text-anchor": i === ticks ? "end" : "middle"}, `${t.toFixed(1)}s`));
  }
  let d = "";
  for (const w of windows) {
    if (w.score === null) continue;
    d += `M${x(w.start)},${y(w.score)} L${x(w.end)},${y(w.score)} `;
    g.append(svg("circle", {cx: x((w.start + w.end) / 2), cy: y(w.score), r: 3, fill: "#2f6fb3"},
                 svg("title", {}, `${w.start.toFixed(1)}-${w.end.toFixed(1)} s: ${w.score.toFixed(3)}`)));
  }
  g.append(svg("path", {class: "step", d}));
  const head = svg("line", {class: "head", x1: L, y1: y(0), x2: L, y2: y(1)});
  g.append(head);
  if (video) {
    video.addEventListener("timeupdate", () => {
      head.setAttribute("x1", x(video.currentTime)); head.setAttribute("x2", x(video.currentTime));
    });
    g.addEventListener("click", e => {
      const box = g.getBoundingClientRect();
      video.currentTime = Math.max(0, (e.clientX - box.left - L) / (W - L - R) * end);
    });
  }
  return g;
}

async function scorePage() {
  const panel = el("div", {class: "panel", id: "score-result"});
  const bar = el("div", {class: "bar"});
  $main.append(bar, panel);
  if (!CONFIG.scorers.length) {
    panel.append(el("p", {class: "status-bad"},
                    "No judge loaded: start the app with --scorer EXPORT (make app SCORER=exports/lip_sync)."));
  }
  let videos = [];
  if (CONFIG.videos) {
    try { videos = (await api("/api/videos")).videos; } catch (err) { say(err.message, true); }
  }
  const pick = el("select", {id: "video"}, el("option", {value: ""}, videos.length ? "(choose a video)" : "(none)"),
                  videos.map(v => el("option", {value: v}, v)));
  const file = el("input", {type: "file", id: "upload", accept: "video/*"});
  const go = el("button", {class: "primary", id: "score"}, "Score");
  const limitMb = (CONFIG.max_upload_bytes / (1 << 20)).toFixed(0);
  bar.append(el("label", {}, CONFIG.videos ? `video in ${CONFIG.videos}` : "no --videos folder given", pick),
             el("label", {}, `or upload one (at most ${limitMb} MB)`, file), go);
  go.addEventListener("click", async () => {
    try {
      let body;
      if (file.files.length) {
        const f = file.files[0];
        if (f.size > CONFIG.max_upload_bytes) throw new Error(`${f.name} is over the upload limit of ${limitMb} MB`);
        say(`uploading ${f.name}…`);
        const r = await fetch(`/api/upload?${new URLSearchParams({name: f.name})}`,
                              {method: "POST", headers: {"X-AVBench": "1", "Content-Type": "application/octet-stream"}, body: f});
        const up = await r.json().catch(() => ({error: `${r.status} ${r.statusText}`}));
        if (!r.ok) throw new Error(up.error);
        body = {upload: up.upload};
      } else if (pick.value) {
        body = {video: pick.value};
      } else {
        throw new Error("choose a video or a file to upload");
      }
      say("scoring…");
      panel.replaceChildren(el("p", {class: "muted"}, "scoring…"));
      show(await api("/api/score", body));
      say("");
    } catch (err) {
      say(err.message, true);
      panel.replaceChildren(el("p", {class: "status-bad"}, err.message));
    }
  });
  function show(res) {
    const video = el("video", {controls: true, preload: "auto", src: res.media, class: "single"});
    video.addEventListener("error", () => { if (!video.src.includes("compat=1")) video.src = res.media + "?compat=1"; });
    onKey = e => { if (e.key === " ") { video.paused ? video.play() : video.pause(); return true; } return false; };
    const rec = res.record;
    fill(panel, el("h3", {}, rec.path), video,
      res.warnings.map(w => el("p", {class: "warning"}, w)),
      rec.error ? el("p", {class: "status-bad"}, `error: ${rec.error}`) : null,
      res.judges.map(j => el("div", {class: "judge", "data-dim": j.dim},
        el("div", {}, el("b", {}, j.dim), j.question ? el("span", {class: "muted"}, ` — ${j.question}`) : null),
        el("div", {class: "score"}, j.score === null ? "no score" : `P(yes) ${j.score.toFixed(3)}`),
        el("div", {class: j.status === "ok" ? "status-ok status" : "status-bad status"}, j.status_words),
        j.offset_words ? el("div", {class: "offset"}, `offset: ${j.offset_words}`) : null,
        j.windows.length ? el("div", {}, el("div", {class: "muted"},
          `score per window (${j.windows.length}); dashed: 0.5; click to seek`), timeline(j.windows, video)) : null)),
      el("p", {class: "muted mono"}, res.summary));
  }
}

// ------------------------------------------------------------------------------------ rate

async function ratePage() {
  if (!CONFIG.locations.length) {
    $main.append(el("p", {class: "panel"}, "No shards given: start the app with --shards DIR (make app SHARDS=...)."));
    return;
  }
  const state = {loc: "0", split: CONFIG.split, task: null, session: 0};
  const loc = () => CONFIG.locations[+state.loc];
  if (!loc().splits.includes(state.split)) state.split = loc().splits[0];
  const rater = el("input", {id: "rater", placeholder: "your rater id", value: localStorage.getItem("rater") || "",
                             maxlength: 64});
  const start = el("button", {class: "primary", id: "start"}, "Start");
  const bar = el("div", {class: "bar"}, el("label", {}, "rater id", rater),
    select("r-loc", "shards", CONFIG.locations.map(l => [l.id, l.name]), state.loc, v => { state.loc = v; }),
    select("r-split", "split", loc().splits, state.split, v => { state.split = v; }), start);
  const panel = el("div", {class: "panel", id: "rate-panel"},
    el("p", {}, "Blind A/B: the two sides of each pair, in random left / right order. Answer with the keys: "),
    keysHelp());
  $main.append(bar, panel);
  function keysHelp() {
    return el("p", {class: "keys"}, el("kbd", {}, "←"), " left is better  ", el("kbd", {}, "→"), " right is better  ",
              el("kbd", {}, "↓"), " the same  ", el("kbd", {}, "↑"), " skip  ", el("kbd", {}, "Space"), " play / pause  ",
              el("kbd", {}, "H"), " sound from the other side");
  }
  async function begin() {
    localStorage.setItem("rater", rater.value);
    if (document.activeElement) document.activeElement.blur();  // the answer keys go to the page
    try {
      draw(await api(`/api/rate/next?${new URLSearchParams({rater: rater.value, loc: state.loc, split: state.split})}`));
    } catch (err) { say(err.message, true); }
  }
  start.addEventListener("click", begin);
  rater.addEventListener("keydown", e => { if (e.key === "Enter") begin(); });
  function draw(next) {
    state.task = next.task;
    const progress = el("div", {class: "progress", id: "progress"},
                        `${next.rated} of ${next.total} pairs rated by ${next.rater} (this session: ${state.session})`);
    if (!next.task) {
      onKey = null;
      panel.replaceChildren(progress, el("p", {id: "done"}, `All pairs of this split are rated; the ratings are in `,
        el("span", {class: "mono"}, next.ratings), ". A judge's agreement with them: ",
        el("span", {class: "mono"}, `python -m eval align --scores SCORES --ratings ${next.ratings}`),
        " (docs/app.md says how to score the pair sides)."));
      return;
    }
    const player = syncPlayer([{label: "A (left)", url: next.task.left}, {label: "B (right)", url: next.task.right}]);
    const answers = [["left", "← A is better"], ["same", "↓ the same"], ["right", "→ B is better"], ["skip", "↑ skip"]];
    panel.replaceChildren(progress,
      el("p", {id: "question"}, "Which side is better", next.task.question ? `: ${next.task.question}` : "?"),
      player.root,
      el("div", {class: "answers"}, answers.map(([a, text]) => el("button", {"data-answer": a, onclick: () => answer(a)}, text))),
      keysHelp());
    onKey = e => {
      const map = {ArrowLeft: "left", a: "left", ArrowRight: "right", d: "right", ArrowDown: "same", s: "same",
                   ArrowUp: "skip", w: "skip"};
      if (map[e.key]) { answer(map[e.key]); return true; }
      if (e.key === " ") { player.toggle(); return true; }
      if (e.key === "h") { player.listen(); return true; }
      return false;
    };
  }
  let busy = false;
  async function answer(a) {
    if (!state.task || busy) return;
    busy = true;
    try {
      const next = await api("/api/rate", {token: state.task.token, answer: a});
      if (next.written) state.session += 1;
      say(`saved: ${a}`);
      draw(next);
    } catch (err) { say(err.message, true); }
    finally { busy = false; }
  }
  if (rater.value) begin();
}

// ------------------------------------------------------------------------------------ start

document.addEventListener("keydown", e => {
  if (!onKey || e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  // a clicked button keeps the focus, and Space would click it again on keyup: the key is the page's
  if (e.target instanceof HTMLButtonElement) e.target.blur();
  if (onKey(e)) e.preventDefault();
});

(async () => {
  const page = location.pathname.replace(/\//g, "") || "pairs";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.id === `nav-${page}`);
  try { CONFIG = await api("/api/config"); } catch (err) { say(err.message, true); return; }
  document.title = `avbench: ${page}`;
  await ({pairs: pairsPage, score: scorePage, rate: ratePage}[page] || pairsPage)();
  document.body.dataset.ready = "1";
})();

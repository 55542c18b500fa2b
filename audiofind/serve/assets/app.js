// audiofind serve: play results, keys, waveforms, regions, sorting, copy and drag. The server renders the rest.
"use strict";
(() => {
  const token = document.body.dataset.token;
  const player = document.getElementById("player");
  const tbody = document.querySelector("table.results tbody");
  const loop = document.getElementById("loop");
  const volume = document.getElementById("volume");
  const toggleButton = document.querySelector(".transport .toggle");
  const out = {
    now: document.querySelector(".transport .now"),
    position: document.getElementById("position"),
    length: document.getElementById("length"),
    selection: document.getElementById("selection"),
  };
  let rows = Array.from(document.querySelectorAll("tr.hit")); // in the order shown
  const peaks = new Map(); // row id -> array of levels 0..1
  const chosen = new Map(); // row -> {start, end}: a region selected by dragging on its waveform
  let current = null; // the selected row
  let playing = null; // the row whose sound is in the player
  let wanted = 0; // bumps on each play request, so a slow load never starts an older one

  const withToken = (path) => `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
  const num = (row, key) => parseFloat(row.dataset[key]);
  const playable = (row) => !row.classList.contains("offline");
  const clock = (s) => {
    const m = Math.floor(s / 60);
    return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
  };
  // As the server names regions (audio.region.default_name): 'rain 6m55.000s-7m05.000s.wav'.
  const stamp = (x) => {
    x = Math.round(x * 1000) / 1000;
    const m = Math.floor(x / 60), s = x - 60 * m;
    return m ? `${m}m${s.toFixed(3).padStart(6, "0")}s` : `${s.toFixed(3)}s`;
  };

  // ---- the selected region of each row: the matching segment until another is dragged out on the waveform

  function selection(row) {
    return chosen.get(row) || { start: num(row, "start"), end: num(row, "end") };
  }

  function isWhole(row, sel) {
    return sel.start <= 0.0005 && sel.end >= num(row, "duration") - 0.0005;
  }

  function regionUrl(row, sel) {
    return withToken(`/api/region/${row.dataset.id}?start=${sel.start.toFixed(3)}&end=${sel.end.toFixed(3)}`);
  }

  function regionName(row, sel) {
    return `${row.dataset.name.replace(/\.[^.]*$/, "")} ${stamp(sel.start)}-${stamp(sel.end)}.wav`;
  }

  function setSelection(row, sel) {
    chosen.set(row, sel);
    const link = row.querySelector("a.download");
    link.href = regionUrl(row, sel);
    link.download = regionName(row, sel);
    link.title = `Download ${link.download}`;
    draw(row);
    readout();
  }

  // ---- choosing and playing

  function select(row) {
    if (!row) return;
    if (current) current.classList.remove("selected");
    current = row;
    row.classList.add("selected");
    row.scrollIntoView({ block: "nearest", inline: "nearest" });
    toggleButton.disabled = !playable(row);
    readout();
  }

  function play(row, at) {
    if (!playable(row)) return;
    const ticket = ++wanted;
    if (player.dataset.id !== row.dataset.id) {
      player.src = withToken(`/api/audio/${row.dataset.id}`);
      player.dataset.id = row.dataset.id;
      player.preload = "auto";
    }
    const go = () => {
      if (ticket !== wanted) return;
      player.currentTime = at;
      player.play().catch(() => {});
    };
    if (player.readyState >= 1) go();
    else player.addEventListener("loadedmetadata", go, { once: true });
    setPlaying(row);
  }

  function stop() {
    wanted++;
    player.pause();
    setPlaying(null);
  }

  function setPlaying(row) {
    const before = playing;
    if (playing) playing.classList.remove("playing");
    playing = row;
    if (row) row.classList.add("playing");
    if (before && before !== row) draw(before);
    toggleButton.textContent = row ? "■" : "▶";
    if (row) animate();
    readout();
  }

  // Click, Space: play from the start of the selection, or stop what plays.
  function toggle(row) {
    if (playing === row) stop();
    else play(row, selection(row).start);
  }

  function readout() {
    const row = playing || current;
    if (!row) return;
    const sel = selection(row);
    const here = playing === row && player.dataset.id === row.dataset.id ? player.currentTime : sel.start;
    out.now.textContent = `${playing === row ? "▶" : ""} ${row.dataset.name}`.trim();
    out.position.textContent = clock(here);
    out.length.textContent = clock(num(row, "duration"));
    out.selection.textContent = `${clock(sel.start)}–${clock(sel.end)} (${(sel.end - sel.start).toFixed(1)} s)`;
  }

  // Looping keeps the playhead inside the selection.
  function keepInLoop() {
    if (!loop.checked || !playing || player.paused) return;
    const sel = selection(playing);
    if (player.currentTime >= sel.end) player.currentTime = sel.start;
  }

  function moreLike(row) {
    const link = row.querySelector("a.like");
    if (link) window.location.href = link.href;
  }

  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }

  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (typing(e.target)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.key === "/") {
      e.preventDefault();
      const box = document.querySelector("input[name=q]");
      box.focus();
      box.select();
      return;
    }
    if (e.key === "l" || e.key === "L") {
      loop.checked = !loop.checked;
      return;
    }
    if (!rows.length) return;
    if (e.key === " ") {
      e.preventDefault();
      if (!current) select(rows[0]);
      toggle(current);
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const i = current ? rows.indexOf(current) + (e.key === "ArrowDown" ? 1 : -1) : 0;
      select(rows[Math.max(0, Math.min(rows.length - 1, i))]);
      if (playable(current)) play(current, selection(current).start);
    } else if (e.key === "Enter" && current) {
      e.preventDefault();
      moreLike(current);
    }
  });

  // ---- each row: click to play, drag on the waveform to select, drag the row out, copy

  function attach(row) {
    const canvas = row.querySelector("canvas");
    row.addEventListener("click", (e) => {
      if (e.target.closest("a, button:not(.play), canvas, details")) return;
      select(row);
      toggle(row);
    });
    // A click plays from where it lands; a drag (4 px or more) selects a region and plays it.
    canvas.addEventListener("mousedown", (e) => {
      if (e.button !== 0 || !playable(row)) return;
      e.preventDefault(); // no text selection, and the row itself is not dragged
      const box = canvas.getBoundingClientRect();
      const duration = num(row, "duration");
      const at = (x) => Math.max(0, Math.min(duration, ((x - box.left) / box.width) * duration));
      const from = at(e.clientX);
      let moved = false;
      const move = (ev) => {
        moved = moved || Math.abs(ev.clientX - e.clientX) >= 4;
        if (moved) {
          const to = at(ev.clientX);
          setSelection(row, { start: Math.min(from, to), end: Math.max(from, to) });
        }
      };
      const up = () => {
        window.removeEventListener("mousemove", move);
        window.removeEventListener("mouseup", up);
        select(row);
        play(row, moved ? selection(row).start : from);
      };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
    });
    row.querySelector("button.copy").addEventListener("click", (e) => copy(row.dataset.path, e.target));
    row.addEventListener("dragstart", (e) => {
      const d = row.dataset, sel = selection(row);
      if (!playable(row)) return e.preventDefault();
      e.dataTransfer.effectAllowed = "copy";
      e.dataTransfer.setData("text/plain", d.path);
      if (isWhole(row, sel)) { // the file itself, as it is
        const download = new URL(withToken(`/api/audio/${d.id}?original=1`), window.location.href).href;
        e.dataTransfer.setData("text/uri-list", d.fileUrl);
        e.dataTransfer.setData("DownloadURL", `${d.mime}:${d.name}:${download}`); // Chromium: drop to save the file
      } else { // just the region, as a WAV in the file's own format
        const download = new URL(regionUrl(row, sel), window.location.href).href;
        e.dataTransfer.setData("text/uri-list", download);
        e.dataTransfer.setData("DownloadURL", `audio/wav:${regionName(row, sel)}:${download}`);
      }
    });
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    const label = button.textContent;
    button.textContent = "copied";
    setTimeout(() => (button.textContent = label), 1200);
  }

  // ---- sorting by a column: first click in its natural order (best score, highest rate first), again to reverse

  const keys = {
    rank: (r) => num(r, "rank"), duration: (r) => num(r, "duration"), rate: (r) => num(r, "rate"),
    score: (r) => num(r, "score"), name: (r) => r.dataset.name, folder: (r) => r.dataset.folder,
  };
  const natural = { rank: 1, name: 1, folder: 1, duration: 1, rate: -1, score: -1 };
  document.querySelectorAll("th button[data-sort]").forEach((button) => {
    button.addEventListener("click", () => {
      const key = button.dataset.sort, th = button.closest("th");
      const now = th.getAttribute("aria-sort");
      const dir = now === "ascending" ? -1 : now === "descending" ? 1 : natural[key];
      document.querySelectorAll("th[aria-sort]").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      const compare = (x, y) => (typeof x === "string" ? x.localeCompare(y, undefined, { sensitivity: "base", numeric: true }) : x - y);
      rows.sort((a, b) => dir * compare(keys[key](a), keys[key](b)) || num(a, "rank") - num(b, "rank"));
      rows.forEach((r) => tbody.appendChild(r));
    });
  });

  // ---- waveforms: peaks come from the server (cached there by content); the selection is highlighted

  function fit(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * ratio), h = Math.round(canvas.clientHeight * ratio);
    if (w && h && (canvas.width !== w || canvas.height !== h)) {
      canvas.width = w;
      canvas.height = h;
    }
  }

  function draw(row) {
    const canvas = row.querySelector("canvas");
    const levels = peaks.get(row.dataset.id);
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, mid = h / 2, px = w / (canvas.clientWidth || w);
    const duration = num(row, "duration") || 1;
    const span = (a, b) => { // at least 6 CSS pixels wide, so a short segment of a long file still shows
      let x0 = (a / duration) * w, x1 = (b / duration) * w;
      const least = 6 * px;
      if (x1 - x0 < least) {
        x0 = Math.max(0, Math.min(w - least, (x0 + x1) / 2 - least / 2));
        x1 = x0 + least;
      }
      return [Math.floor(x0), Math.ceil(x1)]; // whole pixels: crisp edges
    };
    ctx.clearRect(0, 0, w, h);
    const sel = selection(row);
    const [x0, x1] = span(sel.start, sel.end);
    ctx.fillStyle = playable(row) ? "#cfe1ee" : "#e4e4e4";
    ctx.fillRect(x0, 0, x1 - x0, h); // the whole height
    if (levels) {
      for (let x = 0; x < w; x++) {
        const a = Math.floor((x / w) * levels.length), b = Math.max(a + 1, Math.floor(((x + 1) / w) * levels.length));
        let peak = 0;
        for (let j = a; j < b; j++) peak = Math.max(peak, levels[j]);
        ctx.fillStyle = x >= x0 && x <= x1 ? "#276890" : "#9bb5c6";
        const half = Math.max(0.5, peak * mid);
        ctx.fillRect(x, mid - half, 1, 2 * half);
      }
    }
    ctx.fillStyle = "#276890";
    ctx.fillRect(x0, 0, px, h);
    ctx.fillRect(x1 - px, 0, px, h);
    if (chosen.has(row)) { // where the search matched, under a selection of one's own
      const [m0, m1] = span(num(row, "start"), num(row, "end"));
      ctx.fillStyle = "#c60";
      ctx.fillRect(m0, h - 3 * px, m1 - m0, 3 * px);
    }
    if (row === playing && player.dataset.id === row.dataset.id) {
      ctx.fillStyle = "#c60";
      ctx.fillRect((player.currentTime / duration) * w, 0, 1.5 * px, h);
    }
  }

  function animate() {
    if (!playing) return;
    keepInLoop();
    draw(playing);
    readout();
    if (!player.paused || player.readyState < 1) requestAnimationFrame(animate);
  }
  player.addEventListener("play", animate);
  player.addEventListener("timeupdate", keepInLoop);
  player.addEventListener("ended", () => {
    if (loop.checked && playing) play(playing, selection(playing).start);
    else setPlaying(null);
  });

  volume.value = localStorage.getItem("audiofind.volume") || "1";
  player.volume = parseFloat(volume.value);
  volume.addEventListener("input", () => {
    player.volume = parseFloat(volume.value);
    localStorage.setItem("audiofind.volume", volume.value);
  });
  toggleButton.addEventListener("click", () => current && toggle(current));

  async function load(row) {
    draw(row);
    if (!playable(row)) return;
    try {
      const response = await fetch(`/api/peaks/${row.dataset.id}`, { headers: { Authorization: `Bearer ${token}` } });
      if (!response.ok) {
        row.classList.add("missing");
        row.title = (await response.json()).error || "";
        return;
      }
      peaks.set(row.dataset.id, (await response.json()).peaks);
      draw(row);
    } catch {
      /* the server stopped: leave the thumbnail empty */
    }
  }

  rows.forEach((row) => {
    attach(row);
    fit(row.querySelector("canvas"));
  });
  window.addEventListener("resize", () => rows.forEach((row) => { fit(row.querySelector("canvas")); draw(row); }));
  // A few at a time, in order, so the first rows draw first.
  const queue = rows.slice();
  for (let n = 0; n < 4; n++) (async () => { while (queue.length) await load(queue.shift()); })();
  if (rows.length) {
    document.querySelector(".transport").hidden = false;
    select(rows[0]);
  }
})();

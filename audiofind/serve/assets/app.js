// audiofind serve: play results, keys, waveforms, copy and drag. The server renders everything else.
"use strict";
(() => {
  const token = document.body.dataset.token;
  const player = document.getElementById("player");
  const rows = Array.from(document.querySelectorAll("tr.hit"));
  const peaks = new Map(); // row id -> array of levels 0..1
  let current = -1; // selected row index
  let playing = null; // the row whose sound is in the player
  let wanted = 0; // bumps on each play request, so a slow load never starts an older one

  const withToken = (path) => `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;

  function select(i) {
    if (!rows.length) return;
    i = Math.max(0, Math.min(rows.length - 1, i));
    if (current >= 0) rows[current].classList.remove("selected");
    current = i;
    rows[i].classList.add("selected");
    rows[i].scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  function play(row, at) {
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
    if (row) animate();
  }

  // Click, Space: play from the start of the matching segment, or stop what plays.
  function toggle(row) {
    if (playing === row) stop();
    else play(row, parseFloat(row.dataset.start));
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
    if (!rows.length) return;
    if (e.key === " ") {
      e.preventDefault();
      if (current < 0) select(0);
      toggle(rows[current]);
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      select(current + (e.key === "ArrowDown" ? 1 : -1));
      play(rows[current], parseFloat(rows[current].dataset.start));
    } else if (e.key === "Enter" && current >= 0) {
      e.preventDefault();
      moreLike(rows[current]);
    }
  });

  rows.forEach((row, i) => {
    const canvas = row.querySelector("canvas");
    row.addEventListener("click", (e) => {
      if (e.target.closest("a, button:not(.play), canvas")) return;
      select(i);
      toggle(row);
    });
    canvas.addEventListener("click", (e) => {
      const box = canvas.getBoundingClientRect();
      const at = ((e.clientX - box.left) / box.width) * parseFloat(row.dataset.duration);
      select(i);
      play(row, Math.max(0, at));
    });
    row.querySelector("button.copy").addEventListener("click", (e) => copy(row.dataset.path, e.target));
    row.addEventListener("dragstart", (e) => {
      const d = row.dataset;
      const download = new URL(withToken(`/api/audio/${d.id}?original=1`), window.location.href).href;
      e.dataTransfer.effectAllowed = "copy";
      e.dataTransfer.setData("text/uri-list", d.fileUrl);
      e.dataTransfer.setData("text/plain", d.path);
      e.dataTransfer.setData("DownloadURL", `${d.mime}:${d.name}:${download}`); // Chromium: drop to save the file
    });
  });

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

  // Waveforms: peaks come from the server (cached there by content); the matching segment is highlighted.
  function draw(row) {
    const canvas = row.querySelector("canvas");
    const levels = peaks.get(row.dataset.id);
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, mid = h / 2;
    const duration = parseFloat(row.dataset.duration) || 1;
    ctx.clearRect(0, 0, w, h);
    const x0 = (parseFloat(row.dataset.start) / duration) * w;
    const x1 = (parseFloat(row.dataset.end) / duration) * w;
    ctx.fillStyle = "#e6f0f7";
    ctx.fillRect(x0, 0, Math.max(1, x1 - x0), h);
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
    if (row === playing && player.dataset.id === row.dataset.id) {
      ctx.fillStyle = "#c60";
      ctx.fillRect((player.currentTime / duration) * w, 0, 1.5, h);
    }
  }

  function animate() {
    if (!playing) return;
    draw(playing);
    if (!player.paused || player.readyState < 1) requestAnimationFrame(animate);
  }
  player.addEventListener("play", animate);
  player.addEventListener("ended", () => setPlaying(null));

  async function load(row) {
    draw(row);
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

  // A few at a time, in order, so the first rows draw first.
  const queue = rows.slice();
  for (let n = 0; n < 4; n++) (async () => { while (queue.length) await load(queue.shift()); })();
  if (rows.length) select(0);
})();

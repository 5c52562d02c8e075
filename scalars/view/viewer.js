// Attention-pattern viewer: draws one head's mean pattern at one checkpoint on a <canvas>.
// Data: the JSON block #pattern-data (see scalars/view/_html.py). No network, no libraries.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("pattern-data").textContent);
  const S = data.seq_len, H = data.n_heads, L = data.n_layers;
  const canvas = document.getElementById("pattern");
  const headSel = document.getElementById("head");
  const slider = document.getElementById("step");
  const stepOut = document.getElementById("step-value");
  const readout = document.getElementById("readout");
  const play = document.getElementById("play");
  const ctx = canvas.getContext("2d");

  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const opt = document.createElement("option");
      opt.value = String(l * H + h);
      opt.textContent = "layer " + l + " head " + h;
      headSel.appendChild(opt);
    }
  }
  headSel.value = String(data.initial.layer * H + data.initial.head);
  slider.min = "0";
  slider.max = String(data.steps.length - 1);
  slider.value = String(data.initial.step_index);

  // geometry: cells, label margins (measured), colour bar
  const cell = Math.max(3, Math.min(16, Math.floor(640 / S)));
  const fontPx = Math.max(8, Math.min(12, cell));
  const stride = Math.max(1, Math.ceil((fontPx + 1) / cell));
  ctx.font = fontPx + "px sans-serif";
  let labelW = 0;
  for (const s of data.labels) labelW = Math.max(labelW, ctx.measureText(s).width);
  const left = Math.ceil(labelW) + 30, top = 8, bottom = Math.ceil(labelW) + 30;
  const gridW = cell * S, barX = left + gridW + 24, barW = 14;
  const width = barX + barW + 56, height = top + gridW + bottom;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  canvas.dataset.left = String(left);  // geometry in CSS pixels, for tools reading the picture
  canvas.dataset.top = String(top);
  canvas.dataset.cell = String(cell);

  function slice(stepIndex, layer, head) {
    const flat = data.patterns[stepIndex], n = S * S, start = (layer * H + head) * n;
    return flat.slice(start, start + n);
  }
  function colour(v) {
    const i = Math.max(0, Math.min(data.colormap.length - 1, Math.round(v * (data.colormap.length - 1))));
    return data.colormap[i];
  }
  function current() {
    const idx = Number(headSel.value);
    return { stepIndex: Number(slider.value), layer: Math.floor(idx / H), head: idx % H };
  }

  function draw() {
    const cur = current();
    const vals = slice(cur.stepIndex, cur.layer, cur.head);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    for (let q = 0; q < S; q++) {
      for (let k = 0; k < S; k++) {
        const v = vals[q * S + k] / data.scale;
        ctx.fillStyle = colour(v);
        ctx.fillRect(left + k * cell, top + q * cell, cell, cell);
      }
    }
    ctx.fillStyle = "#222";
    ctx.font = fontPx + "px sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let q = 0; q < S; q += stride) ctx.fillText(data.labels[q], left - 4, top + (q + 0.5) * cell);
    for (let k = 0; k < S; k += stride) {
      ctx.save();
      ctx.translate(left + (k + 0.5) * cell, top + gridW + 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(data.labels[k], 0, 0);
      ctx.restore();
    }
    ctx.font = "12px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText("key (attended to)", left + gridW / 2, height - 10);
    ctx.save();
    ctx.translate(10, top + gridW / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("query (attending)", 0, 0);
    ctx.restore();
    for (let y = 0; y < gridW; y++) {  // colour bar: 1 at the top, 0 at the bottom
      ctx.fillStyle = colour(1 - y / (gridW - 1));
      ctx.fillRect(barX, top + y, barW, 1);
    }
    ctx.textAlign = "left";
    ctx.fillStyle = "#222";
    for (const t of [0, 0.25, 0.5, 0.75, 1]) ctx.fillText(t.toFixed(2), barX + barW + 4, top + (1 - t) * (gridW - 1));
    const step = data.steps[cur.stepIndex];
    stepOut.textContent = String(step);
    canvas.dataset.step = String(step);
    canvas.dataset.layer = String(cur.layer);
    canvas.dataset.head = String(cur.head);
    document.title = data.title + " \u00b7 step " + step + " \u00b7 L" + cur.layer + "H" + cur.head;
  }

  canvas.addEventListener("mousemove", function (ev) {
    const r = canvas.getBoundingClientRect();
    const k = Math.floor((ev.clientX - r.left - left) / cell), q = Math.floor((ev.clientY - r.top - top) / cell);
    if (q < 0 || k < 0 || q >= S || k >= S) { readout.textContent = ""; return; }
    const cur = current();
    const v = slice(cur.stepIndex, cur.layer, cur.head)[q * S + k] / data.scale;
    readout.textContent = "query " + q + " \u201c" + data.labels[q] + "\u201d \u2192 key " + k + " \u201c" +
      data.labels[k] + "\u201d: " + v.toFixed(4);
  });
  canvas.addEventListener("mouseleave", function () { readout.textContent = ""; });
  headSel.addEventListener("change", draw);
  slider.addEventListener("input", draw);
  let timer = null;
  play.addEventListener("click", function () {
    if (timer !== null) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
    if (Number(slider.value) >= data.steps.length - 1) slider.value = "0";
    play.textContent = "pause";
    timer = setInterval(function () {
      if (Number(slider.value) >= data.steps.length - 1) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
      slider.value = String(Number(slider.value) + 1);
      draw();
    }, 250);
  });
  draw();
})();

/* The playground page (served by serve_app/http/playground.py): pick a model from GET /model/registry,
 * choose an image (sample, file, drop or URL), POST /infer with Roboflow's JSON body, and draw the answer
 * on a canvas beside its JSON and its Server-Timing stages.
 *
 * Everything the server returns (class names, OCR text, messages) is inserted with textContent or drawn
 * with the canvas's fillText, never parsed as HTML. The API key, if the server needs one, is kept in
 * localStorage and sent as "Authorization: Bearer <key>". No framework, no build step.
 */
"use strict";

(() => {
  const KEY_STORE = "serve_app.playground.api_key";
  const FALLBACK_COLOUR = "#00C2FF";
  const $ = (id) => document.getElementById(id);
  const el = {
    keyForm: $("key-form"), key: $("api-key"), keyForget: $("key-forget"),
    model: $("model"), modelInfo: $("model-info"), samples: $("samples"),
    drop: $("drop"), file: $("file"), url: $("url"),
    confidence: $("confidence"), confidenceValue: $("confidence-value"),
    overlap: $("overlap"), overlapValue: $("overlap-value"),
    run: $("run"), status: $("status"),
    output: $("output"), canvas: $("canvas"), pictureNote: $("picture-note"), summary: $("summary"),
    timing: document.querySelector("#timing tbody"), replica: $("replica"), json: $("json"),
  };
  const state = {
    models: new Map(),  // model_id -> registry entry
    hints: null,        // GET playground/models/{id}: colours, keypoint names, skeleton
    picture: null,      // {image, base64} of a local image
    url: "",            // an image URL for the server to fetch
    sessionKey: undefined,  // the key entered on this page (undefined: the stored one)
    busy: false,
  };

  // -- talking to the server ------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super(describeError(status, body));
      this.status = status;
    }
  }

  function describeError(status, body) {
    const message = body && typeof body.message === "string" ? body.message : "no details in the answer";
    if (status === 401) {
      return `This server needs a valid API key (${message}). Enter it above and press "Use key".`;
    }
    const code = body && typeof body.error === "string" ? body.error : "error";
    return `${status} ${code}: ${message}`;
  }

  function storedKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch (err) { return ""; }
  }

  function storeKey(value) {
    try {
      if (value) localStorage.setItem(KEY_STORE, value); else localStorage.removeItem(KEY_STORE);
    } catch (err) { /* storage off: the key lasts until the page is left */ }
    state.sessionKey = value;
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    const key = state.sessionKey ?? storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers, credentials: "omit", cache: "no-store" });
    } catch (err) {
      throw new Error(`The server could not be reached (${err.message}).`);
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (err) { body = null; }
    if (!response.ok) throw new ApiError(response.status, body);
    return { body, response };
  }

  function modelPath(modelId) {
    return "playground/models/" + modelId.split("/").map(encodeURIComponent).join("/");
  }

  // -- small DOM helpers (text only) ----------------------------------------------------------
  function node(tag, text, className) {
    const n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (className) n.className = className;
    return n;
  }

  function setStatus(text, isError = false) {
    el.status.textContent = text;
    el.status.classList.toggle("error", isError);
    el.output.dataset.state = isError ? "error" : (state.busy ? "running" : "idle");
  }

  function colourOf(name) {
    const colours = state.hints && state.hints.colors;
    return (colours && Object.prototype.hasOwnProperty.call(colours, name)) ? colours[name] : FALLBACK_COLOUR;
  }

  function swatch(colour) {
    const s = node("span", null, "swatch");
    s.style.background = colour;
    return s;
  }

  // -- the model list -------------------------------------------------------------------------
  async function loadModels() {
    el.model.disabled = true;
    updateRunButton();
    let entries;
    try {
      entries = await fetchRegistry();
    } catch (err) {
      state.models = new Map();
      el.model.replaceChildren();
      renderModelInfo();
      setStatus(err.message, true);
      return;
    }
    const previous = el.model.value;
    el.model.replaceChildren(...entries.map((m) => {
      const option = node("option", `${m.model_id} (${m.task_type})`);
      option.value = m.model_id;
      return option;
    }));
    const fallback = entries.find((m) => m.task_type === "object-detection") || entries[0];
    if (state.models.has(previous)) el.model.value = previous;
    else if (fallback) el.model.value = fallback.model_id;
    el.model.disabled = entries.length === 0;
    setStatus(entries.length ? `${entries.length} models in the registry.` : "The registry lists no models.",
              entries.length === 0);
    await chooseModel();
  }

  async function fetchRegistry() {
    const { body } = await api("model/registry");
    const entries = [...((body && body.available) || [])].sort((a, b) => a.model_id.localeCompare(b.model_id));
    state.models = new Map(entries.map((m) => [m.model_id, m]));
    return entries;
  }

  async function chooseModel() {
    const modelId = el.model.value;
    state.hints = null;
    if (modelId) {
      try {
        state.hints = (await api(modelPath(modelId))).body;
      } catch (err) {
        setStatus(`Could not read how to draw ${modelId}: ${err.message}`, true);
      }
    }
    renderModelInfo();
    updateRunButton();
  }

  function renderModelInfo() {
    const entry = state.models.get(el.model.value);
    el.modelInfo.replaceChildren();
    if (!entry) return;
    const rows = [
      ["Task", entry.task_type],
      ["Architecture", entry.architecture],
      ["Input", entry.input_width && entry.input_height ? `${entry.input_width} x ${entry.input_height}` : "any size"],
    ];
    for (const [name, value] of rows) el.modelInfo.append(node("dt", name), node("dd", value));
    const classes = node("dd");
    for (const name of entry.classes || []) {
      const item = node("span");
      item.append(swatch(colourOf(name)), document.createTextNode(`${name} `));
      classes.append(item);
    }
    el.modelInfo.append(node("dt", "Classes"), classes);
    const where = (entry.loaded_on || []).map((r) => r.replica).filter(Boolean);
    el.modelInfo.append(node("dt", "Loaded on"),
                        node("dd", where.length ? where.join(", ") : "not loaded yet (it loads on its first request)"));
  }

  // -- samples and images ---------------------------------------------------------------------
  async function loadSamples() {
    let samples = [];
    try {
      samples = (await api("playground/samples")).body || [];
    } catch (err) {
      el.samples.replaceChildren(node("p", `No samples: ${err.message}`));
      return;
    }
    el.samples.replaceChildren(...samples.map((sample) => {
      const button = node("button", null, "sample");
      button.type = "button";
      button.title = `${sample.title}, for ${sample.model_id}`;
      button.dataset.model = sample.model_id;
      const thumb = node("img");
      thumb.src = sample.url;
      thumb.alt = "";
      button.append(thumb, node("span", sample.model_id));
      button.addEventListener("click", () => runSample(sample));
      return button;
    }));
  }

  async function runSample(sample) {
    if (state.busy) return;
    if (!state.models.has(sample.model_id)) {
      setStatus(`${sample.model_id} is not in this server's registry.`, true);
      return;
    }
    try {
      const response = await fetch(sample.url, { credentials: "omit" });
      if (!response.ok) throw new Error(`${response.status} for ${sample.url}`);
      await setPicture(await response.blob());
    } catch (err) {
      setStatus(`Could not load the sample: ${err.message}`, true);
      return;
    }
    if (el.model.value !== sample.model_id) {
      el.model.value = sample.model_id;
      await chooseModel();
    }
    await run();
  }

  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error("the file could not be read"));
      reader.readAsDataURL(blob);
    });
  }

  async function imageFrom(src) {
    const image = new Image();
    image.src = src;
    await image.decode();
    return image;
  }

  async function setPicture(blob) {
    if (blob.type && !blob.type.startsWith("image/")) throw new Error(`${blob.type} is not an image`);
    const dataUrl = await readAsDataUrl(blob);
    let image;
    try {
      image = await imageFrom(dataUrl);
    } catch (err) {
      throw new Error("this browser cannot show the file as an image");
    }
    state.picture = { image, base64: dataUrl.slice(dataUrl.indexOf(",") + 1) };
    state.url = "";
    el.url.value = "";
    clearResult();
    paint(image);
    el.pictureNote.textContent = `${image.naturalWidth} x ${image.naturalHeight} px`;
    updateRunButton();
  }

  async function pickFile(file) {
    if (!file) return;
    try {
      await setPicture(file);
      setStatus(`${file.name}: press Run.`);
    } catch (err) {
      setStatus(`Could not use ${file.name}: ${err.message}`, true);
    }
  }

  function useUrl() {
    state.url = el.url.value.trim();
    if (state.url) {
      state.picture = null;
      el.file.value = "";
      clearResult();
      paint(null);
      el.pictureNote.textContent = "The server fetches the URL and draws the answer on it.";
    }
    updateRunButton();
  }

  function updateRunButton() {
    el.run.disabled = state.busy || !el.model.value || !(state.picture || state.url);
  }

  // -- inference ------------------------------------------------------------------------------
  function threshold(input) {
    return Math.round(parseFloat(input.value) * 100) / 100;
  }

  async function run() {
    const modelId = el.model.value;
    if (!modelId || state.busy) return;
    const request = { model_id: modelId, confidence: threshold(el.confidence), iou_threshold: threshold(el.overlap) };
    const fromUrl = Boolean(state.url);
    if (fromUrl) {
      request.image = { type: "url", value: state.url };
      request.visualize_predictions = true;  // the page cannot read another site's pixels: the server draws
    } else if (state.picture) {
      request.image = { type: "base64", value: state.picture.base64 };
    } else {
      setStatus("Choose an image first: a sample, a file or a URL.", true);
      return;
    }
    state.busy = true;
    updateRunButton();
    clearResult();
    setStatus(`Running ${modelId}...`);
    const started = performance.now();
    try {
      const { body, response } = await api("infer", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      const elapsed = performance.now() - started;
      let picture = state.picture && state.picture.image;
      if (fromUrl) picture = body.visualization ? await imageFrom(`data:image/jpeg;base64,${body.visualization}`) : null;
      state.busy = false;
      render(body, response, picture, fromUrl, elapsed);
      el.output.dataset.model = modelId;
      setStatus(`${modelId}: ${headline(body)} (${Math.round(elapsed)} ms).`);
      el.output.dataset.state = "done";
      refreshModelInfo();
    } catch (err) {
      state.busy = false;
      setStatus(err.message, true);
    } finally {
      updateRunButton();
    }
  }

  async function refreshModelInfo() {
    try {
      await fetchRegistry();
      renderModelInfo();
    } catch (err) { /* the answer is shown; the "loaded on" line stays as it was */ }
  }

  function kindOf(answer) {
    if (typeof answer.result === "string") return "ocr";
    if ("top" in answer || "predicted_classes" in answer) return "classification";
    return "detections";
  }

  function scoresOf(answer) {
    const p = answer.predictions;
    if (Array.isArray(p)) return p.map((s) => [s.class, s.confidence]);
    return Object.entries(p || {}).map(([name, s]) => [name, s.confidence]).sort((a, b) => b[1] - a[1]);
  }

  function headline(answer) {
    const kind = kindOf(answer);
    if (kind === "ocr") return answer.result ? `read "${answer.result}"` : "no text found";
    if (kind === "classification") {
      if ("top" in answer) return `${answer.top} (${Number(answer.confidence).toFixed(2)})`;
      return `${(answer.predicted_classes || []).join(", ") || "no class"} above the threshold`;
    }
    const n = (answer.predictions || []).length;
    return `${n} prediction${n === 1 ? "" : "s"}`;
  }

  // -- drawing --------------------------------------------------------------------------------
  function paint(image) {
    const ctx = el.canvas.getContext("2d");
    if (!image) {
      el.canvas.width = 640;
      el.canvas.height = 360;
      ctx.fillStyle = "#20242c";
      ctx.fillRect(0, 0, 640, 360);
      ctx.fillStyle = "#aab2c0";
      ctx.font = "18px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText(state.url ? "the server's drawing appears here" : "choose a sample, a file or a URL", 320, 180);
      return ctx;
    }
    el.canvas.width = image.naturalWidth;
    el.canvas.height = image.naturalHeight;
    ctx.drawImage(image, 0, 0);
    return ctx;
  }

  function render(answer, response, picture, drawnByServer, elapsed) {
    const ctx = paint(picture);
    const kind = kindOf(answer);
    if (picture && !drawnByServer) {
      const stroke = Math.max(2, Math.round(Math.min(picture.naturalWidth, picture.naturalHeight) / 320));
      if (kind === "classification") drawClassification(ctx, answer, stroke);
      else drawDetections(ctx, answer.predictions || [], stroke, kind === "ocr");
    }
    el.pictureNote.textContent = drawnByServer ? "Drawn by the server (visualize_predictions): the page cannot read another site's pixels." :
      (picture ? `${picture.naturalWidth} x ${picture.naturalHeight} px, drawn in the browser.` : "");
    renderSummary(answer, kind);
    renderTiming(response.headers.get("Server-Timing"), elapsed);
    const replica = response.headers.get("X-Replica");
    el.replica.textContent = replica ? `Answered by replica ${replica}.` : "";
    el.json.textContent = JSON.stringify(answer, (k, v) =>
      (k === "visualization" && typeof v === "string") ? `<${v.length} base64 characters: the picture above>` : v, 2);
  }

  function drawDetections(ctx, predictions, stroke, ocr) {
    const font = Math.max(12, stroke * 7);
    ctx.lineWidth = stroke;
    ctx.lineJoin = "round";
    ctx.font = `${font}px sans-serif`;
    for (const p of predictions) {
      const colour = colourOf(p.class);
      const x0 = p.x - p.width / 2;
      const y0 = p.y - p.height / 2;
      ctx.strokeStyle = colour;
      if (Array.isArray(p.points) && p.points.length >= 3) {
        outline(ctx, p.points);
        if (!ocr) {
          ctx.globalAlpha = 0.4;
          ctx.fillStyle = colour;
          ctx.fill();
          ctx.globalAlpha = 1;
        }
        ctx.stroke();
      }
      if (!ocr || !Array.isArray(p.points)) ctx.strokeRect(x0, y0, p.width, p.height);
      if (Array.isArray(p.keypoints)) drawKeypoints(ctx, p.keypoints, colour, stroke);
      const text = ocr ? String(p.text ?? "") : `${p.class} ${Number(p.confidence).toFixed(2)}`;
      label(ctx, text, x0, y0, colour, font);
    }
  }

  function outline(ctx, points) {
    ctx.beginPath();
    points.forEach((pt, i) => (i ? ctx.lineTo(pt.x, pt.y) : ctx.moveTo(pt.x, pt.y)));
    ctx.closePath();
  }

  function drawKeypoints(ctx, keypoints, colour, stroke) {
    const byId = new Map(keypoints.map((k) => [k.class_id, k]));
    ctx.strokeStyle = colour;
    for (const [a, b] of (state.hints && state.hints.skeleton) || []) {
      const p = byId.get(a);
      const q = byId.get(b);
      if (!p || !q) continue;
      ctx.beginPath();
      ctx.moveTo(p.x, p.y);
      ctx.lineTo(q.x, q.y);
      ctx.stroke();
    }
    for (const k of keypoints) {
      ctx.beginPath();
      ctx.arc(k.x, k.y, stroke * 2.5, 0, 2 * Math.PI);
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.lineWidth = Math.max(1, stroke / 2);
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
      ctx.lineWidth = stroke;
      ctx.strokeStyle = colour;
    }
  }

  function label(ctx, text, x, y, colour, font) {
    if (!text) return;
    const pad = Math.round(font / 4);
    const width = ctx.measureText(text).width + 2 * pad;
    const height = font + 2 * pad;
    const top = y - height >= 0 ? y - height : y;
    ctx.fillStyle = colour;
    ctx.fillRect(x, top, width, height);
    ctx.fillStyle = textColourOn(colour);
    ctx.textBaseline = "top";
    ctx.fillText(text, x + pad, top + pad);
  }

  function textColourOn(hex) {
    const rgb = parseInt(hex.slice(1), 16);
    const luma = 0.299 * (rgb >> 16) + 0.587 * ((rgb >> 8) & 255) + 0.114 * (rgb & 255);
    return luma > 150 ? "#000000" : "#ffffff";
  }

  function drawClassification(ctx, answer, stroke) {
    const font = Math.max(14, stroke * 8);
    ctx.font = `${font}px sans-serif`;
    const [name, confidence] = scoresOf(answer)[0] || [];
    if (name !== undefined) label(ctx, `${name} ${Number(confidence).toFixed(2)}`, 0, 0, colourOf(name), font);
  }

  // -- the text beside the picture ------------------------------------------------------------
  function scoreList(rows) {
    const list = node("ul", null, "scores");
    for (const [name, confidence, colour] of rows) {
      const item = node("li");
      const title = node("span");
      title.append(swatch(colour), document.createTextNode(name));
      const bar = node("div", null, "bar");
      bar.style.width = `${Math.max(0, Math.min(1, confidence)) * 100}%`;
      bar.style.background = colour;
      item.append(title, node("span", Number(confidence).toFixed(3)), bar);
      list.append(item);
    }
    return list;
  }

  function renderSummary(answer, kind) {
    const parts = [node("p", headline(answer), "headline")];
    if (kind === "ocr") {
      parts.push(node("div", answer.result || "(no text found)", "ocr-text"));
      parts.push(scoreList((answer.predictions || []).map((p) => [p.text, p.confidence, colourOf(p.class)])));
    } else if (kind === "classification") {
      parts.push(scoreList(scoresOf(answer).map(([name, c]) => [name, c, colourOf(name)])));
    } else {
      parts.push(scoreList((answer.predictions || []).slice(0, 100).map((p) => [p.class, p.confidence, colourOf(p.class)])));
    }
    el.summary.replaceChildren(...parts);
  }

  function parseServerTiming(header) {
    return (header || "").split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
      const [name, ...params] = entry.split(";").map((s) => s.trim());
      const dur = params.map((p) => p.split("=")).find(([k]) => k === "dur");
      return { name, ms: dur ? parseFloat(dur[1]) : NaN };
    });
  }

  function renderTiming(header, elapsed) {
    const stages = parseServerTiming(header);
    stages.push({ name: "browser round trip", ms: elapsed, client: true });
    const longest = Math.max(...stages.map((s) => (Number.isFinite(s.ms) ? s.ms : 0)), 1e-6);
    el.timing.replaceChildren(...stages.map((s) => {
      const row = node("tr");
      row.dataset.stage = s.name;
      const gauge = node("td", null, "gauge");
      const bar = node("div", null, "bar");
      bar.style.width = `${(Number.isFinite(s.ms) ? s.ms / longest : 0) * 100}%`;
      if (s.client) bar.style.background = "#9aa3b5";
      gauge.append(bar);
      row.append(node("td", s.name), node("td", Number.isFinite(s.ms) ? s.ms.toFixed(2) : "-", "ms"), gauge);
      return row;
    }));
  }

  function clearResult() {
    el.summary.replaceChildren();
    el.timing.replaceChildren();
    el.replica.textContent = "";
    el.json.textContent = "";
    delete el.output.dataset.model;
  }

  // -- wiring ---------------------------------------------------------------------------------
  function showThreshold(input, output) {
    output.textContent = Number(input.value).toFixed(2);
  }

  el.key.value = storedKey();
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(el.key.value.trim());
    loadModels();
  });
  el.keyForget.addEventListener("click", () => {
    el.key.value = "";
    storeKey("");
    loadModels();
  });
  el.model.addEventListener("change", () => { clearResult(); chooseModel(); });
  el.file.addEventListener("change", () => pickFile(el.file.files[0]));
  el.url.addEventListener("input", useUrl);
  el.drop.addEventListener("dragover", (event) => { event.preventDefault(); el.drop.classList.add("over"); });
  el.drop.addEventListener("dragleave", () => el.drop.classList.remove("over"));
  el.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    el.drop.classList.remove("over");
    pickFile(event.dataTransfer.files[0]);
  });
  for (const [input, output] of [[el.confidence, el.confidenceValue], [el.overlap, el.overlapValue]]) {
    showThreshold(input, output);
    input.addEventListener("input", () => showThreshold(input, output));
  }
  el.run.addEventListener("click", run);
  paint(null);
  loadSamples();
  loadModels();
})();

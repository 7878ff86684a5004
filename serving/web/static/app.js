// The web page: send an image (chosen, dropped, pasted, or webcam frames) to this server's
// web/analyze, then show each face boxed on the image with its top emotion, the
// probabilities of every class the model returns, and (when asked, and when the model can)
// the Grad-CAM heatmap of where the network looked. No framework, no build step.
"use strict";

(() => {
  const FRAME_INTERVAL_MS = 350; // webcam: at most about three frames a second
  const RETRY_MS = 1500; // webcam: pause after a failed frame
  const NO_EXPLAIN = "Explanations are not available for this model.";

  const $ = (id) => document.getElementById(id);
  const els = {
    modelStatus: $("model-status"), dropZone: $("drop-zone"), fileInput: $("file-input"),
    webcamStart: $("webcam-start"), webcamStop: $("webcam-stop"), webcamNote: $("webcam-note"),
    detector: $("detector"), explain: $("explain"), explainNote: $("explain-note"),
    results: $("results"), status: $("status"), statusText: $("status-text"),
    statusActions: $("status-actions"), body: $("result-body"), photo: $("photo"),
    video: $("video"), overlay: $("overlay"), summary: $("summary"), faces: $("faces"),
    downloads: $("downloads"), downloadJson: $("download-json"), downloadCsv: $("download-csv"),
  };

  const state = {
    info: null, // what web/model said
    source: null, // the still image: {blob, name}
    whole: false, // classify the whole image as one face
    result: null, // the last answer shown
    resultName: "", // the name of the image it is about
    request: 0, // the latest still-image request; older answers are dropped
    webcam: null, // the running webcam session
    photoUrl: null,
  };

  // --- small helpers ------------------------------------------------------------------------

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const percent = (p) => `${(p * 100).toFixed(1)}%`;
  const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);
  const plural = (n, word, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;

  function megabytes(bytes) {
    return `${(bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0)} MB`;
  }

  function setPageState(name, reason = "") {
    document.body.dataset.state = name;
    if (reason) document.body.dataset.error = reason;
    else delete document.body.dataset.error;
  }

  function showStatus(text, kind = "info", actions = []) {
    els.status.className = `status ${kind}`;
    // live frames repeat the same words a few times a second: say them once
    if (!actions.length && !els.statusActions.children.length &&
        els.statusText.textContent === text) return;
    els.statusText.textContent = text;
    els.statusActions.replaceChildren(...actions.map(({ label, onClick, id }) =>
      el("button", { type: "button", className: "button", id, text: label, onclick: onClick })));
  }

  // --- the model ----------------------------------------------------------------------------

  async function loadInfo() {
    try {
      const response = await fetch("web/model", { cache: "no-store" });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
      state.info = body;
      const version = body.version ? `, version ${body.version}` : "";
      els.modelStatus.textContent = `Model “${body.name}”${version}: ` +
        `${plural(body.classes.length, "class", "classes")} (${body.classes.join(", ")}); explanations ` +
        `${body.explain ? "available" : "not available"}.`;
      els.modelStatus.classList.remove("error-text");
      updateExplainNote();
      return true;
    } catch (error) {
      state.info = null;
      els.modelStatus.textContent = `The model server cannot be reached: ${error.message}`;
      els.modelStatus.classList.add("error-text");
      return false;
    }
  }

  function updateExplainNote() {
    let note = "";
    if (state.info && !state.info.explain) note = NO_EXPLAIN;
    else if (els.explain.checked && state.webcam) {
      note = "Explanations are not computed for live webcam frames; stop the webcam to " +
        "explain the last frame.";
    }
    els.explainNote.textContent = note;
  }

  async function analyze(blob, { whole = false, explain = false } = {}) {
    const params = new URLSearchParams({
      detector: els.detector.value, whole: whole ? "1" : "0", explain: explain ? "1" : "0",
    });
    let response;
    try {
      response = await fetch(`web/analyze?${params}`, {
        method: "POST", body: blob,
        headers: { "Content-Type": blob.type || "application/octet-stream" },
      });
    } catch (error) {
      return { ok: false, reason: "offline",
        error: "This page's server cannot be reached. Is it still running?" };
    }
    const body = await response.json().catch(() => null);
    if (response.ok && body) return { ok: true, result: body };
    return {
      ok: false, status: response.status,
      reason: (body && body.reason) || (response.status === 413 ? "too_large" : "server"),
      error: (body && body.error) || `The server answered ${response.status}.`,
    };
  }

  // --- still images -------------------------------------------------------------------------

  function tooLarge(blob) {
    const limit = state.info && state.info.limits && state.info.limits.max_body_bytes;
    return limit && blob.size > limit ?
      `File too large: ${megabytes(blob.size)}; the limit is ${megabytes(limit)}.` : "";
  }

  function showPhoto(blob) {
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photoUrl = URL.createObjectURL(blob);
    els.video.hidden = true;
    els.photo.hidden = true;
    els.photo.alt = "";
    els.photo.onload = () => { els.photo.hidden = false; };
    els.photo.onerror = () => { els.photo.hidden = true; };
    els.photo.src = state.photoUrl;
  }

  function clearResults() {
    state.result = null;
    els.overlay.replaceChildren();
    els.faces.replaceChildren();
    els.summary.textContent = "";
    els.downloads.hidden = true;
  }

  async function useImage(blob, name) {
    if (!blob) return;
    if (state.webcam) stopWebcam(false);
    state.source = { blob, name: name || "image" };
    state.whole = false;
    clearResults();
    els.body.hidden = false;
    showPhoto(blob);
    const refused = tooLarge(blob);
    if (refused) {
      setPageState("error", "too_large");
      showStatus(refused, "error");
      return;
    }
    await runStill();
  }

  async function runStill() {
    const source = state.source;
    if (!source) return;
    const id = ++state.request;
    setPageState("busy");
    showStatus(state.whole ? "Classifying the whole image" : "Finding faces and asking the model",
      "busy");
    const explain = els.explain.checked;
    const answer = await analyze(source.blob, { whole: state.whole, explain });
    if (id !== state.request || state.webcam) return; // a newer image, or the webcam, took over
    if (!answer.ok) {
      showError(answer);
      return;
    }
    render(answer.result, source.name, false);
  }

  function showError(answer) {
    clearResults();
    setPageState("error", answer.reason);
    const actions = [];
    if (["unreachable", "busy", "offline", "model", "timeout"].includes(answer.reason)) {
      actions.push({ label: "Try again", id: "retry", onClick: () => { loadInfo(); runStill(); } });
    }
    showStatus(capitalize(answer.error), "error", actions);
    if (answer.reason === "unreachable") loadInfo();
  }

  function classifyWhole() {
    state.whole = true;
    runStill();
  }

  // --- results ------------------------------------------------------------------------------

  function render(result, name, live) {
    state.result = result;
    state.resultName = name;
    const { width, height } = result.image;
    const faces = result.faces;
    els.body.hidden = false;
    els.overlay.replaceChildren(...faces.map((face, i) => faceBox(face, i, width, height)));
    els.faces.replaceChildren(...faces.map((face, i) => faceCard(face, i, result, live)));
    els.downloads.hidden = faces.length === 0;
    const how = result.whole_image ? "the whole image, classified as one face" :
      `found by ${result.detector === "haar" ? "the Haar cascade" : "MTCNN"}`;
    els.summary.textContent = `${faces.length ? plural(faces.length, "face") : "No face"}, ${how}, in the ` +
      `${width} × ${height} image.${result.note ? ` ${capitalize(result.note)}.` : ""}`;
    els.photo.alt = faces.length ?
      `The image, with ${plural(faces.length, "face")} boxed: ` +
      faces.map((f, i) => `face ${i + 1} ${f.emotion}`).join(", ") : "The image; no face found";
    if (!faces.length) {
      setPageState("no-face");
      if (live) showStatus("Live: no face in view.", "info");
      else {
        showStatus("No face found in this image.", "info", [{
          label: "Classify the whole image", id: "classify-whole", onClick: classifyWhole,
        }]);
      }
      return;
    }
    setPageState(live ? "live" : "done");
    const tops = faces.map((f) => f.emotion);
    const unavailable = result.explain && result.explain.requested && !result.explain.available;
    showStatus(`${live ? "Live: " : ""}${plural(faces.length, "face")}: ${tops.join(", ")}.` +
      (unavailable ? ` ${NO_EXPLAIN}` : ""), "info");
  }

  function faceBox(face, index, width, height) {
    const { x, y, w, h } = face.box;
    const box = el("div", { className: "face-box", dataset: { face: String(index) } }, [
      el("span", { className: "face-label", text: `${index + 1} ${face.emotion}` }),
    ]);
    box.style.left = `${(100 * x) / width}%`;
    box.style.top = `${(100 * y) / height}%`;
    box.style.width = `${(100 * w) / width}%`;
    box.style.height = `${(100 * h) / height}%`;
    if (y < 0.06 * height) box.classList.add("label-below");
    if (x + w > 0.88 * width) box.classList.add("label-end");
    return box;
  }

  function highlight(index, on) {
    const box = els.overlay.querySelector(`[data-face="${index}"]`);
    const card = els.faces.querySelector(`[data-face="${index}"]`);
    if (box) box.classList.toggle("highlight", on);
    if (card) card.classList.toggle("highlight", on);
  }

  function faceCard(face, index, result, live) {
    const n = index + 1;
    const bars = el("ul", { className: "bars", "aria-label": `Probabilities for face ${n}` },
      Object.entries(face.probabilities).map(([name, p]) => {
        const fill = el("span", { className: "fill" });
        fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
        return el("li", {
          className: name === face.emotion ? "is-top" : "",
          dataset: { class: name, probability: String(p) },
        }, [
          el("span", { className: "name", text: name }),
          el("span", { className: "track", "aria-hidden": "true" }, [fill]),
          el("span", { className: "value", text: percent(p) }),
        ]);
      }));

    const thumb = el("div", { className: "face-thumb" }, [
      el("img", { src: face.crop, alt: `Face ${n} as the model saw it (48 × 48, gray)`,
        width: "96", height: "96" }),
    ]);
    const visual = el("div", { className: "face-visual" }, [thumb]);
    const explain = result.explain || {};
    if (face.heatmap) {
      const heat = el("img", { className: "heatmap", src: face.heatmap, hidden: true,
        alt: `Where the network looked to say “${face.emotion}” (Grad-CAM heatmap)` });
      thumb.append(heat);
      const toggle = el("button", {
        type: "button", className: "button explain-toggle", "aria-pressed": "false",
        text: "Show heatmap",
      });
      toggle.addEventListener("click", () => {
        const on = toggle.getAttribute("aria-pressed") !== "true";
        toggle.setAttribute("aria-pressed", String(on));
        toggle.textContent = on ? "Hide heatmap" : "Show heatmap";
        heat.hidden = !on;
      });
      visual.append(toggle);
    } else if (explain.requested && !explain.available) {
      visual.append(el("p", { className: "muted small explain-unavailable", text: NO_EXPLAIN }));
    } else if (!live && state.info && state.info.explain && !explain.requested) {
      visual.append(el("p", { className: "muted small", text: "Tick “Explain” to see where it looked." }));
    }

    const card = el("li", { className: "face-card", dataset: { face: String(index), emotion: face.emotion } }, [
      el("h3", {}, [`Face ${n}: `, el("span", { className: "top", text: face.emotion }),
        ` ${percent(face.confidence)}`]),
      visual, bars,
    ]);
    card.addEventListener("mouseenter", () => highlight(index, true));
    card.addEventListener("mouseleave", () => highlight(index, false));
    card.addEventListener("focusin", () => highlight(index, true));
    card.addEventListener("focusout", () => highlight(index, false));
    return card;
  }

  // --- downloads ----------------------------------------------------------------------------

  function baseName() {
    return (state.resultName || "image").replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_") || "image";
  }

  function save(text, type, suffix) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const link = el("a", { href: url, download: `${baseName()}-emotions.${suffix}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function exportable() {
    const r = state.result;
    return {
      image: state.resultName, width: r.image.width, height: r.image.height,
      model: r.model, detector: r.detector, whole_image: r.whole_image, classes: r.classes,
      faces: r.faces.map((f, i) => ({
        face: i + 1, box: f.box, score: f.score, emotion: f.emotion, confidence: f.confidence,
        probabilities: f.probabilities,
      })),
    };
  }

  function csvCell(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function toCsv(data) {
    const classes = data.classes && data.classes.length ? data.classes :
      Object.keys((data.faces[0] || {}).probabilities || {});
    const rows = [["image", "face", "x", "y", "w", "h", "detector_score", "emotion",
      "confidence", ...classes]];
    for (const f of data.faces) {
      rows.push([data.image, f.face, f.box.x, f.box.y, f.box.w, f.box.h, f.score, f.emotion,
        f.confidence, ...classes.map((c) => f.probabilities[c])]);
    }
    return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }

  // --- the webcam ---------------------------------------------------------------------------

  async function startWebcam() {
    if (state.webcam) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setPageState("error", "webcam");
      showStatus("The webcam needs a secure page: open it at http://localhost or over https.",
        "error");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
      });
    } catch (error) {
      const why = { NotAllowedError: "permission to use the camera was refused",
        NotFoundError: "no camera was found", NotReadableError: "the camera is in use" };
      setPageState("error", "webcam");
      showStatus(`Cannot start the webcam: ${why[error.name] || error.message}.`, "error");
      return;
    }
    state.request++; // drop any still image's answer still on its way
    const session = { stream, frames: 0, lastBlob: null, lastResult: null };
    state.webcam = session;
    clearResults();
    els.body.hidden = false;
    els.photo.hidden = true;
    els.video.hidden = false;
    els.video.srcObject = stream;
    els.webcamStart.disabled = true;
    els.webcamStop.disabled = false;
    updateExplainNote();
    setPageState("live");
    showStatus("Live: starting the webcam", "busy");
    try {
      await els.video.play();
    } catch (error) {
      // autoplay of a muted video is allowed; a refusal still leaves frames to draw
    }
    webcamLoop(session);
    els.webcamStop.focus();
  }

  async function webcamLoop(session) {
    const canvas = document.createElement("canvas");
    while (state.webcam === session) {
      const started = performance.now();
      let pause = FRAME_INTERVAL_MS;
      if (els.video.videoWidth) {
        canvas.width = els.video.videoWidth;
        canvas.height = els.video.videoHeight;
        canvas.getContext("2d").drawImage(els.video, 0, 0);
        const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
        if (blob && state.webcam === session) {
          const answer = await analyze(blob, { whole: false, explain: false });
          if (state.webcam !== session) break;
          if (answer.ok) {
            session.frames++;
            session.lastBlob = blob;
            session.lastResult = answer.result;
            document.body.dataset.liveFrames = String(session.frames);
            render(answer.result, "webcam-frame.jpg", true);
          } else {
            setPageState("error", answer.reason);
            showStatus(`Live: ${answer.error}`, "error");
            pause = RETRY_MS;
          }
        }
      }
      await sleep(Math.max(0, pause - (performance.now() - started)));
    }
  }

  function stopWebcam(keepFrame = true) {
    const session = state.webcam;
    if (!session) return;
    state.webcam = null;
    for (const track of session.stream.getTracks()) track.stop();
    els.video.srcObject = null;
    els.video.hidden = true;
    els.webcamStart.disabled = false;
    els.webcamStop.disabled = true;
    updateExplainNote();
    if (!keepFrame) return;
    els.webcamStart.focus();
    if (session.lastBlob) {
      // the last frame analysed becomes the still image: its results stay, to read or save
      state.source = { blob: session.lastBlob, name: "webcam-frame.jpg" };
      state.whole = false;
      showPhoto(session.lastBlob);
      render(session.lastResult, "webcam-frame.jpg", false);
      if (els.explain.checked && session.lastResult.faces.length) runStill();
    } else {
      clearResults();
      setPageState("idle");
      showStatus("Webcam stopped before a frame was analysed.", "info");
    }
  }

  // --- wiring -------------------------------------------------------------------------------

  function firstFile(list) {
    const files = Array.from(list || []);
    return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
  }

  els.fileInput.addEventListener("change", () => {
    const file = firstFile(els.fileInput.files);
    els.fileInput.value = ""; // choosing the same file again is a change too
    if (file) useImage(file, file.name);
  });

  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth++;
    els.dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) els.dropZone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    els.dropZone.classList.remove("dragging");
    const file = firstFile(event.dataTransfer && event.dataTransfer.files);
    if (file) useImage(file, file.name);
    else showStatus("Drop an image file (from your files, not from another page).", "error");
  });

  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/")) ||
      items.find((i) => i.kind === "file");
    const file = item && item.getAsFile();
    if (!file) {
      showStatus("The clipboard holds no image to paste.", "error");
      return;
    }
    event.preventDefault();
    useImage(file, file.name && file.name !== "image.png" ? file.name : "pasted-image.png");
  });

  els.webcamStart.addEventListener("click", startWebcam);
  els.webcamStop.addEventListener("click", () => stopWebcam(true));
  els.detector.addEventListener("change", () => { if (state.source && !state.webcam) runStill(); });
  els.explain.addEventListener("change", () => {
    updateExplainNote();
    if (state.source && !state.webcam && state.result) runStill();
  });
  els.downloadJson.addEventListener("click", () => {
    if (state.result) save(JSON.stringify(exportable(), null, 2) + "\n", "application/json", "json");
  });
  els.downloadCsv.addEventListener("click", () => {
    if (state.result) save(toCsv(exportable()), "text/csv", "csv");
  });
  window.addEventListener("pagehide", () => stopWebcam(false));

  loadInfo().then((ok) => {
    if (state.info && state.info.default_detector) els.detector.value = state.info.default_detector;
    document.body.dataset.ready = ok ? "model" : "no-model";
  });
})();

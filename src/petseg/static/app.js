// petseg serve's page: send the chosen photo to POST /predict once per output and show them.
"use strict";

const OUTPUTS = ["mask", "overlay", "cutout"];
let maxUploadBytes = 20 * 1024 * 1024; // replaced by /health's figure
const shownUrls = [];

function $(id) {
  return document.getElementById(id);
}

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function describeModel() {
  try {
    const response = await fetch("/health");
    const health = await response.json();
    maxUploadBytes = health.max_upload_bytes;
    const tta = health.tta ? ", flip TTA" : "";
    $("model").textContent =
      `${health.model_type}, ${health.image_size} px, threshold ` +
      `${health.threshold.toFixed(2)}${tta}, ${health.runs_on}`;
    $("limits").textContent =
      `up to ${(health.max_upload_bytes / 1048576).toFixed(0)} MB and ` +
      `${(health.max_pixels / 1e6).toFixed(0)} megapixels`;
  } catch (error) {
    $("model").textContent = "the server does not answer /health";
  }
}

async function predict(file, output) {
  const response = await fetch(`/predict?output=${output}`, { method: "POST", body: file });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error;
    } catch (ignored) {
      // not JSON: keep the status
    }
    throw new Error(message);
  }
  return response.blob();
}

function show(id, blob, downloadName) {
  const url = URL.createObjectURL(blob);
  shownUrls.push(url);
  $(id).src = url;
  if (downloadName) {
    const link = $(`${id}-link`);
    link.href = url;
    link.download = downloadName;
  }
}

function forget() {
  while (shownUrls.length) URL.revokeObjectURL(shownUrls.pop());
  for (const id of ["photo", ...OUTPUTS]) $(id).removeAttribute("src");
}

async function segment(file) {
  if (!file) return;
  if (file.size > maxUploadBytes) {
    say(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over the server's limit`, true);
    return;
  }
  forget();
  $("results").hidden = true;
  say(`segmenting ${file.name}\u2026`);
  const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
  const start = performance.now();
  try {
    const blobs = await Promise.all(OUTPUTS.map((output) => predict(file, output)));
    const seconds = (performance.now() - start) / 1000;
    show("photo", file, null);
    OUTPUTS.forEach((output, index) => {
      const suffix = output === "mask" ? "" : `_${output}`;
      show(output, blobs[index], `${stem}${suffix}.png`);
    });
    $("results").hidden = false;
    say(`${file.name}: mask, overlay and cut-out in ${seconds.toFixed(2)} s`);
  } catch (error) {
    say(`${file.name}: ${error.message}`, true);
  }
}

function listen() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => segment(event.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    segment(event.dataTransfer.files[0]);
  });
}

describeModel();
listen();

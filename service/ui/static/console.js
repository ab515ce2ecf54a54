// The console's script: the token (sessionStorage), alias moves, private downloads, the predict playground.
"use strict";

const TOKEN_KEY = "reparam.token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function problem(response) {
  try {
    const body = await response.json();
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return response.status + ": " + detail;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

function setupToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  const show = () => { state.textContent = token() ? "token kept for this tab" : "no token kept"; };
  input.value = token();
  show();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    show();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    show();
  });
}

function setupAliasForms() {
  for (const form of document.querySelectorAll(".alias-form")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = form.querySelector(".form-status");
      const model = form.dataset.model;
      const alias = form.elements.alias.value.trim();
      const version = Number(form.elements.version.value);
      status.textContent = "moving " + alias + "…";
      const url = "/models/" + encodeURIComponent(model) + "/aliases/" + encodeURIComponent(alias);
      const response = await fetch(url, {
        method: "PUT",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ version }),
      });
      if (!response.ok) {
        status.textContent = "not moved: " + (await problem(response));
        return;
      }
      const moved = await response.json();
      const before = moved.previous === null ? "new" : "was v" + moved.previous;
      status.textContent = alias + " → v" + moved.version + " (" + before + ")";
      window.location.reload();
    });
  }
}

function setupDownloads() {
  const status = document.getElementById("download-status");
  for (const link of document.querySelectorAll("a[data-needs-token]")) {
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      const response = await fetch(link.href, { headers: authHeaders() });
      if (!response.ok) {
        status.textContent = link.textContent + ": " + (await problem(response));
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = link.textContent;
      save.click();
      URL.revokeObjectURL(url);
      status.textContent = link.textContent + " downloaded";
    });
  }
}

function parseServerTiming(header) {
  // "decode;dur=1.2, backend;dur=3.4, total;dur=5.0" -> [["decode", 1.2], ...]
  return (header || "").split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return [name.trim(), dur ? Number(dur.slice(4)) : NaN];
  }).filter(([name, ms]) => name && !Number.isNaN(ms));
}

function showTiming(header) {
  const box = document.getElementById("timing");
  const parts = parseServerTiming(header);
  const longest = Math.max(...parts.map(([, ms]) => ms), 1e-9);
  box.replaceChildren(...parts.map(([name, ms]) => {
    const row = document.createElement("div");
    row.className = "timing-row";
    row.dataset.part = name;
    row.dataset.ms = String(ms);
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (100 * ms / longest).toFixed(1) + "%";
    track.append(bar);
    const value = document.createElement("span");
    value.className = "num";
    value.textContent = ms.toFixed(2) + " ms";
    row.append(label, track, value);
    return row;
  }));
}

function showPredictions(predictions) {
  const body = document.querySelector("#predictions tbody");
  body.replaceChildren(...predictions.map((p, i) => {
    const row = document.createElement("tr");
    row.dataset.index = String(p.index);
    row.dataset.probability = String(p.probability);
    for (const text of [String(i + 1), p.label ?? "—", String(p.index), (100 * p.probability).toFixed(2) + " %"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
}

function setupPredict() {
  const form = document.getElementById("predict-form");
  if (!form) return;
  const file = document.getElementById("image");
  const drop = document.getElementById("drop");
  const preview = document.getElementById("preview");
  const status = document.getElementById("predict-status");
  const model = document.getElementById("model");
  const version = document.getElementById("version");
  let chosen = null;

  const filterVersions = () => {
    for (const option of version.options) {
      option.hidden = Boolean(option.dataset.model) && option.dataset.model !== model.value;
    }
    if (version.selectedOptions[0] && version.selectedOptions[0].hidden) version.value = "";
  };
  model.addEventListener("change", filterVersions);
  filterVersions();

  const choose = (picked) => {
    if (!picked) return;
    chosen = picked;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(picked);
    preview.alt = "the chosen image, " + picked.name;
    drop.classList.add("has-image");
    status.textContent = picked.name + " chosen";
  };
  file.addEventListener("change", () => choose(file.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chosen) {
      status.textContent = "choose an image first";
      return;
    }
    const query = new URLSearchParams({ top_k: form.elements.top_k.value || "5" });
    if (version.value) query.set("version", version.value);
    status.textContent = "asking " + model.value + "…";
    const response = await fetch("/predict/" + encodeURIComponent(model.value) + "?" + query, {
      method: "POST",
      headers: { "Content-Type": chosen.type || "image/jpeg" },
      body: chosen,
    });
    if (!response.ok) {
      status.textContent = "no prediction: " + (await problem(response));
      return;
    }
    const answer = await response.json();
    showPredictions(answer.predictions[0]);
    showTiming(response.headers.get("Server-Timing"));
    status.textContent = answer.model + " v" + answer.version + " answered";
    form.dataset.answered = answer.model + "/" + answer.version;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupAliasForms();
  setupDownloads();
  setupPredict();
});

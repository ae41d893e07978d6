// The search page: send the chosen or dropped photo to /api/search, show it back with a
// numbered box on each face found, and list each face's matches from the gallery. A face
// the detector missed (or a different one) can be searched with a box drawn on the photo
// (boxtool.js), starting from a detected face's box.
"use strict";

const form = document.getElementById("search-form");
const input = document.getElementById("image-input");
const kInput = document.getElementById("k-input");
const detectorInput = document.getElementById("detector-input");   // absent without an index
const button = document.getElementById("search-button");
const dropzone = document.getElementById("dropzone");
const message = document.getElementById("message");
const results = document.getElementById("results");
const photo = document.getElementById("photo");
const faceBoxes = document.getElementById("face-boxes");
const summary = document.getElementById("summary");
const operatingPoint = document.getElementById("operating-point");
const timings = document.getElementById("timings");
const inView = document.getElementById("in-view");
const facesList = document.getElementById("faces");
const faceTemplate = document.getElementById("face-template");
const matchTemplate = document.getElementById("match-template");
const boxButton = document.getElementById("box-button");
const boxEditor = document.getElementById("box-editor");
const boxInput = document.getElementById("box-input");
const boxSearch = document.getElementById("box-search");
const boxCancel = document.getElementById("box-cancel");

const maxUploadBytes = Number(form.dataset.maxUploadBytes);
// url_for cannot build a URL for an id only known here, so the page carries the one for id 0.
const thumbUrl = (id) => form.dataset.thumbUrl.replace(/0$/, String(id));

let photoUrl = null;
let lastFaces = [];
const boxTool = new BoxTool(document.getElementById("box-layer"), photo, (box) => {
  boxInput.value = box.join(",");
});
// A server started with FACESEARCH_API_KEY wants the key as a bearer token on every search
// and thumbnail: it is asked for once and kept for this tab only.
let apiKey = sessionStorage.getItem("facesearch-api-key");
const authHeaders = () => (apiKey ? { Authorization: `Bearer ${apiKey}` } : {});

async function postSearch(body) {
  let response = await fetch(form.action, { method: "POST", body, headers: authHeaders() });
  if (response.status === 401) {
    const given = window.prompt("This server needs its API key:");
    if (given && given.trim()) {
      apiKey = given.trim();
      sessionStorage.setItem("facesearch-api-key", apiKey);
      response = await fetch(form.action, { method: "POST", body, headers: authHeaders() });
    }
  }
  return response;
}

// An <img> cannot send the key, so with one the thumbnail is fetched and shown from a blob.
async function showThumb(img, id) {
  if (!apiKey) {
    img.src = thumbUrl(id);
    return;
  }
  const response = await fetch(thumbUrl(id), { headers: authHeaders() }).catch(() => null);
  if (!response || !response.ok) return;
  const url = URL.createObjectURL(await response.blob());
  img.onload = () => URL.revokeObjectURL(url);
  img.src = url;
}

function showMessage(text, isError) {
  message.textContent = text;
  message.classList.toggle("is-error", Boolean(isError));
  message.hidden = false;
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

function showPhoto(file) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  // Resolves even when the browser cannot display the format: the matches still show.
  const loaded = new Promise((resolve) => {
    photo.onload = () => {
      photo.parentElement.style.setProperty("--aspect", photo.naturalWidth / photo.naturalHeight);
      resolve();
    };
    photo.onerror = resolve;
  });
  photo.src = photoUrl;
  return loaded;
}

// Search the photo: every face the detector finds, or only the face in `box` (photo pixels).
async function search(file, box) {
  if (!file) return;
  if (!box) results.hidden = true;   // a box search keeps the photo on screen
  if (file.size > maxUploadBytes) {
    showMessage(`That file is ${megabytes(file.size)}; the limit is ${megabytes(maxUploadBytes)}.`, true);
    return;
  }
  const body = new FormData();
  body.append("image", file);
  body.append("k", kInput.value);
  if (box) body.append("box", box.join(","));
  if (detectorInput && detectorInput.value) body.append("detector", detectorInput.value);
  const photoLoaded = box ? Promise.resolve() : showPhoto(file);
  showMessage("Searching…", false);
  button.disabled = true;
  let response;
  let payload = null;
  try {
    response = await postSearch(body);
    payload = await response.json().catch(() => null);
  } catch (error) {
    showMessage("The server could not be reached. Try again in a moment.", true);
    return;
  } finally {
    button.disabled = false;
  }
  if (!response.ok || payload === null) {
    const reason = (payload && payload.error) || `the server answered HTTP ${response.status}`;
    showMessage(`Could not search ${file.name || "this photo"}: ${reason}.`, true);
    return;
  }
  await photoLoaded;
  showResults(payload);
}

function showResults(payload) {
  const faces = payload.faces || [];
  message.hidden = true;
  faceBoxes.replaceChildren();
  facesList.replaceChildren();
  operatingPoint.hidden = true;
  timings.textContent = describeTimings(payload.timings_ms);
  timings.hidden = !timings.textContent;
  inView.hidden = true;
  results.classList.remove("is-compact");
  results.hidden = false;
  stopBox();
  lastFaces = faces;
  if (faces.length === 0) {
    // The server's message says what was looked for; a box is the way on.
    const kinds = (payload.models || []).map((part) => part.species);
    const looked = kinds.length > 1 ? `No ${kinds.join(" or ")} face found in this photo.`
      : payload.species === "dog" ? "No dog face found in this photo." : "No face found in this photo.";
    summary.textContent = `${looked} If there is one, draw a box around it and search again.`;
    summary.classList.add("is-error");
    return;
  }
  summary.classList.remove("is-error");
  const counted = faces.length === 1 ? "1 face" : `${faces.length} faces`;
  summary.textContent = faces[0].found_by === "box" ? `${counted} in your box.` : `${counted} found.`;
  operatingPoint.textContent = describeDecision(payload);
  operatingPoint.hidden = false;
  faces.forEach((face, index) => {
    const number = index + 1;
    const matched = face.matches.some((match) => match.match);
    if (face.box) drawBox(face.box, number, matched);
    const part = partOf(payload, face);
    facesList.append(faceItem(face, number, matched, part.species, part.detector, (payload.models || []).length > 1));
  });
  bringIntoView();
}

// How long the server took: its own timings, in words (the API's timings_ms).
function describeTimings(parts) {
  if (!parts) return "";
  const names = { detect: "finding faces", embed: "embedding", search: "searching" };
  const shown = Object.keys(names).filter((key) => typeof parts[key] === "number");
  if (shown.length === 0) return "";
  const total = shown.reduce((sum, key) => sum + parts[key], 0);
  const ms = (value) => (value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`);
  return `Searched in ${ms(total)} (` + shown.map((key) => `${names[key]} ${ms(parts[key])}`).join(", ") + ").";
}

// On a phone, once the faces scroll under the pinned photo, the photo shrinks to itself and
// one line saying which face's matches are in view; that face's box is marked on the photo.
const phone = window.matchMedia("(max-width: 47.99rem)");
function followFaces() {
  const faces = [...facesList.children];
  if (results.hidden || faces.length === 0) return;
  const compact = phone.matches && boxEditor.hidden &&
    facesList.getBoundingClientRect().top < photo.closest(".photo").getBoundingClientRect().bottom;
  results.classList.toggle("is-compact", compact);
  const pinnedBottom = phone.matches ? photo.closest(".photo").getBoundingClientRect().bottom : 0;
  const current = faces.findIndex((face) => face.getBoundingClientRect().bottom > pinnedBottom + 40);
  const number = current === -1 ? faces.length : current + 1;
  faceBoxes.querySelectorAll(".face-box").forEach((box) => {
    box.classList.toggle("is-current", compact && box.getAttribute("href") === `#face-${number}`);
  });
  inView.hidden = !compact;
  inView.textContent = compact ? `Face ${number} of ${faces.length}: its matches are below.` : "";
}
window.addEventListener("scroll", followFaces, { passive: true });
window.addEventListener("resize", followFaces);

// On a phone the form fills the first screen: when the first face's section starts low in
// the window, bring the results up to its top (the photo then stays there, sticky, above
// the faces; see style.css).
function bringIntoView() {
  const first = facesList.firstElementChild || results;
  if (first.getBoundingClientRect().top > window.innerHeight * 0.6) {
    results.scrollIntoView({ block: "start" });
  }
  followFaces();
}

// Boxes are in the photo's pixels; percentages keep them in place at any displayed size.
function drawBox([x0, y0, x1, y1], number, matched) {
  const width = photo.naturalWidth;
  const height = photo.naturalHeight;
  if (!width || !height) return;
  const box = document.createElement("a");
  box.href = `#face-${number}`;
  box.className = matched ? "face-box is-match" : "face-box";
  box.setAttribute("aria-label", `Face ${number}`);
  const label = document.createElement("span");
  label.textContent = String(number);
  box.append(label);
  box.style.left = `${(100 * x0) / width}%`;
  box.style.top = `${(100 * y0) / height}%`;
  box.style.width = `${(100 * (x1 - x0)) / width}%`;
  box.style.height = `${(100 * (y1 - y0)) / height}%`;
  faceBoxes.append(box);
}

// The model that answered a face: in an index of several models each face names its
// species, and the answer's "models" says that species' model, detector and rule.
function partOf(payload, face) {
  return (payload.models || []).find((part) => part.species === face.species) || payload;
}

function faceItem(face, number, matched, speciesName, detector, several) {
  const item = faceTemplate.content.firstElementChild.cloneNode(true);
  item.id = `face-${number}`;
  item.querySelector(".face-number").textContent = String(number);
  item.classList.toggle("is-match", matched);
  const found = face.found_by === "detector" ? `Found by the face detector (${detector}).` : FOUND_BY[face.found_by] || "";
  item.querySelector(".found-by").textContent =
    several ? `A ${speciesWords(speciesName)[0]}'s face. ${found}` : found;
  if (face.box) {
    // This face's box as the start of a drawn one: move or resize it, then search it.
    const adjust = item.querySelector(".adjust-box");
    adjust.hidden = false;
    adjust.addEventListener("click", () => {
      startBox(face.box);
      photo.scrollIntoView({ block: "nearest" });
    });
  }
  drawCrop(item.querySelector(".face-crop"), face.box, number);
  const verdict = item.querySelector(".verdict");
  // The server's answer for the face (the same as `search identify`): the nearest gallery
  // face when it is a match; the nearest others are shown for reference.
  const best = face.matches[0];
  if (best && best.match) {
    verdict.textContent = `Best match: ${identityOf(best)} (${STRENGTH[best.strength] || "match"}, ` +
      `distance ${best.distance.toFixed(3)}).`;
    verdict.classList.add("is-match");
  } else if (best) {
    verdict.textContent = `No match: the nearest faces below are probably other ${speciesWords(speciesName)[1]}.`;
  } else {
    verdict.textContent = "No match: the gallery is empty.";
  }
  const grid = item.querySelector(".matches");
  for (const match of face.matches) grid.append(matchItem(match));
  return item;
}

// The face as the search saw it: its box cut from the photo (the whole photo when box is null).
function drawCrop(canvas, box, number) {
  const [x0, y0, x1, y1] = box || [0, 0, photo.naturalWidth, photo.naturalHeight];
  if (!photo.naturalWidth || x1 <= x0 || y1 <= y0) {
    canvas.hidden = true;    // a format this browser cannot show
    return;
  }
  const scale = canvas.width / Math.max(x1 - x0, y1 - y0);
  canvas.width = Math.round((x1 - x0) * scale);
  canvas.height = Math.round((y1 - y0) * scale);
  canvas.getContext("2d").drawImage(photo, x0, y0, x1 - x0, y1 - y0, 0, 0, canvas.width, canvas.height);
  canvas.setAttribute("aria-label", `Face ${number} as found in your photo`);
}

const FOUND_BY = {
  box: "The box you drew.",
  "whole image": "The whole photo, taken as the face.",
};

// The box tool: on, starting from `box`, else the first face found, else the middle of the photo.
function startBox(box) {
  const first = lastFaces.find((face) => face.box);
  boxTool.start(box || (first ? first.box : null));
  boxEditor.hidden = false;
  boxButton.hidden = true;
  followFaces();      // the pinned photo shows its box controls again while a box is drawn
}

function stopBox() {
  boxTool.stop();
  boxEditor.hidden = true;
  boxButton.hidden = false;
}

// The typed box, when it is four numbers; the drawing follows it.
function typedBox() {
  const numbers = boxInput.value.split(",").map((part) => Number(part.trim()));
  if (numbers.length !== 4 || numbers.some((n) => !Number.isFinite(n))) return null;
  return numbers;
}

boxButton.addEventListener("click", () => startBox());
boxCancel.addEventListener("click", stopBox);
boxInput.addEventListener("change", () => {
  const box = typedBox();
  if (box) boxTool.set(box);
});
boxSearch.addEventListener("click", () => {
  const box = typedBox() || boxTool.box;
  search(input.files[0], box);
});

function matchItem(match) {
  const item = matchTemplate.content.firstElementChild.cloneNode(true);
  const identity = identityOf(match);
  item.classList.toggle("is-match", match.match);
  showThumb(item.querySelector(".thumb"), match.id);
  item.querySelector(".thumb").alt = identity;
  item.querySelector(".identity").textContent = identity;
  if (match.individual) {
    // The individual this gallery face belongs to (People & pets), once the gallery is grouped.
    const link = item.querySelector(".individual-link");
    link.href = form.dataset.individualUrl.replace(/0$/, String(match.individual));
    link.hidden = false;
  }
  item.querySelector(".similarity").textContent = `similarity ${match.similarity.toFixed(2)}`;
  item.querySelector(".distance").textContent = `distance ${match.distance.toFixed(3)}`;
  item.querySelector(".badge").textContent = match.match ? `✓ ${STRENGTH[match.strength] || "match"}` : "not a match";
  return item;
}

// A match's strength in words (the server's `strength`: the share of strangers' searches
// that come as near, against the share the gallery's rule allows).
const STRENGTH = { confident: "confident match", possible: "possible match" };

// What `match` means: the distance threshold and the promise behind it at this gallery's size
// (in an index of several models, each kind's own rule).
function describeDecision(payload) {
  const parts = payload.models || [];
  if (parts.length > 1) {
    return parts.map((part) => {
      const many = speciesWords(part.species)[1];
      return `${many[0].toUpperCase()}${many.slice(1)}: ${describeOneDecision(part)}`;
    }).join(" ");
  }
  return describeOneDecision(payload);
}

function describeOneDecision(payload) {
  const decision = payload.decision;
  const percent = (rate) => `${+(100 * rate).toPrecision(2)}%`;
  const [one, many] = speciesWords(payload.species);
  const rule = `A match is a gallery face within distance ${decision.threshold.toFixed(3)}`;
  if (decision.rule === "fpir") {
    return `${rule}: in this gallery of ${decision.individuals} ${many}, at most ${percent(decision.fpir)} ` +
      `of searches for a ${one} who is not in it show any match. A confident match is within ` +
      `${decision.confident_within.toFixed(3)}.`;
  }
  const point = decision.operating_point;
  let said = `${rule} (${point.name} operating point`;
  if (point.far !== null) said += `: ${percent(point.far)} of held-out stranger pairs passed`;
  said += ")";
  if (decision.fpir !== null) said += `; here about ${percent(decision.fpir)} of strangers' searches show a match`;
  return `${said}.`;
}

// What the index holds, in words: [one, many] (the server's list, carried by the page).
function speciesWords(name) {
  const words = JSON.parse(form.dataset.speciesWords);
  return words[name] || words.other;
}

function identityOf(match) {
  if (match.identity) return match.identity.replaceAll("_", " ");
  return `unnamed (${match.path.split("/").pop()})`;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search(input.files[0]);
});

input.addEventListener("change", () => search(input.files[0]));

dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropzone.classList.add("is-dragging");
});
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("is-dragging"));
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropzone.classList.remove("is-dragging");
  if (event.dataTransfer.files.length === 0) return;
  input.files = event.dataTransfer.files;
  search(input.files[0]);
});
// A photo dropped beside the drop zone must not make the browser navigate away to it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

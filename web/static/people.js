// The "People & pets" pages: the individuals as a grid of cover faces (merge those ticked),
// and one individual's faces with their photos (rename, move a face out, forget). All data
// comes from /api/individuals and is put on the page as text, never as HTML.
"use strict";

// A server started with FACESEARCH_API_KEY wants the key on every request: asked once per
// tab and shared with the search page (the same sessionStorage entry).
let apiKey = sessionStorage.getItem("facesearch-api-key");
const authHeaders = () => (apiKey ? { Authorization: `Bearer ${apiKey}` } : {});

async function call(url, method = "GET", body = undefined) {
  const send = () => fetch(url, {
    method,
    headers: { ...authHeaders(), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let response = await send();
  if (response.status === 401) {
    const given = window.prompt("This server needs its API key:");
    if (given && given.trim()) {
      apiKey = given.trim();
      sessionStorage.setItem("facesearch-api-key", apiKey);
      response = await send();
    }
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((payload && payload.error) || `the server answered HTTP ${response.status}`);
  }
  return payload;
}

// url_for cannot build a URL for an id only known here, so the page carries the one for id 0.
const withId = (template, id) => template.replace(/0$/, String(id));

// An <img> cannot send the key, so with one the picture is fetched and shown from a blob.
async function showImage(img, url, link) {
  if (!apiKey) {
    img.src = url;
    if (link) link.href = url;
    return;
  }
  const response = await fetch(url, { headers: authHeaders() }).catch(() => null);
  if (!response || !response.ok) return;
  const blob = URL.createObjectURL(await response.blob());
  img.src = blob;
  if (link) link.href = blob;
}

const message = document.getElementById("people-message");
function showMessage(text, isError) {
  message.textContent = text;
  message.classList.toggle("is-error", Boolean(isError));
  message.hidden = false;
}

function speciesWord(root, species) {
  const words = JSON.parse(root.dataset.speciesWords);
  return (words[species] || words.other)[0];
}

function describe(root, individual) {
  const photos = individual.photos === 1 ? "1 photo" : `${individual.photos} photos`;
  return `${speciesWord(root, individual.species)} · ${photos}`;
}

// --- the grid -------------------------------------------------------------------------------

function peoplePage(root) {
  const list = document.getElementById("individuals");
  const template = document.getElementById("individual-template");
  const mergeButton = document.getElementById("merge-button");
  const filter = document.getElementById("species-filter");
  const previous = document.getElementById("previous-page");
  const next = document.getElementById("next-page");
  const pageInfo = document.getElementById("page-info");
  const params = new URLSearchParams(location.search);
  let offset = Number(params.get("offset")) || 0;
  filter.value = params.get("species") || "";
  const selected = new Map();    // id -> species

  function updateMerge() {
    const species = new Set(selected.values());
    mergeButton.disabled = selected.size < 2 || species.size > 1;
    mergeButton.title = species.size > 1 ? "Only individuals of one species can be merged" : "";
  }

  async function load() {
    const query = new URLSearchParams({ offset: String(offset) });
    if (filter.value) query.set("species", filter.value);
    let answer;
    try {
      answer = await call(`${root.dataset.api}?${query}`);
    } catch (error) {
      showMessage(`Could not load the individuals: ${error.message}.`, true);
      return;
    }
    selected.clear();
    updateMerge();
    list.replaceChildren();
    if (answer.total === 0) {
      showMessage("No individuals yet: the operator runs `indexer cluster` to group the gallery's faces.", false);
    }
    for (const individual of answer.individuals) {
      const item = template.content.firstElementChild.cloneNode(true);
      item.dataset.id = String(individual.id);
      const link = item.querySelector(".open");
      link.href = withId(root.dataset.pageUrl, individual.id);
      const name = individual.name || "unnamed";
      item.querySelector(".name").textContent = name;
      item.querySelector(".name").classList.toggle("is-unnamed", !individual.name);
      item.querySelector(".thumb").alt = name;
      showImage(item.querySelector(".thumb"), withId(root.dataset.thumbUrl, individual.cover));
      item.querySelector(".details").textContent = describe(root, individual);
      item.querySelector(".select").addEventListener("change", (event) => {
        if (event.target.checked) selected.set(individual.id, individual.species);
        else selected.delete(individual.id);
        updateMerge();
      });
      list.append(item);
    }
    const last = Math.min(answer.total, offset + answer.individuals.length);
    pageInfo.textContent = answer.total ? `${offset + 1}–${last} of ${answer.total}` : "";
    previous.hidden = offset === 0;
    next.hidden = last >= answer.total;
    next.onclick = () => { offset += answer.limit; load(); };
    previous.onclick = () => { offset = Math.max(0, offset - answer.limit); load(); };
  }

  filter.addEventListener("change", () => { offset = 0; load(); });
  mergeButton.addEventListener("click", async () => {
    const ids = [...selected.keys()];
    try {
      const merged = await call(`${root.dataset.api}/merge`, "POST", { ids });
      showMessage(`Merged ${ids.length} into ${merged.name || "unnamed"} (${merged.photos} photos).`, false);
    } catch (error) {
      showMessage(`Could not merge: ${error.message}.`, true);
    }
    load();
  });
  load();
}

// --- one individual -------------------------------------------------------------------------

function individualPage(root) {
  const id = Number(root.dataset.id);
  const heading = document.getElementById("individual-name");
  const details = document.getElementById("individual-details");
  const nameInput = document.getElementById("name-input");
  const faces = document.getElementById("individual-faces");
  const template = document.getElementById("face-card-template");

  function show(individual) {
    heading.textContent = individual.name || "unnamed";
    heading.classList.toggle("is-unnamed", !individual.name);
    details.textContent = describe(root, individual) +
      (individual.faces !== individual.photos ? ` · ${individual.faces} faces` : "");
    if (document.activeElement !== nameInput) nameInput.value = individual.name || "";
  }

  async function load() {
    let individual;
    try {
      individual = await call(root.dataset.api);
    } catch (error) {
      showMessage(`Could not load individual ${id}: ${error.message}.`, true);
      document.getElementById("rename-form").hidden = true;
      return;
    }
    show(individual);
    faces.replaceChildren();
    for (const face of individual.faces_list) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.dataset.face = String(face.id);
      const label = face.identity ? `${face.path} (folder ${face.identity})` : face.path;
      card.querySelector(".path").textContent = label;
      card.querySelector(".thumb").alt = `face ${face.id}`;
      card.querySelector(".whole").alt = `the photo of face ${face.id}`;
      showImage(card.querySelector(".thumb"), withId(root.dataset.thumbUrl, face.id));
      showImage(card.querySelector(".whole"), withId(root.dataset.photoUrl, face.id), card.querySelector(".photo-link"));
      const moveOut = card.querySelector(".move-out");
      moveOut.hidden = individual.faces_list.length < 2;
      moveOut.addEventListener("click", async () => {
        try {
          const created = await call(`${root.dataset.api}/split`, "POST", { faces: [face.id] });
          showMessage(`Moved face ${face.id} out, into a new individual (${created.id}).`, false);
        } catch (error) {
          showMessage(`Could not move the face out: ${error.message}.`, true);
        }
        load();
      });
      faces.append(card);
    }
  }

  document.getElementById("rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const typed = nameInput.value.trim();
    try {
      show(await call(root.dataset.api, "POST", { name: typed || null }));
      nameInput.blur();
      showMessage(typed ? "Name saved." : "Name removed.", false);
    } catch (error) {
      showMessage(`Could not save the name: ${error.message}.`, true);
    }
  });

  document.getElementById("forget-button").addEventListener("click", async () => {
    const what = heading.textContent;
    if (!window.confirm(`Forget ${what}? Their faces leave the search index for good (the photos stay on disk).`)) {
      return;
    }
    try {
      const done = await call(root.dataset.api, "DELETE");
      showMessage(`Forgotten: ${done.faces_removed} faces removed from the index.`, false);
      document.getElementById("rename-form").hidden = true;
      faces.replaceChildren();
    } catch (error) {
      showMessage(`Could not forget: ${error.message}.`, true);
    }
  });
  load();
}

const grid = document.getElementById("people");
if (grid) peoplePage(grid);
const one = document.getElementById("individual");
if (one) individualPage(one);

// The box tool: a face box the user draws, moves or resizes on the photo, in the photo's own
// pixels, before searching it. search.js starts it on a detected face (or, when none was
// found, on the middle of the photo) and sends its box with the next search.
//
// Its layer covers the photo only while the tool is on (hidden otherwise), so the numbered
// face boxes under it stay clickable the rest of the time.
"use strict";

// eslint-disable-next-line no-unused-vars
class BoxTool {
  // layer: the element over the photo that takes the pointer; photo: the <img>;
  // onChange(box): called with [x0, y0, x1, y1] whenever the box changes.
  constructor(layer, photo, onChange) {
    this.layer = layer;
    this.photo = photo;
    this.onChange = onChange;
    this.box = null;
    this.drag = null;
    this.outline = document.createElement("div");
    this.outline.className = "drawn-box";
    this.handle = document.createElement("span");
    this.handle.className = "drawn-box-handle";
    this.handle.title = "Drag to resize";
    this.outline.append(this.handle);
    layer.append(this.outline);
    layer.addEventListener("pointerdown", (event) => this.down(event));
    layer.addEventListener("pointermove", (event) => this.move(event));
    layer.addEventListener("pointerup", (event) => this.up(event));
    layer.addEventListener("pointercancel", (event) => this.up(event));
  }

  get active() {
    return !this.layer.hidden;
  }

  // Turn the tool on with a starting box (photo pixels), or the middle half of the photo.
  start(box) {
    const width = this.photo.naturalWidth;
    const height = this.photo.naturalHeight;
    this.layer.hidden = false;
    this.set(box || [width / 4, height / 4, (3 * width) / 4, (3 * height) / 4]);
  }

  stop() {
    this.layer.hidden = true;
    this.drag = null;
  }

  // Any box, kept inside the photo, at least 8 pixels a side, in whole pixels.
  set([x0, y0, x1, y1]) {
    const width = this.photo.naturalWidth;
    const height = this.photo.naturalHeight;
    const clamp = (value, low, high) => Math.min(Math.max(value, low), high);
    const left = clamp(Math.round(Math.min(x0, x1)), 0, width - 8);
    const top = clamp(Math.round(Math.min(y0, y1)), 0, height - 8);
    const right = clamp(Math.round(Math.max(x0, x1)), left + 8, width);
    const bottom = clamp(Math.round(Math.max(y0, y1)), top + 8, height);
    this.box = [left, top, right, bottom];
    // Percentages keep the outline on the face at any displayed size of the photo.
    Object.assign(this.outline.style, {
      left: `${(100 * left) / width}%`,
      top: `${(100 * top) / height}%`,
      width: `${(100 * (right - left)) / width}%`,
      height: `${(100 * (bottom - top)) / height}%`,
    });
    this.onChange(this.box);
  }

  // A pointer event's place in the photo's pixels.
  at(event) {
    const rect = this.layer.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) / rect.width) * this.photo.naturalWidth,
      ((event.clientY - rect.top) / rect.height) * this.photo.naturalHeight,
    ];
  }

  // On the handle: resize; inside the box: move it; elsewhere: draw a new one from here.
  down(event) {
    event.preventDefault();
    this.layer.setPointerCapture(event.pointerId);
    const [x, y] = this.at(event);
    const [x0, y0, x1, y1] = this.box;
    if (event.target === this.handle) {
      this.drag = { mode: "resize", anchor: [x0, y0] };
    } else if (x >= x0 && x <= x1 && y >= y0 && y <= y1) {
      this.drag = { mode: "move", from: [x, y], box: this.box };
    } else {
      this.drag = { mode: "draw", anchor: [x, y] };
      this.set([x, y, x + 8, y + 8]);
    }
  }

  move(event) {
    if (!this.drag) return;
    const [x, y] = this.at(event);
    const drag = this.drag;
    if (drag.mode === "move") {
      const [x0, y0, x1, y1] = drag.box;
      const width = this.photo.naturalWidth;
      const height = this.photo.naturalHeight;
      // The whole box moves, stopping at the photo's edges without changing size.
      const dx = Math.min(Math.max(x - drag.from[0], -x0), width - x1);
      const dy = Math.min(Math.max(y - drag.from[1], -y0), height - y1);
      this.set([x0 + dx, y0 + dy, x1 + dx, y1 + dy]);
    } else {
      this.set([drag.anchor[0], drag.anchor[1], x, y]);
    }
  }

  up(event) {
    if (!this.drag) return;
    this.move(event);
    this.drag = null;
  }
}

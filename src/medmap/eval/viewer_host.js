// medmap report viewer: hosts ipyniivue's NiiVue widget (an anywidget front-end module) in a
// static page. anywidget modules talk to their host only through a small model interface
// (get / set / on / off / save_changes / send and a widget_manager that resolves child models);
// this file implements that interface over the JSON the report embeds, so the page needs no
// Jupyter kernel and no network. Controls: case, sequence, view plane, slice, CAM opacity, mask.
(function () {
  "use strict";
  var body = document.body;
  var errors = [];
  function note(msg) {
    errors.push(String(msg));
    body.setAttribute("data-console-errors", String(errors.length));
    var box = document.getElementById("nv-status");
    if (box) { box.textContent = "viewer error: " + msg; }
  }
  body.setAttribute("data-console-errors", "0");
  window.addEventListener("error", function (e) { note(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { note(e.reason); });
  var origError = console.error;
  console.error = function () {
    note(Array.prototype.map.call(arguments, String).join(" "));
    origError.apply(console, arguments);
  };

  function dataView(b64) {
    var s = atob(b64), u = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) { u[i] = s.charCodeAt(i); }
    return new DataView(u.buffer);
  }

  function Model(state, manager) {
    this.state = Object.assign({}, state);
    this.handlers = {};
    this.widget_manager = manager;
  }
  Model.prototype.get = function (k) { return this.state[k]; };
  Model.prototype.set = function (k, v) {
    var old = this.state[k];
    this.state[k] = v;
    if (old !== v) { this.emit("change:" + k, this, v); }
  };
  Model.prototype.on = function (e, cb) { (this.handlers[e] = this.handlers[e] || []).push(cb); };
  Model.prototype.off = function (e, cb) {
    if (!e) { this.handlers = {}; } else if (!cb) { delete this.handlers[e]; }
    else { this.handlers[e] = (this.handlers[e] || []).filter(function (f) { return f !== cb; }); }
  };
  Model.prototype.save_changes = function () {};
  Model.prototype.send = function () {};
  Model.prototype.send_sync_message = function () { return 0; };
  Model.prototype.emit = function (e) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this.handlers[e] || []).slice().forEach(function (cb) { cb.apply(null, args); });
  };

  var src = document.getElementById("nv-data");
  var widget = window.medmapNiivueWidget;
  if (!src) { return; }
  if (!widget) { note("the NiiVue bundle did not load"); return; }
  document.getElementById("nv-ui").hidden = false;
  document.getElementById("nv-fallback").style.display = "none";
  var doc = JSON.parse(src.textContent);
  var models = {};
  var manager = { get_model: function (id) { return Promise.resolve(models[id]); } };
  var root = new Model(doc.widget, manager);
  models.root = root;
  root.state.this_model_id = "root";
  root.state.volumes = [];
  var serial = 0;
  var el = document.getElementById("nv-canvas");
  var ui = {
    kase: document.getElementById("nv-case"), seq: document.getElementById("nv-seq"),
    plane: document.getElementById("nv-plane"), slice: document.getElementById("nv-slice"),
    opacity: document.getElementById("nv-opacity"), mask: document.getElementById("nv-mask"),
    caption: document.getElementById("nv-caption")
  };
  var camModel = null, maskModel = null;

  function volumeModel(v, extra) {
    var id = "v" + (serial++);
    var st = Object.assign({}, doc.volume_state, v.state, extra || {});
    st.id = id + "_py";     // ids like the Python side's, so the widget keeps them
    st.data = dataView(v.data);
    models[id] = new Model(st, manager);
    return "IPY_MODEL_" + id;
  }

  function redraw() { root.emit("msg:custom", { type: "draw_scene", data: [] }, []); }

  function sliceAxis() { return { "0": 2, "1": 1, "2": 0 }[ui.plane.value]; }

  function setSlice() {
    var axis = sliceAxis();
    if (axis === undefined) { ui.slice.disabled = true; redraw(); return; }
    ui.slice.disabled = false;
    var pos = (root.get("scene") || {}).crosshairPos || [0.5, 0.5, 0.5];
    pos = [pos[0], pos[1], pos[2]];
    pos[axis] = parseFloat(ui.slice.value);
    root.set("scene", Object.assign({}, root.get("scene"), { crosshairPos: pos }));
    redraw();
  }

  function show() {
    var c = doc.cases[parseInt(ui.kase.value, 10)];
    var s = c.sequences[parseInt(ui.seq.value, 10)] || c.sequences[0];
    var refs = [volumeModel(s.image)];
    var camRef = volumeModel(s.cam, { opacity: parseFloat(ui.opacity.value) });
    camModel = models[camRef.slice(10)];
    refs.push(camRef);
    maskModel = null;
    if (c.mask) {
      var maskRef = volumeModel(c.mask, { opacity: ui.mask.checked ? 0.25 : 0.0 });
      maskModel = models[maskRef.slice(10)];
      refs.push(maskRef);
    }
    ui.caption.textContent = c.caption + " \u00b7 " + s.modality;
    root.set("volumes", refs);
    var pos = c.focus.slice();
    var axis = sliceAxis();
    if (axis !== undefined) { ui.slice.value = String(pos[axis]); }
    root.set("scene", Object.assign({}, root.get("scene"), { crosshairPos: pos }));
    redraw();
  }

  function fillSequences() {
    var c = doc.cases[parseInt(ui.kase.value, 10)];
    var keep = ui.seq.options.length ? ui.seq.options[ui.seq.selectedIndex].text : null;
    ui.seq.innerHTML = "";
    c.sequences.forEach(function (s, i) {
      var o = document.createElement("option");
      o.value = String(i); o.text = s.modality;
      if (s.modality === keep) { o.selected = true; }
      ui.seq.appendChild(o);
    });
  }

  function plane() {
    var opts = Object.assign({}, root.get("opts"), { sliceType: parseInt(ui.plane.value, 10) });
    root.set("opts", opts);
    setSlice();
  }

  ui.kase.addEventListener("change", function () { fillSequences(); show(); });
  ui.seq.addEventListener("change", show);
  ui.plane.addEventListener("change", plane);
  ui.slice.addEventListener("input", setSlice);
  ui.opacity.addEventListener("input", function () {
    if (camModel) { camModel.set("opacity", parseFloat(ui.opacity.value)); redraw(); }
  });
  ui.mask.addEventListener("change", function () {
    if (maskModel) { maskModel.set("opacity", ui.mask.checked ? 0.25 : 0.0); redraw(); }
  });

  // non-background pixels of the canvas right after a draw (a headless test reads this)
  function countPixels() {
    var canvas = el.querySelector("canvas");
    var gl = canvas && canvas.getContext("webgl2");
    if (!gl) { return -1; }
    redraw();
    var w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
    var px = new Uint8Array(w * h * 4);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
    var n = 0;
    for (var i = 0; i < px.length; i += 4) { if (px[i] + px[i + 1] + px[i + 2] > 30) { n++; } }
    return n;
  }

  (async function () {
    await widget.initialize({ model: root, experimental: {} });
    fillSequences();
    await widget.render({ model: root, el: el, experimental: {} });
    show();
    plane();
    // volumes load asynchronously; report readiness once the first case is on the canvas
    for (var t = 0; t < 100; t++) {
      var n = countPixels();
      if (n > 0) { body.setAttribute("data-viewer-pixels", String(n)); break; }
      await new Promise(function (r) { setTimeout(r, 100); });
    }
    body.setAttribute("data-viewer", "ready");
    document.getElementById("nv-status").textContent = "";
  })().catch(function (e) { note(e && e.stack ? e.stack : e); });
})();

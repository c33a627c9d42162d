// wsi-mil slide viewer: an OpenSeadragon deep-zoom view of the slide with the patch layers drawn on a
// canvas above it. Everything comes from scripts loaded before this one (no fetch/XHR, so the page
// works from file://): window.WSI_MIL_PYRAMID (pyramid.js: the tile geometry) and window.WSI_MIL_SLIDE
// (the slide's patches, layers, tissue and top patches; pipeline/viewer/pages.py).
(function () {
  "use strict";
  var P = window.WSI_MIL_PYRAMID;
  var D = window.WSI_MIL_SLIDE;
  var state = {
    layer: D.layers.length ? 0 : -1, // index into D.layers, -1: none
    opacity: 0.6,
    tissue: true,
    grid: false,
    focus: -1, // patch index highlighted from the top-k list
    loaded: [], // [level, url] of every tile drawn (the browser test reads it)
    failed: [],
  };
  window.wsiMil = { state: state, data: D, pyramid: P };

  var tileBase = D.pyramid + "/" + P.tiles + "/";
  var viewer = OpenSeadragon({
    id: "osd",
    prefixUrl: "lib/images/",
    drawer: "canvas", // the WebGL drawer cannot use images loaded from file:// (tainted)
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    tileSources: {
      width: P.width,
      height: P.height,
      tileSize: P.tile_size,
      tileOverlap: P.overlap,
      minLevel: 0,
      maxLevel: P.top_level,
      getTileUrl: function (level, x, y) {
        return tileBase + level + "/" + x + "_" + y + "." + P.format;
      },
    },
  });
  window.wsiMil.viewer = viewer;
  viewer.addHandler("tile-loaded", function (e) {
    state.loaded.push([e.tile.level, e.tile.getUrl()]);
  });
  viewer.addHandler("tile-load-failed", function (e) {
    state.failed.push([e.tile.level, e.tile.getUrl(), e.message]);
  });

  // --- the overlay canvas, redrawn whenever the view moves ------------------------------------------
  var canvas = document.createElement("canvas");
  canvas.className = "overlay";
  viewer.canvas.appendChild(canvas);
  var ctx = canvas.getContext("2d");
  var n = D.coords.length / 2;
  var side = D.patch_size;
  var colours = [];

  function lutColour(v) {
    var c = D.lut[Math.max(0, Math.min(255, Math.round(v * 255)))];
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }
  function setColours() {
    colours = [];
    if (state.layer < 0) return;
    var values = D.layers[state.layer].value;
    for (var i = 0; i < n; i++) colours.push(lutColour(values[i]));
  }

  // level-0 px -> canvas px: x_canvas = ox + x * k (no rotation, so two points fix it)
  function transform() {
    var item = viewer.world.getItemAt(0);
    if (!item) return null;
    var a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    var b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(P.width, P.height));
    return { ox: a.x, oy: a.y, kx: (b.x - a.x) / P.level0_width, ky: (b.y - a.y) / P.level0_height };
  }

  function draw() {
    var dpr = window.devicePixelRatio || 1;
    var w = viewer.canvas.clientWidth, h = viewer.canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
      canvas.style.width = w + "px";
      canvas.style.height = h + "px";
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var t = transform();
    if (!t) return;
    if (state.tissue && D.tissue.length) {
      ctx.globalAlpha = 1;
      ctx.beginPath();
      D.tissue.forEach(function (rings) {
        rings.forEach(function (ring) {
          ring.forEach(function (p, j) {
            var x = t.ox + p[0] * t.kx, y = t.oy + p[1] * t.ky;
            if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
          });
          ctx.closePath();
        });
      });
      ctx.fillStyle = "rgba(0,160,0,0.12)";
      ctx.fill("evenodd");
      ctx.strokeStyle = "rgb(0,150,0)";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
    var sw = side * t.kx, sh = side * t.ky, i, x, y;
    if (state.layer >= 0) {
      ctx.globalAlpha = state.opacity;
      for (i = 0; i < n; i++) {
        x = t.ox + D.coords[2 * i] * t.kx;
        y = t.oy + D.coords[2 * i + 1] * t.ky;
        if (x > w || y > h || x + sw < 0 || y + sh < 0) continue;
        ctx.fillStyle = colours[i];
        ctx.fillRect(x, y, sw + 0.5, sh + 0.5);
      }
    }
    ctx.globalAlpha = 1;
    if (state.grid) {
      ctx.strokeStyle = "rgba(20,20,20,0.6)";
      ctx.lineWidth = 1;
      for (i = 0; i < n; i++) {
        ctx.strokeRect(t.ox + D.coords[2 * i] * t.kx, t.oy + D.coords[2 * i + 1] * t.ky, sw, sh);
      }
    }
    if (state.focus >= 0) {
      ctx.strokeStyle = "#ff00ff";
      ctx.lineWidth = 3;
      ctx.strokeRect(t.ox + D.coords[2 * state.focus] * t.kx,
        t.oy + D.coords[2 * state.focus + 1] * t.ky, sw, sh);
    }
  }
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("resize", draw);
  viewer.addHandler("open", function () { state.opened = true; draw(); });

  // --- hover: which patch is under the mouse, and its scores -----------------------------------------
  var byCell = {};
  for (var i = 0; i < n; i++) byCell[D.coords[2 * i] + "," + D.coords[2 * i + 1]] = i;
  function patchAt(x0, y0) {
    var step = D.step;
    var hi = Math.floor(x0 / step), hj = Math.floor(y0 / step);
    for (var a = hi; a >= 0 && (a * step) + side > x0; a--) {
      for (var b = hj; b >= 0 && (b * step) + side > y0; b--) {
        var k = byCell[a * step + "," + b * step];
        if (k !== undefined) return k;
      }
    }
    return -1;
  }
  var tip = document.getElementById("tip");
  viewer.canvas.addEventListener("mousemove", function (e) {
    var t = transform();
    if (!t) return;
    var r = viewer.canvas.getBoundingClientRect();
    var x0 = (e.clientX - r.left - t.ox) / t.kx, y0 = (e.clientY - r.top - t.oy) / t.ky;
    var k = patchAt(x0, y0);
    if (k < 0) { tip.hidden = true; return; }
    var lines = ["patch " + k + " at (" + D.coords[2 * k] + ", " + D.coords[2 * k + 1] + ") level 0"];
    D.layers.forEach(function (layer) { lines.push(layer.id + " = " + layer.raw[k]); });
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = e.clientX + 14 + "px";
    tip.style.top = e.clientY + 14 + "px";
  });
  viewer.canvas.addEventListener("mouseleave", function () { tip.hidden = true; });

  // --- the panel: layer choice, opacity, tissue and grid switches, top-k patches ----------------------
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  var panel = document.getElementById("layers");
  panel.appendChild(el("h2", {}, "Layers"));
  function checkbox(id, text, key) {
    var label = el("label", {});
    var box = el("input", { type: "checkbox", id: id });
    box.checked = state[key];
    box.addEventListener("change", function () { state[key] = box.checked; draw(); });
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + text));
    panel.appendChild(label);
  }
  checkbox("show-tissue", "tissue mask", "tissue");
  checkbox("show-grid", "kept patches (" + n + ")", "grid");
  panel.appendChild(el("h3", {}, "Heatmap"));
  var choices = [{ id: "none", index: -1 }].concat(D.layers.map(function (l, j) {
    return { id: l.id, index: j };
  }));
  choices.forEach(function (c) {
    var label = el("label", {});
    var radio = el("input", { type: "radio", name: "layer", value: String(c.index) });
    radio.checked = c.index === state.layer;
    radio.addEventListener("change", function () { selectLayer(c.index); });
    label.appendChild(radio);
    label.appendChild(document.createTextNode(" " + c.id));
    panel.appendChild(label);
  });
  var opacity = el("input", { type: "range", id: "opacity", min: "0", max: "1", step: "0.05" });
  opacity.value = String(state.opacity);
  opacity.addEventListener("input", function () { state.opacity = Number(opacity.value); draw(); });
  var olabel = el("label", { class: "opacity" }, "opacity ");
  olabel.appendChild(opacity);
  panel.appendChild(olabel);
  var bar = el("div", { class: "colourbar" });
  panel.appendChild(bar);
  function selectLayer(index) {
    state.layer = index;
    setColours();
    bar.innerHTML = "";
    if (index >= 0) {
      var stops = D.lut.filter(function (_, j) { return j % 32 === 0 || j === 255; }).map(function (c) {
        return "rgb(" + c.join(",") + ")";
      });
      var grad = el("div", { class: "gradient" });
      grad.style.background = "linear-gradient(to right," + stops.join(",") + ")";
      bar.appendChild(grad);
      var b = D.layers[index].bar; // labels: top, middle, bottom
      bar.appendChild(el("div", { class: "ticks" }, b[2] + "  …  " + b[0]));
    }
    draw();
  }
  window.wsiMil.selectLayer = selectLayer;
  window.wsiMil.draw = draw;

  var topk = document.getElementById("topk");
  D.topk.forEach(function (group) {
    topk.appendChild(el("h3", {}, "Top patches: " + group.method + " (" + group.score + ")"));
    var row = el("div", { class: "thumbs" });
    group.items.forEach(function (item, rank) {
      var img = el("img", {
        src: item.thumb,
        alt: "rank " + (rank + 1),
        title: "rank " + (rank + 1) + ": " + group.score + " " + item.value.toPrecision(4) +
          " at (" + item.x + ", " + item.y + ")",
      });
      img.addEventListener("click", function () { panTo(item.index); });
      row.appendChild(img);
    });
    topk.appendChild(row);
  });
  function panTo(index) {
    var item = viewer.world.getItemAt(0);
    var s = P.scale;
    var r = item.imageToViewportRectangle(D.coords[2 * index] * s, D.coords[2 * index + 1] * s,
      side * s, side * s);
    state.focus = index;
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(r.x - r.width, r.y - r.height,
      3 * r.width, 3 * r.height));
    draw();
  }
  window.wsiMil.panTo = panTo;
  // level-0 px -> page px (the browser test checks the colour drawn there)
  window.wsiMil.toPage = function (x0, y0) {
    var t = transform(), r = viewer.canvas.getBoundingClientRect();
    return { x: r.left + t.ox + x0 * t.kx, y: r.top + t.oy + y0 * t.ky };
  };
  selectLayer(state.layer);
})();

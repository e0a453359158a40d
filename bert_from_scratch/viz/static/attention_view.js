(function () {
  var D = __BFS_DATA__;
  var root = document.getElementById(__BFS_UID__);
  if (!root) { return; }
  var box = root.querySelector(".bfs-svg"), controls = root.querySelector(".bfs-controls");
  var S = {view: D.view, layer: D.layer, heads: D.heads.map(function () { return true; }), focus: null, side: null};
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;"); }
  function color(h) { return D.colors[h % D.colors.length]; }
  function headView() {
    var T = D.tokens.length, G = D.geometry, A = D.attn[S.layer], parts = [];
    var xl = G.text_width, xr = G.text_width + G.gap, h0 = G.top;
    var W = 2 * G.text_width + G.gap, Hpx = h0 + T * G.row + 4;
    for (var k = 0; k < D.heads.length; k++) {
      if (!S.heads[k]) { continue; }
      for (var i = 0; i < T; i++) {
        for (var j = 0; j < T; j++) {
          var w = A[k][i][j];
          if (w < D.min_weight) { continue; }
          if (S.focus !== null && ((S.side === "q" && i !== S.focus) || (S.side === "k" && j !== S.focus))) { continue; }
          parts.push('<line x1="' + (xl + 4) + '" y1="' + (h0 + i * G.row + G.row / 2) + '" x2="' + (xr - 4) +
                     '" y2="' + (h0 + j * G.row + G.row / 2) + '" stroke="' + color(D.heads[k]) +
                     '" stroke-width="' + (G.max_linewidth * w).toFixed(2) + '" stroke-opacity="' +
                     Math.min(1, 0.25 + w).toFixed(2) + '"></line>');
        }
      }
    }
    for (var t = 0; t < T; t++) {
      var y = h0 + t * G.row + G.row / 2 + 4;
      var bq = (S.side === "q" && S.focus === t) ? ' font-weight="bold"' : '';
      var bk = (S.side === "k" && S.focus === t) ? ' font-weight="bold"' : '';
      parts.push('<text class="bfs-tok" data-side="q" data-i="' + t + '" x="' + xl + '" y="' + y +
                 '" text-anchor="end"' + bq + '>' + esc(D.tokens[t]) + '</text>');
      parts.push('<text class="bfs-tok" data-side="k" data-i="' + t + '" x="' + xr + '" y="' + y +
                 '" text-anchor="start"' + bk + '>' + esc(D.tokens[t]) + '</text>');
    }
    parts.push('<text x="' + (W / 2) + '" y="12" text-anchor="middle" fill="#555">layer ' + D.layers[S.layer] +
               ': query \u2192 key</text>');
    return '<svg width="' + W + '" height="' + Hpx + '" viewBox="0 0 ' + W + ' ' + Hpx + '">' + parts.join("") + '</svg>';
  }
  function modelView() {
    var T = D.tokens.length, G = D.geometry, c = G.cell, pad = G.cell_pad, px = c / T, parts = [];
    var W = G.label + D.heads.length * (c + pad), Hpx = G.top + D.layers.length * (c + pad);
    for (var k = 0; k < D.heads.length; k++) {
      parts.push('<text x="' + (G.label + k * (c + pad) + c / 2) + '" y="' + (G.top - 4) +
                 '" text-anchor="middle" fill="#555">head ' + D.heads[k] + '</text>');
    }
    for (var l = 0; l < D.layers.length; l++) {
      var y0 = G.top + l * (c + pad);
      parts.push('<text x="' + (G.label - 6) + '" y="' + (y0 + c / 2 + 4) + '" text-anchor="end" fill="#555">layer ' +
                 D.layers[l] + '</text>');
      for (var k2 = 0; k2 < D.heads.length; k2++) {
        var x0 = G.label + k2 * (c + pad), A = D.attn[l][k2], m = 1e-12;
        for (var i = 0; i < T; i++) { for (var j = 0; j < T; j++) { if (A[i][j] > m) { m = A[i][j]; } } }
        parts.push('<g class="bfs-cell" data-l="' + l + '" data-k="' + k2 + '"><title>layer ' + D.layers[l] +
                   ', head ' + D.heads[k2] + ' (click: head view)</title><rect x="' + x0 + '" y="' + y0 + '" width="' + c +
                   '" height="' + c + '" fill="#fff" stroke="#ccc"></rect>');
        for (var i2 = 0; i2 < T; i2++) {
          for (var j2 = 0; j2 < T; j2++) {
            var o = A[i2][j2] / m;
            if (o < 0.02) { continue; }
            parts.push('<rect x="' + (x0 + j2 * px).toFixed(2) + '" y="' + (y0 + i2 * px).toFixed(2) + '" width="' +
                       px.toFixed(2) + '" height="' + px.toFixed(2) + '" fill="#08519c" fill-opacity="' + o.toFixed(2) + '"></rect>');
          }
        }
        parts.push('</g>');
      }
    }
    return '<svg width="' + W + '" height="' + Hpx + '" viewBox="0 0 ' + W + ' ' + Hpx + '">' + parts.join("") + '</svg>';
  }
  function buildControls() {
    var html = '<select class="bfs-view"><option value="head">head view</option><option value="model">model view</option></select>';
    html += '<select class="bfs-layer">';
    for (var l = 0; l < D.layers.length; l++) { html += '<option value="' + l + '">layer ' + D.layers[l] + '</option>'; }
    html += '</select>';
    for (var k = 0; k < D.heads.length; k++) {
      html += '<label style="color:' + color(D.heads[k]) + '"><input type="checkbox" class="bfs-head" data-k="' + k +
              '" checked> head ' + D.heads[k] + '</label>';
    }
    controls.innerHTML = html;
    controls.querySelector(".bfs-view").value = S.view;
    controls.querySelector(".bfs-layer").value = String(S.layer);
    controls.querySelector(".bfs-view").onchange = function (e) { S.view = e.target.value; render(); };
    controls.querySelector(".bfs-layer").onchange = function (e) { S.layer = parseInt(e.target.value, 10); render(); };
    var boxes = controls.querySelectorAll(".bfs-head");
    for (var b = 0; b < boxes.length; b++) {
      boxes[b].onchange = function (e) { S.heads[parseInt(e.target.getAttribute("data-k"), 10)] = e.target.checked; render(); };
    }
  }
  function render() {
    var headMode = S.view === "head";
    controls.querySelector(".bfs-layer").style.display = headMode ? "" : "none";
    var labels = controls.querySelectorAll("label");
    for (var b = 0; b < labels.length; b++) { labels[b].style.display = headMode ? "" : "none"; }
    box.innerHTML = headMode ? headView() : modelView();
    if (headMode) {
      var toks = box.querySelectorAll(".bfs-tok");
      for (var t = 0; t < toks.length; t++) {
        toks[t].onmouseenter = function (e) {
          S.focus = parseInt(e.target.getAttribute("data-i"), 10); S.side = e.target.getAttribute("data-side"); render(); };
      }
      box.querySelector("svg").onmouseleave = function () { if (S.focus !== null) { S.focus = null; S.side = null; render(); } };
    } else {
      var cells = box.querySelectorAll(".bfs-cell");
      for (var c = 0; c < cells.length; c++) {
        cells[c].onclick = function () {
          S.layer = parseInt(this.getAttribute("data-l"), 10);
          var k = parseInt(this.getAttribute("data-k"), 10);
          S.heads = D.heads.map(function (_, i) { return i === k; });
          S.view = "head"; buildControls(); render();
        };
      }
    }
  }
  buildControls();
  render();
})();

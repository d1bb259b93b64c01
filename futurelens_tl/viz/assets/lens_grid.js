/* futurelens_tl lens grid: colour modes, diff panel, hover top-k, pinned-token trajectories.
 * Hand-written, no dependencies, no network. Each grid root is initialised by
 * window.flLensGrid(root); all state and listeners are scoped to that root. */
(function () {
  "use strict";
  if (window.flLensGrid) return;
  var SVGNS = "http://www.w3.org/2000/svg";
  var PIN_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442"];
  var DASHES = ["", "6 3", "2 3", "8 3 2 3", "12 4", "1 2"];

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function rgb(h) { return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)]; }
  function hex2(v) { var s = Math.round(v).toString(16); return s.length < 2 ? "0" + s : s; }
  function cmapColor(stops, t) {
    t = Math.min(Math.max(t, 0), 1);
    for (var i = 0; i < stops.length - 1; i++) {
      var t0 = stops[i][0], t1 = stops[i + 1][0];
      if (t <= t1) {
        var f = t1 === t0 ? 0 : (t - t0) / (t1 - t0), a = rgb(stops[i][1]), b = rgb(stops[i + 1][1]);
        return "#" + hex2(a[0] + (b[0] - a[0]) * f) + hex2(a[1] + (b[1] - a[1]) * f) + hex2(a[2] + (b[2] - a[2]) * f);
      }
    }
    return stops[stops.length - 1][1];
  }
  function textColor(h) { var c = rgb(h); return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] > 140 ? "#111111" : "#ffffff"; }
  function vis(tok, maxLen) {
    if (tok === null || tok === undefined) return "";
    if (tok === "") return "\u2205";
    var s = String(tok).replace(/ /g, "\u2423").replace(/\u00a0/g, "\u237d").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
    s = s.replace(/[\u0000-\u001f\u007f]/g, function (c) { return "\\x" + hex2(c.charCodeAt(0)); });
    s = s.replace(/[\u200b\u200c\u200d\u2060\ufeff]/g, function (c) { return "\\u" + ("000" + c.charCodeAt(0).toString(16)).slice(-4); });
    if (maxLen && s.length > maxLen) s = s.substr(0, Math.max(maxLen - 1, 1)) + "\u2026";
    return s;
  }
  function fmt(v, d) { return v === null || v === undefined ? "\u2013" : Number(v).toFixed(d === undefined ? 3 : d); }
  function pct(v) {
    if (v === null || v === undefined) return "\u2013";
    return v >= 0.001 ? (100 * v).toFixed(1) + "%" : Number(v).toExponential(1);
  }

  function init(root) {
    if (!root || root.getAttribute("data-fl-ready")) return;
    root.setAttribute("data-fl-ready", "1");
    var payload = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
    var G = payload.grid, V = payload.view, L = G.lenses;
    var R = G.rows.length, P = G.tokens.length;
    var tip = root.querySelector('[data-role="tooltip"]');
    var st = { mode: V.color, pins: [], active: null, sel: null, hover: null, frozen: false, topDown: !!V.top_down };
    var trackedIndex = L.map(function (lens) {
      var m = {};
      if (lens.tracked) lens.tracked.ids.forEach(function (id, j) { m[id] = j; });
      return m;
    });
    L.forEach(function (lens) {  // tracked probabilities: base64 little-endian uint16, units of 1e-4
      var tr = lens.tracked;
      if (!tr || !tr.probs_u16) return;
      var bin = atob(tr.probs_u16), n = bin.length >> 1, flat = new Float64Array(n);
      for (var i = 0; i < n; i++) flat[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / 10000;
      tr.flat = flat; tr.T = tr.shape[2];
    });

    function cellsOf(li) { return root.querySelectorAll('[data-role="cell"][data-li="' + li + '"]'); }
    function tokenText(id) {
      for (var li = 0; li < L.length; li++) {
        var j = trackedIndex[li][id];
        if (j !== undefined) return L[li].tracked.tokens[j];
      }
      for (li = 0; li < L.length; li++)
        for (var r = 0; r < R; r++) for (var p = 0; p < P; p++) {
          var k = L[li].top_ids[r][p].indexOf(id);
          if (k >= 0) return L[li].top_tokens[r][p][k];
        }
      return "#" + id;
    }
    function probOf(li, id, r, p) {
      var lens = L[li];
      if (!lens.available[r][p]) return null;
      var j = trackedIndex[li][id];
      if (j !== undefined) return lens.tracked.flat[(r * P + p) * lens.tracked.T + j];
      var k = lens.top_ids[r][p].indexOf(id);
      return k >= 0 ? lens.top_probs[r][p][k] : null;
    }
    function metric(li, mode, r, p) {
      var lens = L[li];
      if (!lens.available[r][p]) return null;
      if (mode === "prob") { var tp = lens.top_probs[r][p]; return tp.length ? tp[0] : null; }
      if (mode === "rank") {
        if (!lens.rank_next) return null;
        var rk = lens.rank_next[r][p];
        return rk === null || rk === undefined || rk < 1 ? null : Math.log10(rk);
      }
      if (mode === "kl" || mode === "entropy") { var v = lens[mode][r][p]; return v === undefined ? null : v; }
      if (mode === "pinned") return st.active === null ? null : probOf(li, st.active, r, p);
      return null;
    }
    function scale(mode, vals) {
      if (mode === "prob" || mode === "pinned") return [0, 1];
      var mx = -Infinity;
      vals.forEach(function (v) { if (v !== null && v > mx) mx = v; });
      if (!isFinite(mx)) mx = 1;
      return mode === "rank" ? [0, Math.max(mx, 1)] : [0, Math.max(mx, 1e-6)];
    }
    function colorFor(v, mode, lo, hi) {
      if (v === null || v === undefined) return null;
      var ms = V.modes[mode], t = hi <= lo ? 0 : (v - lo) / (hi - lo);
      if (ms.reverse) t = 1 - t;
      return cmapColor(V.cmaps[ms.cmap], t);
    }
    function modeLabel(mode) {
      if (mode === "pinned") return st.active === null ? "pinned token (pin one first)" : "p(" + vis(tokenText(st.active), 16) + ")";
      return V.modes[mode].label;
    }
    function tickText(mode, v) {
      if (mode === "rank") return String(Math.round(Math.pow(10, v)));
      return mode === "prob" || mode === "pinned" ? v.toFixed(1) : v.toFixed(2);
    }

    function legend(mode, lo, hi, diff) {
      var lg = root.querySelector('[data-role="legend"]');
      lg.textContent = "";
      var stops, left, right;
      if (diff) {
        stops = V.cmaps.puor;
        left = "\u2212" + diff.toFixed(3); right = "+" + diff.toFixed(3);
      } else {
        var ms = V.modes[mode];
        stops = V.cmaps[ms.cmap];
        if (ms.reverse) stops = stops.map(function (s) { return [1 - s[0], s[1]]; }).reverse();
        left = tickText(mode, lo); right = tickText(mode, hi);  // low value on the left
      }
      var grad = "linear-gradient(to right," + stops.map(function (s) { return s[1] + " " + (100 * s[0]).toFixed(0) + "%"; }).join(",") + ")";
      lg.appendChild(el("span", null, left));
      var bar = el("span", { "class": "fl-legend-bar" }); bar.style.background = grad;
      lg.appendChild(bar);
      lg.appendChild(el("span", null, right));
      lg.appendChild(el("span", null, (diff ? "diff of " : "") + modeLabel(mode) + (diff ? "" : " \u00b7 shared scale")));
    }

    function recolor() {
      var vals = [], li, r, p;
      for (li = 0; li < L.length; li++) for (r = 0; r < R; r++) for (p = 0; p < P; p++) vals.push(metric(li, st.mode, r, p));
      var sc = scale(st.mode, vals);
      for (li = 0; li < L.length; li++) {
        Array.prototype.forEach.call(cellsOf(li), function (td) {
          if (td.classList.contains("fl-na")) return;
          var v = metric(+td.getAttribute("data-li"), st.mode, +td.getAttribute("data-row"), +td.getAttribute("data-pos"));
          var c = colorFor(v, st.mode, sc[0], sc[1]);
          td.style.background = c || "#eef1f4";
          td.style.color = c ? textColor(c) : "#8c959f";
        });
      }
      drawDiff();
      legend(st.mode, sc[0], sc[1], null);
    }

    function buildTable(kind, li, cellFn) {
      var table = el("table", { "class": "fl-gt" });
      var thead = el("thead"), trh = el("tr"), tbody = el("tbody"), tfoot = el("tfoot"), trf = el("tr");
      trh.appendChild(el("th", { "class": "fl-corner" }, "next"));
      trf.appendChild(el("th", { "class": "fl-corner" }, "input"));
      for (var p = 0; p < P; p++) {
        var star = G.next_correct[p] ? "*" : "";
        trh.appendChild(el("th", { "class": "fl-axis" + (star ? " fl-correct" : ""), "data-role": "next", "data-pos": p }, vis(G.next_tokens[p], 7 - star.length) + star));
        trf.appendChild(el("th", { "class": "fl-axis", "data-role": "input", "data-pos": p }, vis(G.tokens[p], 7)));
      }
      thead.appendChild(trh); tfoot.appendChild(trf);
      for (var i = 0; i < R; i++) {
        var r = st.topDown ? i : R - 1 - i;
        var tr = el("tr", { "data-row": r });
        tr.appendChild(el("th", { "class": "fl-rowlab" }, G.rows[r]));
        for (p = 0; p < P; p++) tr.appendChild(cellFn(r, p));
        tbody.appendChild(tr);
      }
      table.appendChild(thead); table.appendChild(tbody); table.appendChild(tfoot);
      return table;
    }

    function diffPair() {
      var a = root.querySelector('[data-role="diff-a"]').value, b = root.querySelector('[data-role="diff-b"]').value;
      if (a === "" || a === b) return null;
      return [+a, +b];
    }
    function drawDiff() {
      var old = root.querySelector('[data-role="diff-panel"]');
      if (old) old.remove();
      var pair = diffPair();
      if (!pair) return null;
      var A = pair[0], B = pair[1], d = [], mx = 0, r, p;
      for (r = 0; r < R; r++) {
        d.push([]);
        for (p = 0; p < P; p++) {
          var va = metric(A, st.mode, r, p), vb = metric(B, st.mode, r, p);
          var x = va === null || vb === null ? null : va - vb;
          d[r].push(x);
          if (x !== null) mx = Math.max(mx, Math.abs(x));
        }
      }
      mx = Math.max(mx, 1e-6);
      var panel = el("div", { "class": "fl-panel", "data-role": "diff-panel" });
      var title = el("div", { "class": "fl-panel-title" }, L[A].name + " \u2212 " + L[B].name);
      title.appendChild(el("span", { "class": "fl-badge fl-badge-diff" }, "diff \u00b7 " + modeLabel(st.mode)));
      panel.appendChild(title);
      panel.appendChild(buildTable("diff", null, function (r, p) {
        var x = d[r][p];
        var td = el("td", { "data-role": "diff-cell", "data-row": r, "data-pos": p });
        if (x === null) { td.className = "fl-na"; td.textContent = "\u2013"; return td; }
        var c = cmapColor(V.cmaps.puor, 0.5 + 0.5 * x / mx);
        td.style.background = c; td.style.color = textColor(c);
        td.textContent = (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(2);
        td.title = L[A].name + ": " + fmt(metric(A, st.mode, r, p)) + "  " + L[B].name + ": " + fmt(metric(B, st.mode, r, p));
        return td;
      }));
      var lgd = el("div", { "class": "fl-legend" });
      var bar = el("span", { "class": "fl-legend-bar" });
      bar.style.background = "linear-gradient(to right," + V.cmaps.puor.map(function (s) { return s[1] + " " + (100 * s[0]).toFixed(0) + "%"; }).join(",") + ")";
      lgd.appendChild(el("span", null, "\u2212" + mx.toFixed(2))); lgd.appendChild(bar); lgd.appendChild(el("span", null, "+" + mx.toFixed(2)));
      panel.appendChild(lgd);
      root.querySelector('[data-role="panels"]').appendChild(panel);
      return mx;
    }

    // ---------------------------------------------------------------- tooltip
    function hideTip() { tip.hidden = true; tip.classList.remove("fl-frozen"); st.frozen = false; markSel(null); }
    function showTip(td, li, r, p) {
      var lens = L[li];
      tip.textContent = "";
      tip.appendChild(el("div", { "class": "fl-tt-head" }, lens.name + " \u00b7 layer " + G.rows[r] + " \u00b7 pos " + p));
      var nxt = G.next_tokens[p];
      tip.appendChild(el("div", { "class": "fl-tt-sub" }, "input \u201c" + vis(G.tokens[p]) + "\u201d \u2192 next \u201c" + (nxt === null ? "(end)" : vis(nxt)) + "\u201d" + (lens.note ? " \u00b7 " + lens.note : "")));
      if (!lens.available[r][p]) {
        tip.appendChild(el("div", { "class": "fl-note" }, "This lens does not cover this row."));
      } else {
        var table = el("table", { "class": "fl-tt-table", "data-role": "topk" });
        var ids = lens.top_ids[r][p], toks = lens.top_tokens[r][p], probs = lens.top_probs[r][p];
        for (var i = 0; i < toks.length; i++) {
          var tr = el("tr", { "class": toks[i] === nxt ? "fl-target" : null });
          tr.appendChild(el("td", { "class": "fl-num" }, String(i + 1)));
          var tdTok = el("td", { "class": "fl-tok", "data-role": "pin-token", "data-token-id": ids[i], title: "click to pin " + JSON.stringify(toks[i]) }, vis(toks[i], 18));
          var pi = st.pins.indexOf(ids[i]);
          if (pi >= 0) {
            var mark = el("span", { "class": "fl-swatch", title: "pinned" });
            mark.style.background = PIN_COLORS[pi % PIN_COLORS.length]; mark.style.height = "8px"; mark.style.width = "8px"; mark.style.marginRight = "4px";
            tdTok.insertBefore(mark, tdTok.firstChild);
          }
          tr.appendChild(tdTok);
          var barTd = el("td"), bar = el("span", { "class": "fl-bar" });
          bar.style.width = Math.max(1, Math.round(60 * (probs[i] || 0))) + "px";
          barTd.appendChild(bar); tr.appendChild(barTd);
          tr.appendChild(el("td", { "class": "fl-num" }, pct(probs[i])));
          table.appendChild(tr);
        }
        tip.appendChild(table);
        var stats = el("div", { "class": "fl-tt-stats" });
        function stat(k, v) { stats.appendChild(el("span", null, k)); stats.appendChild(el("b", null, v)); }
        stat("p(next)", lens.p_next ? pct(lens.p_next[r][p]) : "\u2013");
        stat("rank(next)", lens.rank_next && lens.rank_next[r][p] !== null ? String(lens.rank_next[r][p]) : "\u2013");
        stat("entropy", fmt(lens.entropy[r][p]) + " nats");
        stat("KL(final\u2016row)", fmt(lens.kl[r][p]) + " nats");
        tip.appendChild(stats);
        if (lens.cont_tokens && lens.cont_tokens[r] && lens.cont_tokens[r][p] && lens.cont_tokens[r][p].length) {
          var ct = lens.cont_tokens[r][p], cp = lens.cont_probs ? lens.cont_probs[r][p] : null;
          var txt = vis(toks[0]) + " \u2192 " + ct.map(function (t, j) { return vis(t) + (cp && cp[j] !== undefined ? " (" + pct(cp[j]) + ")" : ""); }).join(" ");
          var cont = el("div", { "class": "fl-tt-cont", "data-role": "continuation" });
          cont.appendChild(el("span", { "class": "fl-note" }, "free-running continuation: "));
          cont.appendChild(el("span", { "class": "fl-mono" }, txt));
          tip.appendChild(cont);
        }
      }
      if (L.length > 1) {  // the other lenses at the same cell, compactly
        var others = el("div", { "class": "fl-tt-others", "data-role": "other-lenses" });
        L.forEach(function (o, oi) {
          if (oi === li) return;
          var line = el("div");
          line.appendChild(el("span", { "class": "fl-tt-oname" }, o.name + ": "));
          if (!o.available[r][p]) { line.appendChild(el("span", { "class": "fl-note" }, "not covered")); }
          else {
            for (var j = 0; j < Math.min(3, o.top_tokens[r][p].length); j++) {
              line.appendChild(el("span", { "class": "fl-tok", "data-role": "pin-token", "data-token-id": o.top_ids[r][p][j], title: "click to pin" }, vis(o.top_tokens[r][p][j], 12)));
              line.appendChild(el("span", { "class": "fl-note" }, " " + pct(o.top_probs[r][p][j]) + "  "));
            }
          }
          others.appendChild(line);
        });
        tip.appendChild(others);
      }
      tip.appendChild(el("div", { "class": "fl-tt-hint" }, st.frozen ? "pinned open \u00b7 click a token to pin it \u00b7 Esc or click the cell again to close" : "click the cell to pin its top-1 and keep this box open"));
      tip.hidden = false;
      tip.classList.toggle("fl-frozen", st.frozen);
      var rr = root.getBoundingClientRect(), cr = td.getBoundingClientRect();
      var x = cr.right - rr.left + 6, y = cr.top - rr.top;
      var w = tip.offsetWidth || 260;
      if (x + w > root.clientWidth) x = Math.max(0, cr.left - rr.left - w - 6);
      tip.style.left = x + "px";
      tip.style.top = Math.max(0, y - 10) + "px";
    }
    function markSel(td) {
      Array.prototype.forEach.call(root.querySelectorAll(".fl-sel"), function (e) { e.classList.remove("fl-sel"); });
      if (td) td.classList.add("fl-sel");
    }
    function markPos(p) {
      Array.prototype.forEach.call(root.querySelectorAll("th.fl-hi"), function (e) { e.classList.remove("fl-hi"); });
      if (p === null) return;
      Array.prototype.forEach.call(root.querySelectorAll('th[data-pos="' + p + '"]'), function (e) { e.classList.add("fl-hi"); });
    }

    // ---------------------------------------------------------------- pins
    function addPin(id) {
      if (st.pins.indexOf(id) < 0) st.pins.push(id);
      st.active = id;
      update();
    }
    function togglePin(id) {
      var i = st.pins.indexOf(id);
      if (i >= 0) { st.pins.splice(i, 1); if (st.active === id) st.active = st.pins.length ? st.pins[st.pins.length - 1] : null; update(); }
      else addPin(id);
    }
    function update() {
      drawPinList();
      drawChart();
      recolor();
      if (st.frozen && st.sel) showTip(st.sel.td, st.sel.li, st.sel.r, st.sel.p);
    }
    function drawPinList() {
      var box = root.querySelector('[data-role="pin-list"]');
      box.textContent = "";
      st.pins.forEach(function (id, i) {
        var chip = el("span", { "class": "fl-chip" + (id === st.active ? " fl-active" : ""), "data-role": "pin-chip", "data-token-id": id, title: "click: colour the grid by this token (mode \u201cpinned\u201d)" });
        var sw = el("span", { "class": "fl-swatch" }); sw.style.background = PIN_COLORS[i % PIN_COLORS.length];
        chip.appendChild(sw);
        chip.appendChild(el("span", null, vis(tokenText(id), 16)));
        chip.appendChild(el("span", { "class": "fl-x", "data-role": "unpin", "data-token-id": id, title: "unpin" }, "\u00d7"));
        box.appendChild(chip);
      });
    }
    function chartPos() { return st.sel ? st.sel.p : (st.hover !== null ? st.hover : P - 1); }
    function drawChart() {
      var host = root.querySelector('[data-role="pin-chart"]');
      var posLab = root.querySelector('[data-role="pin-pos"]');
      var p = chartPos();
      posLab.textContent = "position " + p + ": input \u201c" + vis(G.tokens[p]) + "\u201d \u2192 next \u201c" + (G.next_tokens[p] === null ? "(end)" : vis(G.next_tokens[p])) + "\u201d" + (st.sel ? " (selected)" : " (hover a cell / click to select)");
      if (!st.pins.length) {
        host.textContent = "";
        host.appendChild(el("span", { "class": "fl-note" }, "Click a cell, or a token in the hover table, to pin it: its probability across rows is drawn here for every lens."));
        return;
      }
      var W = Math.max(420, Math.min(760, 70 + 46 * R)) + 170, H = 230, ml = 44, mr = 170, mt = 12, mb = 36;
      var pw = W - ml - mr, ph = H - mt - mb;
      var svg = sv("svg", { "class": "fl-chart", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
      svg.appendChild(sv("title", null, "probability of pinned tokens across rows at position " + p));
      function X(r) { return ml + (R === 1 ? pw / 2 : pw * r / (R - 1)); }
      var logY = !!(root.querySelector('[data-role="pin-log"]') || {}).checked;
      function Y(v) {
        var t = logY ? (Math.log10(Math.max(v, 1e-4)) + 4) / 4 : v;
        return mt + ph * (1 - t);
      }
      (logY ? [1e-4, 1e-3, 1e-2, 0.1, 1] : [0, 0.25, 0.5, 0.75, 1]).forEach(function (v, i) {
        svg.appendChild(sv("line", { x1: ml, x2: ml + pw, y1: Y(v), y2: Y(v), stroke: "#d0d7de", "stroke-width": i === 0 ? 1 : 0.6 }));
        svg.appendChild(sv("text", { x: ml - 5, y: Y(v) + 3, "text-anchor": "end" }, logY ? (v >= 0.01 ? String(v) : v.toExponential(0)) : v.toFixed(2)));
      });
      for (var r = 0; r < R; r++) svg.appendChild(sv("text", { x: X(r), y: mt + ph + 14, "text-anchor": "middle" }, G.rows[r]));
      svg.appendChild(sv("text", { x: ml + pw / 2, y: H - 4, "text-anchor": "middle" }, "layer (row)"));
      svg.appendChild(sv("text", { x: 10, y: mt + ph / 2, "text-anchor": "middle", transform: "rotate(-90 10 " + (mt + ph / 2) + ")" }, logY ? "probability (log)" : "probability"));
      st.pins.forEach(function (id, pi) {
        var col = PIN_COLORS[pi % PIN_COLORS.length];
        L.forEach(function (lens, li) {
          var d = "", pen = false, pts = [];
          for (var r = 0; r < R; r++) {
            var v = probOf(li, id, r, p);
            if (v === null || v === undefined) { pen = false; continue; }
            d += (pen ? "L" : "M") + X(r).toFixed(1) + " " + Y(v).toFixed(1) + " ";
            pen = true; pts.push([r, v]);
          }
          if (!pts.length) return;
          var path = sv("path", { d: d.trim(), fill: "none", stroke: col, "stroke-width": id === st.active ? 2.4 : 1.7, "stroke-dasharray": DASHES[li % DASHES.length], "data-role": "trajectory", "data-lens": lens.name, "data-token-id": id });
          path.appendChild(sv("title", null, lens.name + ": p(" + tokenText(id) + ")"));
          svg.appendChild(path);
          pts.forEach(function (q) {
            var c = sv("circle", { cx: X(q[0]), cy: Y(q[1]), r: 2.4, fill: col });
            c.appendChild(sv("title", null, lens.name + " \u00b7 layer " + G.rows[q[0]] + " \u00b7 p(" + tokenText(id) + ") = " + pct(q[1])));
            svg.appendChild(c);
          });
        });
      });
      var lx = ml + pw + 16, ly = mt + 6;
      svg.appendChild(sv("text", { x: lx, y: ly, "font-weight": "600" }, "token (colour)"));
      st.pins.forEach(function (id, pi) {
        ly += 14;
        svg.appendChild(sv("line", { x1: lx, x2: lx + 18, y1: ly - 3, y2: ly - 3, stroke: PIN_COLORS[pi % PIN_COLORS.length], "stroke-width": 2.5 }));
        svg.appendChild(sv("text", { x: lx + 24, y: ly }, vis(tokenText(id), 16)));
      });
      ly += 20;
      svg.appendChild(sv("text", { x: lx, y: ly, "font-weight": "600" }, "lens (dash)"));
      L.forEach(function (lens, li) {
        ly += 14;
        svg.appendChild(sv("line", { x1: lx, x2: lx + 18, y1: ly - 3, y2: ly - 3, stroke: "#424a53", "stroke-width": 1.8, "stroke-dasharray": DASHES[li % DASHES.length] }));
        svg.appendChild(sv("text", { x: lx + 24, y: ly }, lens.name.length > 22 ? lens.name.substr(0, 21) + "\u2026" : lens.name));
      });
      host.textContent = "";
      host.appendChild(svg);
    }

    // ---------------------------------------------------------------- events
    function cellInfo(td) { return { td: td, li: +td.getAttribute("data-li"), r: +td.getAttribute("data-row"), p: +td.getAttribute("data-pos") }; }
    root.addEventListener("mouseover", function (ev) {
      var td = ev.target.closest ? ev.target.closest('[data-role="cell"]') : null;
      if (!td || !root.contains(td)) return;
      var c = cellInfo(td);
      if (st.hover !== c.p) { st.hover = c.p; if (!st.sel) drawChart(); }
      markPos(c.p);
      if (!st.frozen) showTip(td, c.li, c.r, c.p);
    });
    root.addEventListener("mouseout", function (ev) {
      var to = ev.relatedTarget;
      if (st.frozen) return;
      if (to && (to.closest('[data-role="cell"]') || tip.contains(to))) return;
      if (ev.target.closest && ev.target.closest('[data-role="cell"]')) { tip.hidden = true; markPos(null); }
    });
    tip.addEventListener("mouseleave", function (ev) {
      var to = ev.relatedTarget;
      if (!st.frozen && !(to && to.closest && to.closest('[data-role="cell"]'))) { tip.hidden = true; markPos(null); }
    });
    root.addEventListener("click", function (ev) {
      var t = ev.target;
      var pinTok = t.closest('[data-role="pin-token"]');
      if (pinTok) { togglePin(+pinTok.getAttribute("data-token-id")); return; }
      var unpin = t.closest('[data-role="unpin"]');
      if (unpin) { togglePin(+unpin.getAttribute("data-token-id")); return; }
      var chip = t.closest('[data-role="pin-chip"]');
      if (chip) { st.active = +chip.getAttribute("data-token-id"); update(); return; }
      if (t.closest('[data-role="clear-pins"]')) { st.pins = []; st.active = null; update(); return; }
      var td = t.closest('[data-role="cell"]');
      if (td && !td.classList.contains("fl-na")) {
        var c = cellInfo(td);
        if (st.frozen && st.sel && st.sel.td === td) { st.sel = null; hideTip(); drawChart(); return; }
        st.sel = c; st.frozen = true; markSel(td);
        var ids = L[c.li].top_ids[c.r][c.p];
        if (ids.length && st.pins.indexOf(ids[0]) < 0) { addPin(ids[0]); } else { update(); }
        return;
      }
      if (!tip.contains(t) && st.frozen) { st.sel = null; hideTip(); drawChart(); }
    });
    root.addEventListener("keydown", function (ev) { if (ev.key === "Escape" && st.frozen) { st.sel = null; hideTip(); drawChart(); } });
    document.addEventListener("keydown", function (ev) { if (ev.key === "Escape" && st.frozen && document.body.contains(root)) { st.sel = null; hideTip(); drawChart(); } });
    var logBox = root.querySelector('[data-role="pin-log"]');
    if (logBox) logBox.addEventListener("change", drawChart);
    root.querySelector('[data-role="color-mode"]').addEventListener("change", function (ev) { st.mode = ev.target.value; recolor(); });
    root.querySelector('[data-role="diff-a"]').addEventListener("change", recolor);
    root.querySelector('[data-role="diff-b"]').addEventListener("change", recolor);
    root.querySelector('[data-role="top-down"]').addEventListener("change", function (ev) {
      st.topDown = ev.target.checked;
      Array.prototype.forEach.call(root.querySelectorAll("table.fl-gt tbody"), function (tb) {
        var rows = Array.prototype.slice.call(tb.children).reverse();
        rows.forEach(function (tr) { tb.appendChild(tr); });
      });
    });

    // initial state
    if (L.length > 1) root.querySelector('[data-role="diff-b"]').value = "1";
    (V.pins || []).forEach(function (id) { if (st.pins.indexOf(id) < 0) st.pins.push(id); });
    st.active = st.pins.length ? st.pins[st.pins.length - 1] : null;
    drawPinList(); drawChart(); recolor();
  }
  window.flLensGrid = init;
})();

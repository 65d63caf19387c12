// enmei dashboard: live regions over server-sent events, charts, actions with confirmation, the token.
// No build step, no dependencies but plotly.js (served by enmei itself on pages with charts).
"use strict";
(function () {
  var TOKEN_KEY = "enmei-token";

  // -- token -------------------------------------------------------------------------------------
  function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
  function takeTokenFromHash() {
    var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }
  function showTokenState() {
    var b = document.getElementById("token-button");
    if (!b) return;
    b.textContent = token() ? "token set" : "set token";
    b.classList.toggle("on", !!token());
  }
  function askToken(then) {
    var d = document.getElementById("token-dialog");
    var input = document.getElementById("token-input");
    input.value = "";
    d.onclose = function () {
      if (d.returnValue === "save" && input.value.trim()) localStorage.setItem(TOKEN_KEY, input.value.trim());
      if (d.returnValue === "forget") localStorage.removeItem(TOKEN_KEY);
      showTokenState();
      if (then && d.returnValue === "save") then();
    };
    d.showModal();
  }

  function toast(text, bad) {
    var t = document.getElementById("toast");
    t.textContent = text;
    t.className = bad ? "show bad" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.className = ""; }, 6000);
  }

  // -- requests that change something -----------------------------------------------------------
  function post(url, body, retry) {
    return fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token()},
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if ((r.status === 401 || r.status === 403) && retry) {
          toast(data.detail || "token needed", true);
          return new Promise(function (resolve, reject) {
            askToken(function () { post(url, body, false).then(resolve, reject); });
          });
        }
        if (!r.ok) throw new Error(data.detail || ("HTTP " + r.status));
        return data;
      });
    });
  }

  // -- actions with confirmation ----------------------------------------------------------------
  function parseArg(type, raw) {
    if (type.indexOf("bool") >= 0) return raw === "true";
    if (type.indexOf("int") >= 0 || type.indexOf("float") >= 0) {
      var n = Number(raw);
      if (isNaN(n)) throw new Error("'" + raw + "' is not a number");
      return type.indexOf("float") < 0 ? Math.trunc(n) : n;
    }
    return raw;
  }
  function confirmAction(button) {
    var unit = button.dataset.unit, action = button.dataset.action;
    var args = JSON.parse(button.dataset.arguments || "{}");
    var d = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = action.replace(/_/g, " ") + " " + unit + "?";
    document.getElementById("confirm-text").textContent = button.dataset.description || "";
    var box = document.getElementById("confirm-args");
    box.innerHTML = "";
    Object.keys(args).forEach(function (name) {
      var label = document.createElement("label");
      label.textContent = name + " (" + args[name] + ", optional) ";
      var input = document.createElement("input");
      input.name = name;
      input.dataset.type = args[name];
      input.placeholder = args[name].indexOf("bool") >= 0 ? "true / false" : "default";
      label.appendChild(input);
      box.appendChild(label);
    });
    d.onclose = function () {
      if (d.returnValue !== "ok") return;
      var body = {args: {}};
      try {
        box.querySelectorAll("input").forEach(function (i) {
          if (i.value.trim() !== "") body.args[i.name] = parseArg(i.dataset.type, i.value.trim());
        });
      } catch (e) { toast(e.message, true); return; }
      post("/api/units/" + encodeURIComponent(unit) + "/actions/" + encodeURIComponent(action), body, true)
        .then(function (r) { toast(action + " " + unit + ": queued (the decision follows record #" + r.after_seq + ")"); })
        .catch(function (e) { toast(action + " " + unit + ": " + e.message, true); });
    };
    d.returnValue = "";
    d.showModal();
  }

  // -- live regions -----------------------------------------------------------------------------
  var regions = [];
  function refresh(region, seq) {
    if (region.busy) { region.again = seq || region.again || 0; return; }
    region.busy = true;
    var url = region.el.dataset.live;
    if (seq) url += (url.indexOf("?") >= 0 ? "&" : "?") + "after=" + seq;
    fetch(url, {headers: {"Accept": "text/html"}}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      region.el.innerHTML = html;
      region.el.dispatchEvent(new CustomEvent("enmei:refreshed", {bubbles: true}));
    }).catch(function (err) {  // keep what is shown; the next event retries
      console.error("enmei: refreshing " + url + " failed: " + err.message);
    })
      .then(function () {
        region.busy = false;
        if (region.again !== undefined) { var s = region.again; region.again = undefined; refresh(region, s); }
      });
  }
  function schedule(region, seq) {
    clearTimeout(region.timer);
    region.timer = setTimeout(function () { refresh(region, seq); }, 150);
  }
  function onRecord(rec) {
    regions.forEach(function (region) {
      var kinds = region.kinds, unit = region.el.dataset.liveUnit;
      if (kinds && kinds.indexOf(rec.kind) < 0) return;
      if (unit && rec.unit && rec.unit !== unit) return;
      schedule(region, rec.seq);
    });
    if (charts && (rec.kind === "verdict" || rec.kind.indexOf("remedy.") === 0) && rec.unit === charts.dataset.unit) {
      clearTimeout(onRecord.chartTimer);
      onRecord.chartTimer = setTimeout(loadCharts, 500);
    }
  }
  function connect() {
    var status = document.getElementById("live-status");
    if (!window.EventSource || !status) return;
    var es = new EventSource("/api/events");
    es.addEventListener("open", function () {
      status.textContent = "live"; status.className = "live on";
      // Records between the server's rendering of this page and the stream's start are in neither (a unit
      // restarted in that moment stayed "restarting" on the overview until its next record); a reconnect
      // may have missed records too. Once subscribed, one refresh shows the state from then on.
      regions.forEach(function (r) { refresh(r); });
    });
    es.addEventListener("error", function () { status.textContent = "reconnecting…"; status.className = "live off"; });
    es.addEventListener("record", function (e) { onRecord(JSON.parse(e.data)); });
    es.addEventListener("lagged", function () { regions.forEach(function (r) { refresh(r); }); });
    window.addEventListener("pagehide", function () { es.close(); });
  }

  // -- charts -----------------------------------------------------------------------------------
  var charts = null;
  function loadCharts() {
    if (!charts || !window.Plotly) return;
    var url = charts.dataset.chartsUrl + "?window_s=" + charts.dataset.window;
    fetch(url).then(function (r) { return r.json(); }).then(function (res) {
      var figs = res.figures || {};
      var names = Object.keys(figs);
      if (!names.length) { charts.innerHTML = "<p class='muted'>No samples yet.</p>"; return; }
      var placeholder = charts.querySelector("p.muted");
      if (placeholder) placeholder.remove();
      names.forEach(function (name) {
        var id = "chart-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
        var div = document.getElementById(id);
        if (!div) {
          div = document.createElement("div");
          div.id = id; div.className = "chart"; div.dataset.metric = name;
          charts.appendChild(div);
        }
        window.Plotly.react(div, figs[name].data, figs[name].layout, {displaylogo: false, responsive: true});
      });
      charts.dataset.loaded = String(Date.now());
    }).catch(function () { /* the next tick retries */ });
  }

  // -- policy replay --------------------------------------------------------------------------
  function showReplay(out, r) {
    var s = r.summary || {};
    var rows = [["policy replayed", s.policy], ["decisions taken by", (s.original_policies || []).join(", ")],
                ["records", r.records], ["evaluations", s.evaluations], ["agreeing", s.evaluations_agreeing],
                ["decisions taken", s.decisions_original], ["decisions replayed", s.decisions_replayed],
                ["agreement", s.agreement], ["policy errors", s.policy_errors], ["seconds", r.seconds]];
    var table = document.createElement("table");
    table.className = "records";
    rows.forEach(function (row) {
      var tr = table.insertRow();
      tr.insertCell().textContent = row[0];
      tr.insertCell().textContent = row[1] === undefined ? "–" : String(row[1]);
    });
    out.innerHTML = "";
    out.appendChild(table);
    (r.disagreements || []).forEach(function (d) {
      var p = document.createElement("pre");
      p.className = "tail";
      p.textContent = "#" + d.seq + " " + d.kind + " " + (d.unit || "") + "\n  taken:    " +
        JSON.stringify(d.original) + "\n  replayed: " + JSON.stringify(d.replayed);
      out.appendChild(p);
    });
  }

  // -- wiring -----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    takeTokenFromHash();
    showTokenState();
    var tb = document.getElementById("token-button");
    if (tb) tb.addEventListener("click", function () { askToken(); });
    document.querySelectorAll("[data-live]").forEach(function (el) {
      regions.push({el: el, kinds: el.dataset.liveKinds ? el.dataset.liveKinds.split(",") : null});
    });
    document.addEventListener("click", function (e) {
      var b = e.target.closest && e.target.closest("button.action");
      if (b) { confirmAction(b); return; }
      var w = e.target.closest && e.target.closest("button.window");
      if (w && charts) { charts.dataset.window = w.dataset.window; loadCharts(); }
    });
    document.querySelectorAll("select[data-autosubmit]").forEach(function (s) {
      s.addEventListener("change", function () { s.form.submit(); });
    });
    var verify = document.getElementById("verify-now");
    if (verify) verify.addEventListener("click", function () {
      verify.disabled = true;
      post("/api/journal/verify", {}, true).then(function (j) {
        var v = j.verify || {};
        toast(v.ok ? "hash chain intact over " + v.records + " records" : "hash chain BROKEN at record " + v.first_bad, !v.ok);
        setTimeout(function () { location.reload(); }, 800);
      }).catch(function (e) { toast(e.message, true); }).then(function () { verify.disabled = false; });
    });
    var replay = document.getElementById("replay-now");
    if (replay) replay.addEventListener("click", function () {
      var out = document.getElementById("replay-result");
      replay.disabled = true;
      out.textContent = "replaying…";
      post("/api/policy/replay?window_s=" + document.getElementById("replay-window").value, {}, true)
        .then(function (r) { showReplay(out, r); })
        .catch(function (e) { out.textContent = ""; toast(e.message, true); })
        .then(function () { replay.disabled = false; });
    });
    document.querySelectorAll("#logs pre.tail").forEach(function (pre) { pre.scrollTop = pre.scrollHeight; });
    charts = document.getElementById("charts");
    if (charts) {
      // Poll for new samples (they are not journal records, so no event announces them); a longer
      // window changes less per second and is fetched less often.
      var tick = function () {
        loadCharts();
        setTimeout(tick, Math.max(5000, Number(charts.dataset.window) * 1000 / 180));
      };
      tick();
    }
    connect();
  });
})();

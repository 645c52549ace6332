// Live progress for the jobs list, a job's page and its gallery: every element with data-job
// is refreshed from the JSON API, every 2 s while its job runs (counts, the bar's segments, the
// ETA, the cost and the headline) and every 5 s after, while it shows review progress (other
// reviewers' decisions). Values are set as text or SVG attributes, never as HTML.
// On a render's page, keys drive the review: a approve, r reject, n note, j next, k previous.
(function () {
  var ENDED = ["done", "failed", "cancelled"];
  function duration(s) {  // as the pages' `duration` filter (scheduler/web/pages.py)
    if (s == null) return "-";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function cost(c) {  // as the pages' `cost` macro (templates/_progress.html)
    var parts = Object.keys(c.device_seconds).sort().map(function (d) {
      return d + " " + c.device_seconds[d].toFixed(1) + " s; ";
    });
    var pi = Number(c.pixel_iterations).toPrecision(3).replace(/\.?0+(e|$)/, "$1");
    return (parts.join("") || "0 device-seconds; ") + pi + " pixel-iterations; " +
      c.outputs + " output(s)";
  }
  function bar(svg, j) {
    var total = j.total || 1, x = 0;
    var shares = {ok: j.done + j.skipped, failed: j.failed, cancelled: j.cancelled,
                  running: j.running};
    ["ok", "failed", "cancelled", "running"].forEach(function (k) {
      var seg = svg.querySelector("[data-seg=" + k + "]");
      var w = 100 * shares[k] / total;
      if (seg) { seg.setAttribute("x", x.toFixed(3)); seg.setAttribute("width", w.toFixed(3)); }
      x += w;
    });
    var title = svg.querySelector("title");
    if (title) {
      title.textContent = (j.total - j.pending - j.running) + " of " + j.total + " ended: " +
        shares.ok + " succeeded, " + j.failed + " failed, " + j.cancelled + " cancelled";
    }
  }
  function refresh(el) {
    if (document.hidden && el.dataset.ended === "1") {  // a hidden tab asks again later
      setTimeout(function () { refresh(el); }, 5000);
      return;
    }
    fetch("/v1/jobs/" + encodeURIComponent(el.dataset.job), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) return;
        el.querySelectorAll("[data-field]").forEach(function (f) {
          var k = f.dataset.field;
          if (k.indexOf("review.") === 0) {
            var part = k.slice(7);
            if (j.review && part in j.review) f.textContent = String(j.review[part]);
          } else if (k === "bar") bar(f, j);
          else if (k === "eta") f.textContent = duration(j.eta_seconds);
          else if (k === "cost") f.textContent = cost(j.cost);
          else if (k in j && j[k] !== null && typeof j[k] !== "object") f.textContent = String(j[k]);
        });
        if (ENDED.indexOf(j.status) < 0) {
          setTimeout(function () { refresh(el); }, 2000);
        } else if (el.id === "job" && el.dataset.reloaded !== "1" && el.dataset.ended !== "1") {
          el.dataset.reloaded = "1";
          window.location.reload();  // the ended job's failures, buttons and sheet
        } else if (reviewing(el)) {
          setTimeout(function () { refresh(el); }, 5000);
        }
      });
  }
  function reviewing(el) {
    return el.querySelector("[data-field^='review.']") !== null;
  }
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
                 t.isContentEditable);
  }
  function keys(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    var act = {a: "#approve", r: "#reject", j: "#next", k: "#prev", ArrowRight: "#next",
               ArrowLeft: "#prev"}[e.key];
    if (e.key === "n") {
      var note = document.getElementById("note");
      if (note) { e.preventDefault(); note.focus(); }
      return;
    }
    var target = act && document.querySelector(act);
    if (target) { e.preventDefault(); target.click(); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-job]").forEach(function (el) {
      var status = el.querySelector("[data-field=status]");
      if (status && ENDED.indexOf(status.textContent) < 0) {
        setTimeout(function () { refresh(el); }, 2000);
      } else if (status) {
        el.dataset.ended = "1";  // ended when shown: no reload, review progress only
        if (reviewing(el)) setTimeout(function () { refresh(el); }, 5000);
      }
    });
    if (document.getElementById("review")) document.addEventListener("keydown", keys);
  });
})();

// Live progress for the jobs list and a job's page: every element with data-job is refreshed
// from the JSON API every 2 s while its job runs. Values are set as text, never as HTML.
(function () {
  function duration(s) {  // as the pages' `duration` filter (scheduler/web/pages.py)
    if (s == null) return "-";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function refresh(el) {
    fetch("/jobs/" + encodeURIComponent(el.dataset.job), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) return;
        el.querySelectorAll("[data-field]").forEach(function (f) {
          var k = f.dataset.field;
          if (k === "bar") {
            var ended = j.total - j.pending - j.running;
            f.max = j.total || 1;
            f.value = j.total ? ended : 1;
          } else if (k === "eta") {
            f.textContent = duration(j.eta_seconds);
          } else if (k in j) {
            f.textContent = String(j[k]);
          }
        });
        if (["done", "failed", "cancelled"].indexOf(j.status) < 0) {
          setTimeout(function () { refresh(el); }, 2000);
        } else if (el.id === "job" && el.dataset.reloaded !== "1") {
          el.dataset.reloaded = "1";
          window.location.reload();  // the ended job's failures, buttons and sheet
        }
      });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-job]").forEach(function (el) {
      var status = el.querySelector("[data-field=status]");
      if (status && ["done", "failed", "cancelled"].indexOf(status.textContent) < 0) {
        setTimeout(function () { refresh(el); }, 2000);
      }
    });
  });
})();

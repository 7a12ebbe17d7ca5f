// bento panel: live updates by Server-Sent Events. Every page works without this
// file; with it, the regions marked data-live-region refresh when the server says
// something they show changed, and a running job's log grows line by line.
(function () {
  "use strict";
  var body = document.body;
  var live = body.dataset.live;

  // A running job's duration ticks: the server says how long it had run when it
  // rendered the element; the browser counts on from when it first saw it (its
  // clock may be off, its pace is not). Same format as the server's duration_ms.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function duration(ms) {
    ms = Math.max(0, ms);
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 3600000) return Math.floor(ms / 60000) + "m " + pad(Math.floor(ms / 1000) % 60) + "s";
    return Math.floor(ms / 3600000) + "h " + pad(Math.floor(ms / 60000) % 60) + "m";
  }
  function tick() {
    var now = performance.now();
    document.querySelectorAll("[data-elapsed-ms]").forEach(function (el) {
      if (!el.dataset.seenAt) el.dataset.seenAt = String(now);
      el.textContent = duration(Number(el.dataset.elapsedMs) + now - Number(el.dataset.seenAt));
    });
  }
  if (live || document.querySelector("[data-elapsed-ms]")) setInterval(tick, 1000);

  if (!live || !window.EventSource || !window.fetch || !window.DOMParser) return;

  var refreshing = false, again = false, timer = null, last = 0;
  var MIN_GAP = 400;

  function refresh() {
    timer = null;
    if (refreshing) { again = true; return; }
    refreshing = true;
    last = Date.now();
    // A redirect (the session ended: to the login) is not followed: the page
    // stays as it is until the user acts.
    fetch(location.href, { credentials: "same-origin", redirect: "manual", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.type === "opaqueredirect" || !r.ok) throw new Error("status " + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live-region]").forEach(function (el) {
          var fresh = el.id && doc.getElementById(el.id);
          if (fresh) el.replaceWith(document.importNode(fresh, true));
        });
      })
      .catch(function () { /* the next change or a reload will do */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (timer) return;
    var wait = Math.max(50, MIN_GAP - (Date.now() - last));
    timer = setTimeout(refresh, wait);
  }

  function concerns(c) {
    if (c.all) return live !== "job";
    if (live === "fleet") return c.hosts.length > 0;
    if (live === "host") return c.hosts.indexOf(body.dataset.host) >= 0 || c.jobs.length > 0;
    if (live === "jobs") return c.jobs.length > 0;
    if (live === "job") return c.jobs.indexOf(Number(body.dataset.job)) >= 0;
    return false;
  }

  var events = new EventSource("/events");
  // A change between this page's rendering and the stream's start (or its
  // reconnection) was announced to nobody here: look once more when it opens.
  events.addEventListener("open", function () { schedule(); });
  events.addEventListener("change", function (e) {
    try { if (concerns(JSON.parse(e.data))) schedule(); } catch (err) { /* ignore */ }
  });
  window.addEventListener("pagehide", function () { events.close(); });

  if (live === "job" && body.dataset.done !== "1") followLog();

  function followLog() {
    var log = document.getElementById("job-log");
    var seq = Number(body.dataset.seq || 0);
    var stream = new EventSource("/jobs/" + encodeURIComponent(body.dataset.job) + "/log?after=" + seq);
    stream.addEventListener("line", function (e) {
      var n = Number(e.lastEventId);
      if (n && n <= seq) return;
      seq = n || seq + 1;
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      var li = document.createElement("li");
      li.textContent = e.data;
      log.appendChild(li);
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
    stream.addEventListener("done", function () {
      stream.close();
      body.dataset.done = "1";
      var note = document.getElementById("job-live-note");
      if (note) note.remove();
      schedule();
    });
    window.addEventListener("pagehide", function () { stream.close(); });
  }
})();

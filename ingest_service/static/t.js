/* pixelpipe tracker. Plain JS, no build step.
 * <script async src="https://collector.example.com/t.js" data-site-id="shop-example-com"></script>
 * Optional: data-collector="https://collector.example.com" (default: where t.js came from),
 *           data-batch-size="20" (send after this many events; otherwise every 60 s).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__pixelpipe) return;
  var cfg = script.dataset || {};
  var base = (cfg.collector || new URL(script.src).origin).replace(/\/$/, "");
  var endpoint = base + "/collect";
  var siteId = cfg.siteId || undefined;
  var batchSize = parseInt(cfg.batchSize || "20", 10);
  var FLUSH_MS = 60000, SESSION_MS = 30 * 60000, MAX_QUEUE = 1000;
  var queue = [], timer = null, retryDelay = 1000;

  function id() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  function store(key, value) {
    try { if (value === undefined) return localStorage.getItem(key); localStorage.setItem(key, value); }
    catch (e) { return null; }
  }
  var visitorId = store("pp_vid") || id();
  store("pp_vid", visitorId);
  function sessionId() {
    var now = Date.now(), sid = store("pp_sid"), last = parseInt(store("pp_last") || "0", 10);
    if (!sid || now - last > SESSION_MS) sid = id();
    store("pp_sid", sid); store("pp_last", String(now));
    return sid;
  }

  function track(eventType, props) {
    var event = { eventType: eventType, timestamp: new Date().toISOString(), url: location.href,
                  path: location.pathname, referrer: document.referrer || undefined,
                  sessionId: sessionId(), visitorId: visitorId };
    if (siteId) event.siteId = siteId;
    for (var k in props || {}) event[k] = props[k];
    queue.push(event);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    if (queue.length >= batchSize) send(false); else schedule(FLUSH_MS);
  }
  function schedule(ms) { if (!timer) timer = setTimeout(function () { timer = null; send(false); }, ms); }
  function envelope(events) {
    return JSON.stringify({ eventType: "batch", siteId: siteId, visitorId: visitorId, events: events });
  }
  function send(leaving) {
    if (!queue.length) return;
    var events = queue.splice(0, queue.length);
    var body = envelope(events);
    if (leaving && navigator.sendBeacon) {
      // text/plain keeps the beacon a "simple" request: no CORS preflight while the page unloads.
      if (navigator.sendBeacon(endpoint, new Blob([body], { type: "text/plain" }))) return;
    }
    fetch(endpoint, { method: "POST", body: body, keepalive: leaving,
                      headers: { "Content-Type": "text/plain" }, credentials: "omit" })
      .then(function (r) {
        if (r.status >= 500 || r.status === 429) throw new Error("retry");
        retryDelay = 1000;  /* 2xx, or 4xx: dead-lettered by the collector, do not resend */
      })
      .catch(function () {
        queue = events.concat(queue).slice(-MAX_QUEUE);
        retryDelay = Math.min(retryDelay * 2, FLUSH_MS);
        schedule(retryDelay);
      });
  }

  var milestones = [25, 50, 75, 100], reached = {};
  function onScroll() {
    var doc = document.documentElement;
    var depth = Math.round(100 * (window.scrollY + window.innerHeight) / Math.max(doc.scrollHeight, 1));
    milestones.forEach(function (m) {
      if (depth >= m && !reached[m]) { reached[m] = true; track("scroll", { depth: m }); }
    });
  }
  function onClick(e) {
    var el = e.target && e.target.closest ? e.target.closest("a,button,[data-track]") : null;
    if (!el) return;
    track("click", { tag: el.tagName.toLowerCase(), text: (el.innerText || "").slice(0, 100),
                     href: el.href || undefined, trackId: el.getAttribute("data-track") || undefined });
  }

  window.__pixelpipe = { track: track, flush: function () { send(false); } };
  document.addEventListener("click", onClick, true);
  window.addEventListener("scroll", onScroll, { passive: true });
  window.addEventListener("pagehide", function () { send(true); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send(true);
  });
  track("pageview", { title: document.title });
})();

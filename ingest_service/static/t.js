/* pixelpipe tracker. Plain JS, no build step. Attributes: docs/tracker.md.
 * <script async src="https://collector.example.com/t.js" data-site-id="shop-example-com"></script>
 * data-collector, data-batch-size, data-cookieless, data-keep-query="ref,lang", data-spa="false",
 * data-track-text, data-ignore-dnt (the site owner's decision, not the visitor's).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__pixelpipe) return;
  var cfg = script.dataset || {}, nav = navigator;
  var noop = function () {};
  if ((nav.doNotTrack == "1" || nav.globalPrivacyControl) && cfg.ignoreDnt === undefined) {
    window.__pixelpipe = { track: noop, flush: noop };  /* the visitor said no: send nothing */
    return;
  }
  var base = (cfg.collector || new URL(script.src).origin).replace(/\/$/, "");
  var endpoint = base + "/collect";
  var siteId = cfg.siteId || undefined;
  var batchSize = parseInt(cfg.batchSize || "20", 10);
  var cookieless = cfg.cookieless !== undefined;
  var keep = (cfg.keepQuery || "").split(",").map(function (k) { return k.trim(); });
  var FLUSH_MS = 60000, SESSION_MS = 30 * 60000, MAX_QUEUE = 1000;
  var queue = [], timer = null, retryDelay = 1000;

  function id() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0;
      return (c == "x" ? r : (r & 3 | 8)).toString(16);
    });
  }
  function store(key, value) {
    if (cookieless) return null;  /* nothing is kept in the browser */
    try { if (value === undefined) return localStorage.getItem(key); localStorage.setItem(key, value); }
    catch (e) { return null; }
  }
  /* Origin and path, plus only utm_* and the data-keep-query parameters: no fragment, no tokens. */
  function clean(href) {
    try {
      var u = new URL(href), kept = new URLSearchParams();
      u.searchParams.forEach(function (v, k) { if (/^utm_/.test(k) || keep.indexOf(k) >= 0) kept.append(k, v); });
      var q = kept.toString();
      return u.origin + u.pathname + (q ? "?" + q : "");
    } catch (e) { return undefined; }
  }
  var visitorId = cookieless ? undefined : store("pp_vid") || id();
  store("pp_vid", visitorId);
  function sessionId() {
    if (cookieless) return undefined;
    var now = Date.now(), sid = store("pp_sid"), last = parseInt(store("pp_last") || "0", 10);
    if (!sid || now - last > SESSION_MS) sid = id();
    store("pp_sid", sid); store("pp_last", String(now));
    return sid;
  }

  function track(eventType, props) {
    var event = { eventId: id(), eventType: eventType, timestamp: new Date().toISOString(),
                  url: clean(location.href), path: location.pathname,
                  referrer: document.referrer ? clean(document.referrer) : undefined,
                  sessionId: sessionId(), visitorId: visitorId };
    if (siteId) event.siteId = siteId;
    for (var k in props || {}) event[k] = props[k];
    queue.push(event);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    if (queue.length >= batchSize) send(false); else schedule(FLUSH_MS);
  }
  function schedule(ms) { if (!timer) timer = setTimeout(function () { timer = null; send(false); }, ms); }
  function send(leaving) {
    if (!queue.length) return;
    var events = queue.splice(0, queue.length);
    var body = JSON.stringify({ eventType: "batch", siteId: siteId, visitorId: visitorId,
                                cookieless: cookieless || undefined, events: events });
    if (leaving && nav.sendBeacon) {
      /* text/plain keeps the beacon a "simple" request: no CORS preflight while the page unloads. */
      if (nav.sendBeacon(endpoint, new Blob([body], { type: "text/plain" }))) return;
    }
    fetch(endpoint, { method: "POST", body: body, keepalive: leaving,
                      headers: { "Content-Type": "text/plain" }, credentials: "omit" })
      .then(function (r) {
        if (r.status >= 500 || r.status === 429) throw new Error("retry");
        retryDelay = 1000;  /* 2xx, or 4xx: dead-lettered by the collector, do not resend */
      })
      .catch(function () {
        /* Re-sent with the same eventIds: if the first answer was lost after the commit, the
           export keeps one copy. */
        queue = events.concat(queue).slice(-MAX_QUEUE);
        schedule(retryDelay);
        retryDelay = Math.min(retryDelay * 2, FLUSH_MS);
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
    track("click", { tag: el.tagName.toLowerCase(),
                     text: cfg.trackText !== undefined ? (el.innerText || "").slice(0, 100) : undefined,
                     href: el.href ? clean(el.href) : undefined, trackId: el.getAttribute("data-track") || undefined });
  }
  var lastPath = location.pathname;
  function pageview() {
    lastPath = location.pathname; reached = {};
    /* What the daily analytics' sessions need (docs/analytics.md), and nothing more. */
    var sc = window.screen || {}, de = document.documentElement;
    track("pageview", { title: document.title, language: nav.language,
                        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
                        screenWidth: sc.width, screenHeight: sc.height,
                        viewportWidth: de.clientWidth, viewportHeight: de.clientHeight });
  }
  /* Single-page apps: a pageview on pushState, on replaceState that changes the path, on popstate. */
  if (cfg.spa !== "false") {
    ["pushState", "replaceState"].forEach(function (name) {
      var original = history[name];
      history[name] = function () {
        var result = original.apply(this, arguments);
        if (name == "pushState" || location.pathname != lastPath) pageview();
        return result;
      };
    });
    window.addEventListener("popstate", pageview);
  }

  window.__pixelpipe = { track: track, flush: function () { send(false); } };
  document.addEventListener("click", onClick, true);
  window.addEventListener("scroll", onScroll, { passive: true });
  window.addEventListener("pagehide", function () { send(true); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send(true);
  });
  pageview();
})();

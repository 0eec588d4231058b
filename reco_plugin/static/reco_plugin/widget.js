/* reco-plugin widget: keeps a server-rendered {% recommendations %} list live.
 *
 * Configuration comes from the JSON block named by data-reco-config (no inline
 * script, so it works under a Content Security Policy). The list is replaced
 * when the visitor's websocket pushes a newer one (each push has a version; an
 * older push never replaces a newer list); while the websocket is down, or
 * quiet when pinged, the API is polled instead. Live items are copies of the
 * page's <template data-reco-item> (the shop's own item.html), so the markup
 * stays the shop's. Focus stays on the item it was on across an update, and a
 * screen reader hears one polite "updated" notice. Clicks on recommended items are reported with the
 * reco_id and strategy they came from, and so are impressions: an item counts
 * as seen once half of it has been on screen in a visible tab; impressions are
 * sent in batches (at most every IMPRESSION_DELAY ms, and when the page is
 * hidden or left). While no list can be read at all (Redis away: the API's
 * answer is "degraded" with no items), the block is hidden rather than saying
 * "No recommendations yet." as for an empty shop; the first list read shows it.
 */
(function () {
  "use strict";
  if (window.RecoWidget) return;

  var IMPRESSION_DELAY = 2000;
  var MAX_BATCH = 50;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Close codes the server uses (reco_plugin.consumers).
  var FINAL_CLOSES = [4401, 4403, 4501];
  var PING_INTERVAL = 25000;
  var PONG_TIMEOUT = 10000;

  function setField(node, value) {
    if (value === undefined || value === null || value === "") {
      if (node.tagName !== "A") node.remove();
      return;
    }
    if (node.tagName === "IMG") node.src = value;
    else if (node.tagName === "A") node.href = value;
    else node.textContent = String(value);
  }

  function renderItem(template, item) {
    var li = template.content.firstElementChild.cloneNode(true);
    li.dataset.productId = item.product_id;
    li.dataset.strategy = item.strategy;
    li.dataset.propensity = item.propensity != null ? String(item.propensity) : "";
    var link = li.querySelector("[data-reco-id]") || li.querySelector("a");
    if (link) {
      link.dataset.recoId = item.reco_id;
      link.dataset.position = item.position;
    }
    li.querySelectorAll("[data-reco-field]").forEach(function (node) {
      setField(node, item[node.dataset.recoField] || (node.dataset.recoField === "url" ? "#" : ""));
    });
    return li;
  }

  function Widget(root) {
    this.root = root;
    this.list = root.querySelector("[data-reco-list]");
    this.config = JSON.parse(document.getElementById(root.dataset.recoConfig).textContent);
    // a page may tune the timings before the widget starts (window.RecoWidgetOptions)
    Object.assign(this.config, window.RecoWidgetOptions || {});
    this.template = root.querySelector("template[data-reco-item]");
    this.status = root.querySelector("[data-reco-status]");
    this.version = 0;
    this.pushed = 0;
    this.pushes = 0;
    this.pingTimer = null;
    this.pongTimer = null;
    this.socket = null;
    this.pollTimer = null;
    this.retryDelay = 1000;
    this.signature = this.currentSignature();
    this.seen = {};
    this.pending = [];
    this.flushTimer = null;
    root.addEventListener("click", this.onClick.bind(this));
    this.watchImpressions();
    this.connect();
  }

  Widget.prototype.watchImpressions = function () {
    if (!("IntersectionObserver" in window)) return;
    var self = this;
    this.observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting && entry.intersectionRatio >= 0.5 && document.visibilityState === "visible") {
          self.impression(entry.target);
        }
      });
    }, { threshold: 0.5 });
    this.observeItems();
    var flush = function () { self.flushImpressions(); };
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") flush();
      // Observing again reports what is on screen now that the tab is seen.
      else self.observeItems();
    });
    window.addEventListener("pagehide", flush);
  };

  Widget.prototype.observeItems = function () {
    if (!this.observer) return;
    this.observer.disconnect();
    var observer = this.observer;
    var seen = this.seen;
    this.list.querySelectorAll("[data-product-id]").forEach(function (li) {
      var link = li.querySelector("a[data-reco-id]");
      if (link && !seen[link.dataset.recoId + "|" + li.dataset.productId]) observer.observe(li);
    });
  };

  Widget.prototype.impression = function (li) {
    var link = li.querySelector("a[data-reco-id]");
    if (!link) return;
    var key = link.dataset.recoId + "|" + li.dataset.productId;
    if (this.seen[key]) return;
    this.seen[key] = true;
    this.observer.unobserve(li);
    this.pending.push({
      type: "impression",
      product_id: li.dataset.productId,
      context: {
        reco_id: link.dataset.recoId,
        strategy: li.dataset.strategy,
        propensity: li.dataset.propensity || "",
        position: String(link.dataset.position),
        page: location.pathname,
      },
    });
    if (this.pending.length >= MAX_BATCH) this.flushImpressions();
    else if (!this.flushTimer) this.flushTimer = setTimeout(this.flushImpressions.bind(this), IMPRESSION_DELAY);
  };

  Widget.prototype.flushImpressions = function () {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (!this.pending.length) return;
    var batch = this.pending.splice(0, MAX_BATCH);
    this.send({ events: batch });
    if (this.pending.length) this.flushImpressions();
  };

  // What a list is for the widget: its items, and the list (reco_id) and
  // strategy each came from, so that clicks and impressions report what was shown.
  function signatureOf(items) {
    return items.map(function (i) { return i.product_id + "|" + i.strategy + "|" + i.reco_id; }).join(",");
  }

  Widget.prototype.currentSignature = function () {
    return Array.prototype.map
      .call(this.list.querySelectorAll("[data-product-id]"), function (li) {
        var link = li.querySelector("[data-reco-id]");
        return li.dataset.productId + "|" + li.dataset.strategy + "|" + (link ? link.dataset.recoId : "");
      })
      .join(",");
  };

  Widget.prototype.render = function (items) {
    var signature = signatureOf(items);
    if (signature === this.signature) return;
    var focused = document.activeElement;
    var focusedItem = focused && this.list.contains(focused) ? focused.closest("[data-product-id]") : null;
    var keepFocus = focusedItem ? focusedItem.dataset.productId : null;
    var template = this.template;
    // keep the list's height while it is replaced: nothing below it jumps
    this.list.style.minHeight = this.list.offsetHeight + "px";
    var fragment = document.createDocumentFragment();
    if (!items.length) fragment.appendChild(el("li", "reco-widget__empty", this.config.empty));
    items.forEach(function (item) { fragment.appendChild(renderItem(template, item)); });
    this.list.replaceChildren(fragment);
    this.list.style.minHeight = "";
    if (keepFocus !== null) {
      var again = this.list.querySelector('[data-product-id="' + CSS.escape(keepFocus) + '"] a');
      (again || this.list.querySelector("a") || this.root).focus({ preventScroll: true });
    }
    if (this.status) this.status.textContent = this.config.updated || "Recommendations updated.";
    this.observeItems();
    this.signature = signature;
    this.version += 1;
    this.root.dataset.recoVersion = String(this.version);
    this.root.dispatchEvent(new CustomEvent("reco:updated", { detail: { items: items } }));
  };

  // Hidden while nothing could be read (the server renders it so too), shown
  // again with the first list read, even an empty one.
  Widget.prototype.unavailable = function () {
    this.root.hidden = true;
    this.root.dataset.recoUnavailable = "";
  };

  Widget.prototype.available = function () {
    if (!this.root.hidden) return;
    this.root.hidden = false;
    delete this.root.dataset.recoUnavailable;
  };

  Widget.prototype.connect = function () {
    // lists that are the same for everyone are not pushed: they are polled
    if (!this.config.ws) return this.startPolling(false);
    if (!("WebSocket" in window)) return this.startPolling(true);
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + this.config.ws);
    var self = this;
    this.socket = socket;
    socket.onopen = function () {
      self.retryDelay = 1000;
      self.stopPolling();
      self.root.dataset.recoLive = "websocket";
      // the current list comes back at once: also after a reconnect
      socket.send(JSON.stringify({
        type: "subscribe", product: self.config.product, limit: self.config.limit,
        exclude: self.config.exclude || [],
      }));
      self.pingTimer = setInterval(function () { self.ping(); }, self.config.pingInterval || PING_INTERVAL);
    };
    socket.onmessage = function (message) {
      if (self.pongTimer) clearTimeout(self.pongTimer);
      self.pongTimer = null;
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (data.type !== "recommendations") return;
      // pushes may cross on the way: an older list never replaces a newer one
      if (typeof data.version === "number") {
        if (data.version <= self.pushed) return;
        self.pushed = data.version;
      }
      self.pushes += 1;
      self.available();
      self.render(data.items || []);
    };
    socket.onclose = function (event) { self.lost(socket, event.code); };
  };

  Widget.prototype.lost = function (socket, code) {
    if (this.socket !== socket) return;
    var self = this;
    this.socket = null;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
    this.startPolling(true);
    this.root.dataset.recoClosed = String(code);
    // no channel layer, no visitor, or one who is not tracked: pushes will
    // never come on this page, polling it is
    if (FINAL_CLOSES.indexOf(code) >= 0) return;
    setTimeout(function () { self.connect(); }, this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 60000);
  };

  Widget.prototype.ping = function () {
    var socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: "ping" }));
    if (this.pongTimer) return;
    // a socket that cannot answer a ping is dead without knowing it (its close
    // handshake could take minutes): poll and reconnect now
    var self = this;
    this.pongTimer = setTimeout(function () {
      self.lost(socket, 0);
      socket.close();
    }, this.config.pongTimeout || PONG_TIMEOUT);
  };

  Widget.prototype.startPolling = function (now) {
    if (this.pollTimer) return;
    this.root.dataset.recoLive = "polling";
    this.pollTimer = setInterval(this.poll.bind(this), this.config.poll * 1000);
    // after a lost socket: what changed meanwhile, at once
    if (now) this.poll();
  };

  Widget.prototype.stopPolling = function () {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  };

  Widget.prototype.poll = function () {
    var params = new URLSearchParams(this.config.params || {});
    params.set("limit", this.config.limit);
    // the browser revalidates with the list's ETag: an unchanged list is a 304
    var self = this;
    var pushesBefore = this.pushes;
    fetch(this.config.api + "?" + params.toString(), { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        // a push that came meanwhile is newer than this answer
        if (self.pushes !== pushesBefore) return;
        if (data.degraded) {
          // a fallback served while Redis is away does not replace a real list...
          if (self.signature) return;
          // ...and when there is none either, the block is hidden: the shop is
          // not empty, its recommendations could not be read
          if (!(data.items || []).length) return self.unavailable();
        }
        self.available();
        self.render(data.items || []);
      })
      .catch(function () { /* next poll tries again */ });
  };

  Widget.prototype.onClick = function (event) {
    var link = event.target.closest("a[data-reco-id]");
    if (!link || !this.root.contains(link)) return;
    var item = link.closest("[data-product-id]");
    this.flushImpressions();
    this.send({
      type: "click",
      product_id: item.dataset.productId,
      context: {
        reco_id: link.dataset.recoId,
        strategy: item.dataset.strategy,
        propensity: item.dataset.propensity || "",
        position: String(link.dataset.position),
        page: location.pathname,
      },
    });
  };

  Widget.prototype.csrfToken = function () {
    var name = this.config.csrfCookie;
    if (name) {
      var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
      if (found) return decodeURIComponent(found.slice(name.length + 1));
    }
    return this.config.csrf;
  };

  Widget.prototype.send = function (event) {
    // keepalive lets the request finish while the browser follows the link.
    fetch(this.config.events, {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
      headers: { "Content-Type": "application/json", "X-CSRFToken": this.csrfToken() },
      body: JSON.stringify(event),
    }).catch(function () { /* a lost click is not worth an error */ });
  };

  window.RecoWidget = Widget;
  function start() {
    document.querySelectorAll("[data-reco-widget]").forEach(function (root) {
      if (!root.recoWidget) root.recoWidget = new Widget(root);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

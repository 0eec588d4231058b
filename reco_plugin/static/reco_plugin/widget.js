/* reco-plugin widget: keeps a server-rendered {% recommendations %} list live.
 *
 * Configuration comes from the JSON block named by data-reco-config (no inline
 * script, so it works under a Content Security Policy). The list is replaced
 * when the visitor's websocket pushes a new one; while the websocket is down
 * the API is polled instead. Clicks on recommended items are reported with the
 * reco_id and strategy they came from, and so are impressions: an item counts
 * as seen once half of it has been on screen in a visible tab; impressions are
 * sent in batches (at most every IMPRESSION_DELAY ms, and when the page is
 * hidden or left).
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

  function renderItem(item) {
    var li = el("li", "reco-item");
    li.dataset.productId = item.product_id;
    li.dataset.strategy = item.strategy;
    if (item.propensity != null) li.dataset.propensity = String(item.propensity);
    var a = el("a", "reco-item__link");
    a.href = item.url || "#";
    a.dataset.recoId = item.reco_id;
    a.dataset.position = item.position;
    if (item.image) {
      var img = el("img", "reco-item__image");
      img.src = item.image;
      img.alt = "";
      img.loading = "lazy";
      a.appendChild(img);
    }
    a.appendChild(el("span", "reco-item__title", item.title));
    if (item.price) a.appendChild(el("span", "reco-item__price", item.price));
    li.appendChild(a);
    return li;
  }

  function Widget(root) {
    this.root = root;
    this.list = root.querySelector("[data-reco-list]");
    this.config = JSON.parse(document.getElementById(root.dataset.recoConfig).textContent);
    this.version = 0;
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

  Widget.prototype.currentSignature = function () {
    return Array.prototype.map
      .call(this.list.querySelectorAll("[data-product-id]"), function (li) {
        return li.dataset.productId;
      })
      .join(",");
  };

  Widget.prototype.render = function (items) {
    var signature = items.map(function (i) { return i.product_id; }).join(",");
    if (signature === this.signature) return;
    var fragment = document.createDocumentFragment();
    if (!items.length) fragment.appendChild(el("li", "reco-widget__empty", "No recommendations yet."));
    items.forEach(function (item) { fragment.appendChild(renderItem(item)); });
    this.list.replaceChildren(fragment);
    this.observeItems();
    this.signature = signature;
    this.version += 1;
    this.root.dataset.recoVersion = String(this.version);
    this.root.dispatchEvent(new CustomEvent("reco:updated", { detail: { items: items } }));
  };

  Widget.prototype.connect = function () {
    if (!("WebSocket" in window)) return this.startPolling();
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + this.config.ws);
    var self = this;
    this.socket = socket;
    socket.onopen = function () {
      self.retryDelay = 1000;
      self.stopPolling();
      self.root.dataset.recoLive = "websocket";
      socket.send(JSON.stringify({ type: "subscribe", product: self.config.product, limit: self.config.limit }));
    };
    socket.onmessage = function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (data.type === "recommendations") self.render(data.items || []);
    };
    socket.onclose = function () {
      self.socket = null;
      self.startPolling();
      setTimeout(function () { self.connect(); }, self.retryDelay);
      self.retryDelay = Math.min(self.retryDelay * 2, 60000);
    };
  };

  Widget.prototype.startPolling = function () {
    if (this.pollTimer) return;
    this.root.dataset.recoLive = "polling";
    this.pollTimer = setInterval(this.poll.bind(this), this.config.poll * 1000);
  };

  Widget.prototype.stopPolling = function () {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  };

  Widget.prototype.poll = function () {
    var params = new URLSearchParams({ limit: this.config.limit });
    if (this.config.product) params.set("product", this.config.product);
    var self = this;
    fetch(this.config.api + "?" + params.toString(), { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) self.render(data.items || []); })
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

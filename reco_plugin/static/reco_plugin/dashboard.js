/* The admin dashboard: fetches its data every few seconds and draws it with Chart.js. */
(function () {
  "use strict";
  var root = document.getElementById("reco-dashboard");
  if (!root || typeof Chart === "undefined") { return; }
  var status = document.getElementById("reco-dashboard-status");
  var url = root.dataset.url;
  var every = Number(root.dataset.refreshSeconds || 10) * 1000;
  var charts = {};
  var palette = ["#417690", "#e08e0b", "#2e7d32", "#c62828", "#6a1b9a", "#00838f", "#795548", "#546e7a", "#ad1457"];

  function time(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString();
  }

  // the time, and the date too when it is not today's
  function timeOrDateTime(seconds) {
    var at = new Date(seconds * 1000);
    return at.toDateString() === new Date().toDateString() ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function draw(id, type, labels, datasets, options) {
    var chart = charts[id];
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update("none");
      return;
    }
    charts[id] = new Chart(document.getElementById(id), {
      type: type,
      data: { labels: labels, datasets: datasets },
      options: Object.assign({ animation: false, maintainAspectRatio: false, responsive: true }, options || {}),
    });
  }

  function line(label, values, n, axis) {
    return { label: label, data: values, borderColor: palette[n % palette.length],
             backgroundColor: palette[n % palette.length], pointRadius: 0, tension: 0.2,
             yAxisID: axis || "y" };
  }

  function render(data) {
    var batches = data.batches || [];
    var labels = batches.map(function (b) { return time(b.at); });
    draw("reco-chart-events", "line", labels, (data.topics || []).map(function (topic, n) {
      return line(topic, batches.map(function (b) { return b.events_per_second[topic]; }), n);
    }));
    draw("reco-chart-batches", "line", labels, [
      line("duration (s)", batches.map(function (b) { return b.seconds; }), 0),
      line("input (records/s)", batches.map(function (b) { return b.rows_per_second; }), 1, "rate"),
    ], { scales: { y: { position: "left" }, rate: { position: "right", grid: { drawOnChartArea: false } } } });
    // on a log scale: a catch-up's minutes and a live shop's fraction of a
    // second are both read off it (a linear axis drew the live batches flat at 0)
    draw("reco-chart-freshness", "line", labels, [
      // (a newest event stamped ahead of the job's clock is drawn at 1 ms; a
      // live batch between catch-up batches, which have none, as a point)
      Object.assign(line("freshness (ms)", batches.map(function (b) {
        return b.freshness_ms == null ? null : Math.max(b.freshness_ms, 1);  // null or undefined
      }), 2), { spanGaps: true, pointRadius: 1.5 }),
    ], { scales: { y: { type: "logarithmic" } } });
    var lag = data.lag || [];
    draw("reco-chart-lag", "line", lag.map(function (s) { return time(s.at); }), [
      line("lag", lag.map(function (s) { return s.total; }), 3),
    ]);
    var names = Object.keys(data.strategies || {});
    draw("reco-chart-strategies", "bar", names, [
      { label: "CTR", data: names.map(function (s) { return data.strategies[s].ctr; }), backgroundColor: palette[0] },
      { label: "conversion (purchases per click)", data: names.map(function (s) { return data.strategies[s].conversion; }), backgroundColor: palette[2] },
      { label: "belief (success rate)", data: names.map(function (s) { return data.strategies[s].belief; }), backgroundColor: palette[1] },
      { label: "share of the blend", data: names.map(function (s) { return data.strategies[s].share; }), backgroundColor: palette[3] },
    ]);
    var experiment = data.experiment;
    var arms = experiment ? experiment.arms : [];
    document.getElementById("reco-experiment-caption").textContent = experiment
      ? "Experiment “" + experiment.name + "”: CTR and conversion by arm"
      : "Experiment: none running";
    draw("reco-chart-experiment", "bar", arms.map(function (a) { return a.name; }), [
      { label: "CTR", data: arms.map(function (a) { return a.ctr; }), backgroundColor: palette[0] },
      { label: "conversion (buyers per exposed visitor)", data: arms.map(function (a) { return a.conversion; }), backgroundColor: palette[2] },
    ]);
    renderRanker(data.ranker);
    status.textContent = batches.length + " batches, " + lag.length + " samples; updated " +
      new Date().toLocaleTimeString() + ", every " + every / 1000 + " s.";
  }

  function number(value) {
    return value === null || value === undefined ? "" : value.toFixed(3);
  }

  function fill(table, rows) {
    var body = table.tBodies[0];
    body.replaceChildren();
    rows.forEach(function (cells) {
      var tr = body.insertRow();
      cells.forEach(function (value, n) {
        var td = tr.insertCell();
        td.textContent = n === 0 ? value : number(value);
        if (n > 0) { td.className = "reco-number"; }
      });
    });
    table.hidden = rows.length === 0;
  }

  function renderRanker(model) {
    var metrics = model ? model.metrics : [];
    var state = model
      ? "Learnt from " + model.examples + " examples (served once it has " + model.warm_examples +
        "; the job's setting: " + model.ranking + "), " + metrics.length + " batches measured."
      : "The ranker has not learnt yet.";
    document.getElementById("reco-ranker-state").textContent = state;
    document.getElementById("reco-ranker-no-weights").hidden = Boolean(model);
    // the batches' event time: a replay or a backfill learns from days ago
    draw("reco-chart-ranker", "line", metrics.map(function (m) {
      return m.at ? timeOrDateTime(m.at) : "";
    }), [
      line("log loss", metrics.map(function (m) { return m.log_loss; }), 3),
      line("AUC", metrics.map(function (m) { return m.auc; }), 0, "auc"),
    ], { scales: { y: { position: "left" }, auc: { position: "right", min: 0, max: 1, grid: { drawOnChartArea: false } } } });
    fill(document.getElementById("reco-ranker-strategies"), (model ? model.strategies : []).map(function (s) {
      return [s.strategy, s.listed, s.rank, s.score];
    }));
    fill(document.getElementById("reco-ranker-features"), (model ? model.features : []).map(function (f) {
      return [f.label, f.weight];
    }));
  }

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) { throw new Error(body.error || ("HTTP " + response.status)); }
          return body;
        });
      })
      .then(render)
      .catch(function (error) { status.textContent = "Not updated: " + error.message + " (trying again)."; })
      .then(function () { window.setTimeout(refresh, every); });
  }
  refresh();
})();

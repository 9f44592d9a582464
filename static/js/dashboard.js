// Draws the dashboard charts from the JSON that the "charts" partial embeds
// (json_script), and again whenever HTMX swaps that partial for another period.
(function () {
  "use strict";
  const charts = [];
  const palette = ["#2457d6", "#8e44ad", "#16a085", "#e67e22", "#c0392b", "#2c3e50", "#7f8c8d"];

  function dollars(value) {
    if (value === 0) return "$0";
    if (Math.abs(value) < 0.01) return "$" + value.toPrecision(2);
    return "$" + value.toFixed(2);
  }

  function draw() {
    const source = document.getElementById("chart-data");
    if (!source || typeof Chart === "undefined") return;
    const data = JSON.parse(source.textContent);
    while (charts.length) charts.pop().destroy();
    const spendCanvas = document.getElementById("spend-chart");
    const savedCanvas = document.getElementById("saved-chart");
    if (!spendCanvas || !savedCanvas) return; // empty state
    const money = { callbacks: { label: (ctx) => ctx.dataset.label + ": " + dollars(ctx.parsed.y) } };
    const axis = { ticks: { callback: (v) => dollars(v) }, beginAtZero: true };
    charts.push(new Chart(spendCanvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.spend.map((s, i) => ({ label: s.model, data: s.usd, backgroundColor: palette[i % palette.length], stack: "spend" })),
      },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { title: { display: true, text: "Spend per day by model" }, tooltip: money },
        scales: { x: { stacked: true }, y: Object.assign({ stacked: true }, axis) } },
    }));
    charts.push(new Chart(savedCanvas, {
      type: "bar",
      data: { labels: data.labels, datasets: [{ label: "Saved by cache", data: data.saved, backgroundColor: "#1a7f37" }] },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { title: { display: true, text: "$ saved by cache per day" }, legend: { display: false }, tooltip: money },
        scales: { y: axis } },
    }));
    document.documentElement.dataset.chartsDrawn = String(data.days);
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target && event.target.id === "charts") draw();
  });
})();

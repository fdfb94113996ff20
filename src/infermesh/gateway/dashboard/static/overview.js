// Overview: the spend charts, by hour and by day (drawn by charts.js from the numbers in
// each chart's data-chart attribute).
"use strict";

(() => {
  const charts = window.infermeshCharts;
  if (!charts) return;
  charts.draw("chart", (data) => ({
    bucket: data.bucket,
    time: data.time,
    money: { label: "Spend", verb: "spent", stroke: charts.color("--accent", "#2456d6"),
      values: data.cost, text: data.costText },
    counts: [
      { label: "Requests", noun: "requests", stroke: charts.color("--good", "#1d7a3e"),
        values: data.requests },
      // On a scale of its own, without an axis, hidden until its legend entry is clicked
      // (its values still show in the legend).
      { label: "Tokens", noun: "tokens", stroke: charts.color("--muted", "#5d6270"),
        values: data.tokens, scale: "tokens", width: 1.5, dash: [4, 4], show: false },
    ],
  }));
})();

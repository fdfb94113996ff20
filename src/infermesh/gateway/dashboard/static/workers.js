// Workers: the operator's earnings by UTC day (drawn by charts.js from the numbers in the
// chart's data-earnings attribute).
"use strict";

(() => {
  const charts = window.infermeshCharts;
  if (!charts) return;
  charts.draw("earnings", (data) => ({
    bucket: "day",
    time: data.time,
    money: { label: "Earned", verb: "earned", stroke: charts.color("--good", "#1d7a3e"),
      values: data.earned, text: data.earnedText },
    counts: [
      { label: "Requests", noun: "requests", stroke: charts.color("--accent", "#2456d6"),
        values: data.requests },
    ],
  }));
})();

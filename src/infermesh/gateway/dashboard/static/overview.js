// Overview: draws each spend chart with uPlot from the numbers of the table under it
// (handed over in the chart's data-chart attribute). Without this script, or without
// uPlot, the tables show the same numbers. Left/Right/Home/End step through a chart.
"use strict";

(() => {
  if (typeof uPlot === "undefined") return;
  const HEIGHT = 240;
  const STEP = { hour: 3600, day: 86400 };
  const styles = getComputedStyle(document.documentElement);
  const color = (name, fallback) => styles.getPropertyValue(name).trim() || fallback;
  const translucent = (hex, alpha) => (/^#[0-9a-f]{6}$/i.test(hex) ? hex + alpha : hex);
  const count = (value) => (value == null ? "–" : Math.round(value).toLocaleString());

  for (const holder of document.querySelectorAll("[data-chart]")) {
    let data;
    try {
      data = JSON.parse(holder.dataset.chart);
    } catch (error) {
      continue; // the table still shows every number
    }
    holder.hidden = false;
    draw(holder, data);
    const table = document.getElementById(holder.dataset.table);
    if (table) table.open = false;
  }

  function timeLabel(data, index) {
    const when = new Date(data.time[index] * 1000);
    if (data.bucket === "day") {
      return when.toLocaleDateString(undefined, {
        timeZone: "UTC", year: "numeric", month: "short", day: "numeric",
      });
    }
    return when.toLocaleString(undefined, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    });
  }

  function options(holder, data) {
    const step = STEP[data.bucket] || 3600;
    const fg = color("--muted", "#5d6270");
    const grid = { stroke: color("--line", "#d9dbe1"), width: 1 };
    const accent = color("--accent", "#2456d6");
    const fromZero = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
    const opts = {
      width: holder.clientWidth || 600,
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] },
        usd: { range: fromZero },
        count: { range: fromZero },
        tokens: { range: fromZero },
      },
      series: [
        { label: data.bucket === "day" ? "Day" : "Hour",
          value: (u, v, s, i) => (i == null ? "–" : timeLabel(data, i)) },
        { label: "Spend", scale: "usd", stroke: accent, fill: translucent(accent, "66"),
          width: 1, points: { show: false },
          paths: uPlot.paths.bars({ size: [0.7, 48] }),
          value: (u, v, s, i) => (i == null ? "–" : data.costText[i]) },
        { label: "Requests", scale: "count", stroke: color("--good", "#1d7a3e"), width: 2,
          points: { show: false }, value: (u, v) => count(v) },
        // On a scale of its own, without an axis, hidden until its legend entry is clicked
        // (its values still show in the legend).
        { label: "Tokens", scale: "tokens", stroke: fg, width: 1.5, dash: [4, 4], show: false,
          points: { show: false }, value: (u, v) => count(v) },
      ],
      axes: [
        { stroke: fg, grid, ticks: grid },
        { scale: "usd", stroke: fg, grid, ticks: grid, size: 72,
          values: (u, splits) => splits.map((v) => "$" + Number(v.toPrecision(6))) },
        { scale: "count", side: 1, stroke: fg, grid: { show: false }, ticks: grid,
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? count(v) : "")) },
      ],
    };
    if (data.bucket === "day") {
      opts.tzDate = (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC");
    }
    return opts;
  }

  function draw(holder, data) {
    const columns = [data.time, data.cost, data.requests, data.tokens];
    const plot = new uPlot(options(holder, data), columns, holder);
    let width = holder.clientWidth;
    new ResizeObserver(() => {
      if (holder.clientWidth === width) return;
      width = holder.clientWidth;
      plot.setSize({ width, height: HEIGHT });
    }).observe(holder);
    steppable(holder, plot, data);
  }

  function steppable(holder, plot, data) {
    const readout = document.getElementById(holder.dataset.readout);
    const last = data.time.length - 1;
    const show = (index) => {
      plot.setCursor({
        left: plot.valToPos(data.time[index], "x"),
        top: plot.valToPos(data.cost[index], "usd"),
      });
      if (!readout) return;
      readout.hidden = false;
      readout.textContent = `${timeLabel(data, index)}: ${data.costText[index]} spent, ` +
        `${count(data.requests[index])} requests, ${count(data.tokens[index])} tokens`;
    };
    const moves = {
      ArrowLeft: (i) => Math.max(i - 1, 0),
      ArrowRight: (i) => Math.min(i + 1, last),
      Home: () => 0,
      End: () => last,
    };
    holder.addEventListener("keydown", (event) => {
      const move = moves[event.key];
      if (!move || last < 0) return;
      event.preventDefault();
      show(move(plot.cursor.idx == null ? last : plot.cursor.idx));
    });
    holder.addEventListener("focus", () => {
      if (last >= 0) show(plot.cursor.idx == null ? last : plot.cursor.idx);
    });
  }
})();

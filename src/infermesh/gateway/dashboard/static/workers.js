// Workers: draws the operator's earnings by day with uPlot (vendored), from the numbers
// of the table under the chart (handed over in its data-earnings attribute). Without
// this script, or without uPlot, the table shows the same numbers. Left/Right/Home/End
// step through the days.
"use strict";

(() => {
  if (typeof uPlot === "undefined") return;
  const HEIGHT = 240;
  const DAY = 86400;
  const styles = getComputedStyle(document.documentElement);
  const color = (name, fallback) => styles.getPropertyValue(name).trim() || fallback;
  const translucent = (hex, alpha) => (/^#[0-9a-f]{6}$/i.test(hex) ? hex + alpha : hex);
  const count = (value) => (value == null ? "–" : Math.round(value).toLocaleString());

  for (const holder of document.querySelectorAll("[data-earnings]")) {
    let data;
    try {
      data = JSON.parse(holder.dataset.earnings);
    } catch (error) {
      continue; // the table still shows every number
    }
    holder.hidden = false;
    draw(holder, data);
    const table = document.getElementById(holder.dataset.table);
    if (table) table.open = false;
  }

  function dayLabel(data, index) {
    return new Date(data.time[index] * 1000).toLocaleDateString(undefined, {
      timeZone: "UTC", year: "numeric", month: "short", day: "numeric",
    });
  }

  function options(holder, data) {
    const fg = color("--muted", "#5d6270");
    const grid = { stroke: color("--line", "#d9dbe1"), width: 1 };
    const good = color("--good", "#1d7a3e");
    const fromZero = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
    return {
      width: holder.clientWidth || 600,
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"),
      scales: {
        x: { time: true, range: (u, min, max) => [min - DAY / 2, max + DAY / 2] },
        usd: { range: fromZero },
        count: { range: fromZero },
      },
      series: [
        { label: "Day", value: (u, v, s, i) => (i == null ? "–" : dayLabel(data, i)) },
        { label: "Earned", scale: "usd", stroke: good, fill: translucent(good, "66"),
          width: 1, points: { show: false },
          paths: uPlot.paths.bars({ size: [0.7, 48] }),
          value: (u, v, s, i) => (i == null ? "–" : data.earnedText[i]) },
        { label: "Requests", scale: "count", stroke: color("--accent", "#2456d6"), width: 2,
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
  }

  function draw(holder, data) {
    const plot = new uPlot(options(holder, data), [data.time, data.earned, data.requests], holder);
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
        top: plot.valToPos(data.earned[index], "usd"),
      });
      if (!readout) return;
      readout.hidden = false;
      readout.textContent = `${dayLabel(data, index)}: ${data.earnedText[index]} earned, ` +
        `${count(data.requests[index])} requests`;
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

// The dashboard's charts, drawn with uPlot (vendored) from the numbers of the table under
// each chart, which the page hands over as JSON in a data- attribute of the chart. Each
// is money as bars over hours or UTC days, with counts as lines; Left/Right/Home/End step
// through a focused chart and its readout says the point's numbers. Without this script,
// or without uPlot, the tables show the same numbers. A page's script (overview.js,
// workers.js) says what its charts show, through window.infermeshCharts.draw.
"use strict";

window.infermeshCharts = (() => {
  if (typeof uPlot === "undefined") return null;
  const HEIGHT = 240;
  const STEP = { hour: 3600, day: 86400 };
  const styles = getComputedStyle(document.documentElement);
  const color = (name, fallback) => styles.getPropertyValue(name).trim() || fallback;
  const translucent = (hex, alpha) => (/^#[0-9a-f]{6}$/i.test(hex) ? hex + alpha : hex);
  const count = (value) => (value == null ? "–" : Math.round(value).toLocaleString());
  const fromZero = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];

  // Draws each chart whose numbers are in its data-`attribute`; `describe(data)` says
  // what it shows: {
  //   bucket: "hour" or "day" (UTC days),
  //   time: the start of each bucket, in seconds,
  //   money: { label, verb ("spent"), stroke, values (USD), text (as the table writes them) },
  //   counts: [{ label, noun ("requests"), values, ...more uPlot series options }],
  // }
  function draw(attribute, describe) {
    for (const holder of document.querySelectorAll(`[data-${attribute}]`)) {
      let data;
      try {
        data = JSON.parse(holder.dataset[attribute]);
      } catch (error) {
        continue; // the table still shows every number
      }
      holder.hidden = false;
      plot(holder, describe(data));
      const table = document.getElementById(holder.dataset.table);
      if (table) table.open = false;
    }
  }

  function timeLabel(chart, index) {
    const when = new Date(chart.time[index] * 1000);
    if (chart.bucket === "day") {
      return when.toLocaleDateString(undefined, {
        timeZone: "UTC", year: "numeric", month: "short", day: "numeric",
      });
    }
    return when.toLocaleString(undefined, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    });
  }

  function options(holder, chart) {
    const step = STEP[chart.bucket] || 3600;
    const fg = color("--muted", "#5d6270");
    const grid = { stroke: color("--line", "#d9dbe1"), width: 1 };
    const { money } = chart;
    const scales = {
      x: { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] },
      usd: { range: fromZero },
      count: { range: fromZero },
    };
    const counts = chart.counts.map(({ values, noun, ...series }) => {
      if (series.scale) scales[series.scale] = { range: fromZero };
      return { scale: "count", width: 2, points: { show: false }, value: (u, v) => count(v), ...series };
    });
    const opts = {
      width: holder.clientWidth || 600,
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      scales,
      series: [
        { label: chart.bucket === "day" ? "Day" : "Hour",
          value: (u, v, s, i) => (i == null ? "–" : timeLabel(chart, i)) },
        { label: money.label, scale: "usd", stroke: money.stroke, fill: translucent(money.stroke, "66"),
          width: 1, points: { show: false },
          paths: uPlot.paths.bars({ size: [0.7, 48] }),
          value: (u, v, s, i) => (i == null ? "–" : money.text[i]) },
        ...counts,
      ],
      axes: [
        { stroke: fg, grid, ticks: grid },
        { scale: "usd", stroke: fg, grid, ticks: grid, size: 72,
          values: (u, splits) => splits.map((v) => "$" + Number(v.toPrecision(6))) },
        { scale: "count", side: 1, stroke: fg, grid: { show: false }, ticks: grid,
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? count(v) : "")) },
      ],
    };
    if (chart.bucket === "day") {
      opts.tzDate = (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC");
    }
    return opts;
  }

  function plot(holder, chart) {
    const columns = [chart.time, chart.money.values, ...chart.counts.map((line) => line.values)];
    const drawn = new uPlot(options(holder, chart), columns, holder);
    let width = holder.clientWidth;
    new ResizeObserver(() => {
      if (holder.clientWidth === width) return;
      width = holder.clientWidth;
      drawn.setSize({ width, height: HEIGHT });
    }).observe(holder);
    steppable(holder, drawn, chart);
  }

  function steppable(holder, drawn, chart) {
    const readout = document.getElementById(holder.dataset.readout);
    const last = chart.time.length - 1;
    const show = (index) => {
      drawn.setCursor({
        left: drawn.valToPos(chart.time[index], "x"),
        top: drawn.valToPos(chart.money.values[index], "usd"),
      });
      if (!readout) return;
      readout.hidden = false;
      const counts = chart.counts.map((line) => `${count(line.values[index])} ${line.noun}`);
      readout.textContent = `${timeLabel(chart, index)}: ${chart.money.text[index]} ` +
        `${chart.money.verb}, ${counts.join(", ")}`;
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
      show(move(drawn.cursor.idx == null ? last : drawn.cursor.idx));
    });
    holder.addEventListener("focus", () => {
      if (last >= 0) show(drawn.cursor.idx == null ? last : drawn.cursor.idx);
    });
  }

  return { draw, color };
})();

// Billing: keeps the balance, the deposits and the ledger current while a deposit is
// under way (the deposits section says so with data-pending), by fetching them as a
// fragment of the page every few seconds; and puts in the fragment that wallet.js gets
// back after a top-up. Without this script the page shows them as they were, with a link
// to refresh.
"use strict";

(() => {
  const root = document.getElementById("billing");
  if (!root) return;
  const EVERY_MS = 2000;

  function localTimes(part) {
    for (const time of part.querySelectorAll("time[datetime]")) {
      const when = new Date(time.getAttribute("datetime"));
      if (!Number.isNaN(when.getTime())) {
        time.title = time.getAttribute("datetime");
        time.textContent = when.toLocaleString();
      }
    }
  }

  // Each top-level element of the fragment replaces the page's element of the same id.
  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    for (const part of Array.from(template.content.children)) {
      const current = part.id && document.getElementById(part.id);
      if (!current) continue;
      localTimes(part);
      current.replaceWith(part);
    }
  }

  async function refresh() {
    if (!document.querySelector("#billing-deposits[data-pending]")) return;
    try {
      const response = await fetch(root.dataset.liveUrl, { credentials: "same-origin" });
      if (response.ok && !response.redirected) swap(await response.text());
    } catch (error) {
      // the gateway did not answer: try again at the next tick
    }
  }

  document.addEventListener("infermesh:billing", (event) => swap(event.detail));

  async function tick() {
    await refresh();
    window.setTimeout(tick, EVERY_MS);
  }
  window.setTimeout(tick, EVERY_MS);
})();

// taskq dashboard: refresh the page's <main> from the server every few seconds, and
// send retry/purge clicks with the token. The server renders (and escapes) all HTML.
"use strict";
(() => {
  const main = document.getElementById("content");
  const status = document.getElementById("status");
  const message = document.getElementById("message");
  const tokenInput = document.getElementById("token");
  const every = Number(document.body.dataset.refreshMs) || 2000;
  const TOKEN_KEY = "taskq-dashboard-token";

  // `status` tells how the last refresh went; `message` what the last click did.
  function show(element, text, isError) {
    element.textContent = text;
    element.className = isError ? "error" : "muted";
  }

  if (tokenInput) {
    tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
    tokenInput.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tokenInput.value));
  }

  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    const selection = window.getSelection();
    if (selection && !selection.isCollapsed && main.contains(selection.anchorNode)) return;
    busy = true;
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    try {
      const reply = await fetch(url, { cache: "no-store" });
      const html = await reply.text();
      const open = Array.from(main.querySelectorAll("details[open]"), (d) => d.id);
      main.innerHTML = html;
      for (const id of open) {
        const details = id && document.getElementById(id);
        if (details) details.open = true;
      }
      if (reply.ok || reply.status === 404) show(status, "updated " + new Date().toLocaleTimeString(), false);
      else show(status, "refresh failed: HTTP " + reply.status, true);
    } catch (err) {
      show(status, "refresh failed: " + err.message, true);
    } finally {
      busy = false;
    }
  }

  main.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const body = { queue: button.dataset.queue };
    if (button.dataset.id !== undefined) body.id = button.dataset.id;
    button.disabled = true;
    try {
      const reply = await fetch("api/dead/" + encodeURIComponent(button.dataset.action), {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          "X-Taskq-Token": tokenInput ? tokenInput.value : "",
        },
        body: JSON.stringify(body),
      });
      const answer = await reply.json().catch(() => ({ message: "HTTP " + reply.status }));
      show(message, answer.message, !reply.ok);
    } catch (err) {
      show(message, button.dataset.action + " failed: " + err.message, true);
    } finally {
      button.disabled = false;
    }
    await refresh();
  });

  setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();

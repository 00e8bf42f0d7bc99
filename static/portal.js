// Progressive enhancement only: every page works without this file. Visible words come from
// the page's data-* attributes, so they are in the page's language.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-toggles]")) {
    const input = document.getElementById(button.dataset.toggles);
    const showLabel = button.textContent;
    button.hidden = false;
    button.addEventListener("click", () => {
      const show = input.type === "password";
      input.type = show ? "text" : "password";
      button.textContent = show ? button.dataset.hideLabel : showLabel;
      button.setAttribute("aria-pressed", String(show));
    });
  }

  // A second click would send the same signup again; the server copes, but why wait twice.
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
    });
  }

  // The error summary has autofocus; some browsers skip it on a page restored from history.
  const summary = document.querySelector(".error-summary");
  if (summary && document.activeElement === document.body) summary.focus();
  // A link in the summary moves focus into its field (an anchor alone only scrolls to it).
  for (const link of document.querySelectorAll(".error-summary a[href^='#']")) {
    link.addEventListener("click", (event) => {
      const input = document.getElementById(link.getAttribute("href").slice(1));
      if (!input) return;
      event.preventDefault();
      input.focus();
      const label = document.querySelector(`label[for="${input.id}"]`);
      (label || input).scrollIntoView({ block: "center" });
    });
  }

  for (const button of document.querySelectorAll("button[data-copies]")) {
    const source = document.getElementById(button.dataset.copies);
    const status = button.closest(".key-box").querySelector(".copy-status");
    if (!navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      status.textContent = "";  // so that a second copy is announced again
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        status.textContent = button.dataset.copied;
      } catch {
        status.textContent = button.dataset.copyFailed;
      }
    });
  }

  // A blob: URL, not a data: URL, so the key never ends up in the browser's download history.
  for (const button of document.querySelectorAll("button[data-downloads]")) {
    const source = document.getElementById(button.dataset.downloads);
    button.hidden = false;
    button.addEventListener("click", () => {
      const blob = new Blob([source.textContent.trim() + "\n"], { type: "text/plain" });
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = button.dataset.filename;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    });
  }
});

// The key page must not come back from the back/forward cache: clear the key when leaving.
window.addEventListener("pagehide", () => {
  const key = document.getElementById("license-key");
  if (key) key.textContent = "";
});
// Reloading would resubmit the signup (the key page answers a POST), so go to the form instead.
window.addEventListener("pageshow", (event) => {
  const box = document.getElementById("license-key-box");
  if (event.persisted && box) window.location.replace(box.dataset.leaveTo);
});

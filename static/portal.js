// Progressive enhancement only: every page works without this file.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-toggles]")) {
    const input = document.getElementById(button.dataset.toggles);
    button.hidden = false;
    button.addEventListener("click", () => {
      const show = input.type === "password";
      input.type = show ? "text" : "password";
      button.textContent = show ? "Hide password" : "Show password";
      button.setAttribute("aria-pressed", String(show));
    });
  }

  // A second click would send the same signup again; the server copes, but why wait twice.
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
    });
  }

  for (const button of document.querySelectorAll("button[data-copies]")) {
    const source = document.getElementById(button.dataset.copies);
    const status = button.parentElement.querySelector(".copy-status");
    if (!navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        status.textContent = "Copied to the clipboard.";
      } catch {
        status.textContent = "Copy failed: select the key and copy it by hand.";
      }
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

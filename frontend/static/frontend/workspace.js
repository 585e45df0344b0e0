// Keyboard control of the comparison form (#label-form, on the workspace and on the change-label page):
// A/B choose, 1-4 strength, S/U safety (left response, then right), Enter submit, K skip, G guidelines,
// N note, P write a prompt. Keys are ignored while typing; a disabled choice (fixed) is never checked.
(function () {
  "use strict";
  let safetyCursor = 0;

  function form() { return document.getElementById("label-form"); }

  function check(input) {
    if (!input || input.disabled) return;
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function markCursor() {
    const f = form();
    if (!f) return;
    f.querySelectorAll("fieldset.safety").forEach(function (fs) {
      fs.classList.toggle("cursor", Number(fs.dataset.safetyIndex) === safetyCursor);
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && !["radio", "checkbox", "submit", "button"].includes(target.type)));
  }

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (typing(target)) {
      if (event.key === "Escape") { target.blur(); }
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    // While a modal dialog is open (the guidelines), the page behind it is inert: its keys must not
    // label, skip or submit the pair. G closes the guidelines again; Escape and Tab work natively.
    const openDialog = document.querySelector("dialog[open]");
    if (openDialog) {
      if (key === "g" && openDialog.id === "guidelines-dialog") { event.preventDefault(); openDialog.close(); }
      return;
    }
    const f = form();
    // Enter on a focused button or link outside the label form keeps its usual meaning.
    if (key === "enter" && target && (target.tagName === "BUTTON" || target.tagName === "A") &&
        !(f && f.contains(target) && target.type === "submit" && !target.hasAttribute("data-skip"))) return;
    if (key === "g") {
      const dialog = document.getElementById("guidelines-dialog");
      if (dialog) { event.preventDefault(); dialog.showModal(); }
      return;
    }
    if (key === "p") {
      const link = document.querySelector(".modes a[href$='/prompt/']");
      if (link) { event.preventDefault(); link.click(); }
      return;
    }
    if (!f) return;
    if (key === "a" || key === "b") {
      event.preventDefault();
      check(f.querySelector('input[name="chosen"][data-key="' + key + '"]'));
    } else if (["1", "2", "3", "4"].includes(key)) {
      event.preventDefault();
      check(f.querySelector('input[name="strength"][data-key="' + key + '"]'));
    } else if ((key === "s" || key === "u") && f.dataset.safety === "1") {
      event.preventDefault();
      const fs = f.querySelector('fieldset.safety[data-safety-index="' + safetyCursor + '"]');
      if (fs) check(fs.querySelector('input[value="' + (key === "s" ? "safe" : "unsafe") + '"]'));
      safetyCursor = (safetyCursor + 1) % 2;
      markCursor();
    } else if (key === "enter") {
      event.preventDefault();
      f.requestSubmit();
    } else if (key === "k") {
      const skipButton = f.querySelector("[data-skip]");
      if (skipButton) { event.preventDefault(); skipButton.click(); }
    } else if (key === "n") {
      event.preventDefault();
      f.querySelector("textarea[name=note]").focus();
    }
  });

  document.addEventListener("click", function (event) {
    const link = event.target.closest("[data-open-guidelines]");
    const dialog = document.getElementById("guidelines-dialog");
    if (link && dialog) { event.preventDefault(); dialog.showModal(); }
  });

  // A new task arrived (htmx swap or page load): reset the safety cursor and focus the pair.
  function onNewContent() {
    safetyCursor = 0;
    markCursor();
    const first = document.querySelector("#work textarea[autofocus]");
    if (first) first.focus();
    else if (form() && document.activeElement && typing(document.activeElement)) document.activeElement.blur();
  }
  document.addEventListener("DOMContentLoaded", onNewContent);
  document.addEventListener("htmx:afterSettle", onNewContent);
})();

// Keyboard control of the review queue (#review-item): A approve, R reject (focuses the reason; Enter submits),
// C correct (then A/B or 1/2 choose the response, 1-4 strength after a choice, S/U safety left then right,
// Enter saves, Escape cancels), J or N next, K previous. Keys are ignored while typing.
(function () {
  "use strict";
  let correcting = false, choiceDone = false, safetyCursor = 0;

  function item() { return document.getElementById("review-item"); }
  function typing(t) {
    return t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && !["radio", "checkbox", "submit", "button"].includes(t.type)));
  }
  function check(input) { if (input) { input.checked = true; } }
  function go(url) { if (url && window.htmx) { window.htmx.ajax("GET", url, { target: "#review" }); } }
  // Actions go through htmx.ajax with the form as the source (its fields, the body's CSRF header): a key
  // pressed in the moment after a swap, before htmx has processed the new item's forms, would otherwise
  // submit natively and reload the page.
  function send(form) {
    if (window.htmx) window.htmx.ajax("POST", form.getAttribute("action"), { source: form, target: "#review" });
    else form.requestSubmit();
  }
  function reset() {
    correcting = false; choiceDone = false; safetyCursor = 0;
    const f = document.getElementById("correct-form");
    if (f) f.classList.remove("active");
  }
  // htmx gives focus back to an element with the same id after a swap: blurring before the swap makes a new
  // item start with no field focused, so the next key is a command, not text in the next reason field.
  document.addEventListener("htmx:beforeSwap", function () {
    const active = document.activeElement;
    if (active && active.closest && active.closest("#review")) active.blur();
  });
  document.addEventListener("htmx:afterSwap", reset);

  function onKey(event) {
    const target = event.target;
    const it = item();
    if (!it) return;
    if (typing(target)) {
      if (event.key === "Escape") target.blur();
      if (event.key === "Enter" && target.id === "id_reason" && target.form) {
        event.preventDefault();
        if (!target.form.reportValidity || target.form.reportValidity()) send(target.form);
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    const correct = document.getElementById("correct-form");
    if (correcting && correct) {
      event.preventDefault();
      if (key === "escape") { reset(); return; }
      if (key === "enter") { send(correct); return; }
      let letter = null;
      if (key === "a" || key === "b") letter = key;
      else if (!choiceDone && (key === "1" || key === "2")) letter = key === "1" ? "a" : "b";
      if (letter) {
        check(correct.querySelector('input[name="chosen"][data-key="' + letter + '"]'));
        choiceDone = true;
        return;
      }
      if (["1", "2", "3", "4"].includes(key)) {
        check(correct.querySelector('input[name="strength"][data-key="' + key + '"]'));
      } else if ((key === "s" || key === "u") && it.dataset.safety === "1") {
        const fs = correct.querySelector('fieldset.safety[data-safety-index="' + safetyCursor + '"]');
        if (fs) check(fs.querySelector('input[value="' + (key === "s" ? "safe" : "unsafe") + '"]'));
        safetyCursor = (safetyCursor + 1) % 2;
      }
      return;
    }
    if (key === "enter" && target && (target.tagName === "BUTTON" || target.tagName === "A")) return;
    if (key === "a") {
      const f = document.getElementById("approve-form");
      if (f) { event.preventDefault(); send(f); }
    } else if (key === "r") {
      const reason = document.getElementById("id_reason");
      if (reason) { event.preventDefault(); reason.focus(); }
    } else if (key === "c") {
      if (correct) { event.preventDefault(); correcting = true; choiceDone = false; correct.classList.add("active"); }
    } else if (key === "j" || key === "n") {
      event.preventDefault(); go(it.dataset.next);
    } else if (key === "k") {
      event.preventDefault(); go(it.dataset.prev);
    }
  }

  // Keys only once htmx has bound the forms (its DOMContentLoaded handler runs before this one): a key pressed
  // earlier would submit a form natively and reload the page.
  function listen() { document.addEventListener("keydown", onKey); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", listen);
  else listen();
})();

// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // The template form shows only the chosen channel's fields (without JavaScript, both).
  document.querySelectorAll("form.template-form").forEach(function (form) {
    var select = form.querySelector("select[name=channel]");
    if (!select) return;
    var sync = function () {
      form.querySelectorAll("fieldset[data-channel]").forEach(function (fieldset) {
        fieldset.hidden = fieldset.getAttribute("data-channel") !== select.value;
      });
    };
    select.addEventListener("change", sync);
    sync();
  });
  // "Copy" buttons put the text of the element they name on the clipboard.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) return;
      navigator.clipboard.writeText(source.value || source.textContent).then(function () {
        button.textContent = "Copied";
      });
    });
  });
});

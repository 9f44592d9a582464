// The keys page: copy a newly created bllm_ key to the clipboard.
// Delegated from document so it also works on content HTMX swaps in.
(function () {
  "use strict";

  function fallbackCopy(input) {
    // navigator.clipboard needs a secure context (https or localhost); elsewhere,
    // select the text and try the legacy command, leaving it selected for Ctrl+C.
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch (e) {
      return false;
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    if (!input) return;
    var done = function (ok) {
      button.textContent = ok ? "Copied" : "Press Ctrl+C to copy";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(
        function () { done(true); },
        function () { done(fallbackCopy(input)); }
      );
    } else {
      done(fallbackCopy(input));
    }
  });
})();

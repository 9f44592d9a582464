// Offers the browser's time zone: fills hidden sign-up fields and shows a hint on the
// settings page. A static file rather than inline script, so the CSP needs no exception.
(function () {
  "use strict";
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  if (!zone) return;
  document.querySelectorAll("input[data-browser-tz]").forEach(function (input) {
    if (!input.value) input.value = zone;
  });
  document.querySelectorAll("[data-browser-tz-name]").forEach(function (el) {
    el.textContent = zone;
  });
  document.querySelectorAll("[data-browser-tz-hint]").forEach(function (el) {
    el.hidden = false;
  });
})();

// The admin's periodic task form: show what the chosen crontab means under its field.
// (django-celery-beat's inline script, as a file: the Content-Security-Policy allows no
// inline script.)
(function () {
  "use strict";
  const $ = window.django && window.django.jQuery;
  if (!$) return;
  const script = document.getElementById("periodic-task-overrides");
  const readable = JSON.parse(document.getElementById("readable-crontabs").textContent);
  const help = script.dataset.crontabHelp || "";

  $(function () {
    $(".field-crontab_translation").hide();
    $(".field-crontab").change(function () {
      const block = $(".field-crontab .help");
      block.text(help);
      block.append(document.createElement("br"),
        document.createTextNode("Translation: " + (readable[$("#id_crontab").val()] || "")));
    });
  });
})();

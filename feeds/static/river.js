// The river page: relative times, and new stories pushed by Server-Sent Events.
// EventSource reconnects by itself and sends Last-Event-ID, so a dropped connection misses nothing.
"use strict";
(function () {
  var river = document.getElementById("river");
  if (!river) return;

  function ago(date) {
    var seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 45) return "just now";
    var units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];
    for (var i = 0; i < units.length; i++) {
      var n = Math.floor(seconds / units[i][1]);
      if (n >= 1) return n + " " + units[i][0] + (n > 1 ? "s" : "") + " ago";
    }
    return "just now";
  }

  function refreshTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var date = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(date)) times[i].textContent = ago(date);
    }
  }

  refreshTimes();
  setInterval(refreshTimes, 30000);

  if (!window.EventSource) return;
  var source = new EventSource(river.getAttribute("data-events") + "?since=" + encodeURIComponent(river.getAttribute("data-seq") || "0"));
  var live = document.getElementById("live");
  source.addEventListener("open", function () { if (live) live.hidden = false; });
  source.addEventListener("error", function () { if (live) live.hidden = true; });
  source.addEventListener("story", function (event) {
    var data = JSON.parse(event.data);
    // The fragment is rendered and escaped by the server, exactly as the page itself.
    var holder = document.createElement("div");
    holder.innerHTML = data.html;
    var story = holder.firstElementChild;
    if (!story) return;
    var existing = document.getElementById(story.id);
    if (existing) existing.remove();
    var empty = river.querySelector(".empty");
    if (empty) empty.remove();
    story.classList.add("new");
    river.insertBefore(story, river.firstChild);
    river.setAttribute("data-seq", story.getAttribute("data-seq"));
    var stamp = document.getElementById("last-updated");
    if (stamp && data.updated) stamp.innerHTML = data.updated;
    refreshTimes(story);
    refreshTimes(stamp);
  });
})();

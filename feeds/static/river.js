// The pages work without this script. With it: times keep counting ("9 days ago", exact on
// hover), "Older stories" loads the next page in place, and on a river's first page new stories
// arrive by Server-Sent Events. EventSource reconnects by itself and sends Last-Event-ID, so a
// dropped connection misses nothing.
"use strict";
(function () {
  // The same words as the server writes (feeds.timeutil.ago).
  function ago(date) {
    var seconds = (Date.now() - date.getTime()) / 1000;
    var future = seconds < 0;
    seconds = Math.abs(seconds);
    if (seconds < 45) return future ? "now" : "just now";
    var units = [["days", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) {
      var unit = units[i][0], size = units[i][1];
      if (seconds >= size * (unit === "days" ? 1.5 : 1)) {
        var amount = Math.round(seconds / size);
        var text = amount + " " + (unit === "days" && amount === 1 ? "day" : unit);
        return future ? "in " + text : text + " ago";
      }
    }
    return future ? "in 1 min" : "1 min ago";
  }

  function refreshTimes(root) {
    if (!root) return;
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var date = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(date)) times[i].textContent = ago(date);
    }
  }

  refreshTimes(document);
  setInterval(function () { refreshTimes(document); }, 30000);

  var river = document.getElementById("river");
  if (!river) return;

  // "Older stories": fetch the next page and append its stories, so reading goes on in place.
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("nav.pages a.older");
    if (!link || !window.fetch || !window.DOMParser) return;
    event.preventDefault();
    link.textContent = "Loading…";
    fetch(link.href, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (text) {
      var next = new DOMParser().parseFromString(text, "text/html");
      var stories = next.querySelectorAll("#river article.story");
      for (var i = 0; i < stories.length; i++) {
        if (!document.getElementById(stories[i].id)) river.appendChild(document.importNode(stories[i], true));
      }
      var nav = document.querySelector("nav.pages");
      var fresh = next.querySelector("nav.pages");
      var older = fresh && fresh.querySelector("a.older");
      nav.innerHTML = "";
      if (older) nav.appendChild(document.importNode(older, true));
      refreshTimes(river);
    }).catch(function () {
      window.location.href = link.href;  // the plain link still works
    });
  });

  var events = river.getAttribute("data-events");
  if (!events || !window.EventSource) return;
  var filter = (river.getAttribute("data-filter") || "").replace(/^\?/, "");
  var url = events + "?since=" + encodeURIComponent(river.getAttribute("data-seq") || "0") + (filter ? "&" + filter : "");
  var source = new EventSource(url);
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

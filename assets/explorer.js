/* Clientside callbacks of the explorer (app/shell.py). */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    explorer: {
        /* The browser tab names the page and the run on screen: "Heads - <run> - scFM attention explorer". Set after
           Dash's own router has written the page's title. */
        pageTitle: function (pageStore, runId, options) {
            const page = (pageStore && pageStore.title) || "scFM attention explorer";
            const run = ((options || []).find(o => o.value === runId) || {}).label || runId || "";
            const title = [page, run, "scFM attention explorer"].filter(Boolean).join(" - ");
            window.setTimeout(function () { document.title = title; }, 0);
            return title;
        },
        /* Bring a card into view when it opens (the Features page's card opens far below the map clicked). */
        scrollIntoView: function (_children, id) {
            const element = document.getElementById(id);
            if (element) { element.scrollIntoView({block: "start"}); }
            return id;
        }
    }
});

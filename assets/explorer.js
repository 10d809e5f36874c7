/* Clientside callbacks of the explorer (app/shell.py). */
function setQuery(key, value) {
    const url = new URL(window.location.href);
    url.searchParams.set(key, value);
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
    return value;
}

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
        /* A page's view state (the head on screen, the CSSI slider's position) goes into the URL in place, with
           history.replaceState: a link holds it, and Back still goes to the page or run before, not through every
           head clicked. */
        headInUrl: function (shown) {
            return shown ? setQuery("head", "L" + shown.layer + "H" + shown.head) : window.dash_clientside.no_update;
        },
        strataInUrl: function (nStrata) {
            return nStrata ? setQuery("strata", String(nStrata)) : window.dash_clientside.no_update;
        },
        /* Bring a card into view when it opens (the Features page's card opens far below the map clicked). */
        scrollIntoView: function (_children, id) {
            const element = document.getElementById(id);
            if (element) {
                element.scrollIntoView({block: "start"});
                /* the page above may still be drawing (figures, the page's finding) and push the card down: keep it
                   in view while the page settles */
                const observer = new ResizeObserver(function () { element.scrollIntoView({block: "start"}); });
                observer.observe(document.body);
                window.setTimeout(function () { observer.disconnect(); }, 3000);
            }
            return id;
        }
    }
});

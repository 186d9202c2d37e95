// The audit page (templates/audit.html): rendered whole by the server (filters and paging are
// plain links and a GET form); this only keeps its "5 min ago" times current while it is open.

import { refreshTimes } from "./format.js";

const TICK_MS = 30_000;

refreshTimes(document.getElementById("audit"));
setInterval(() => refreshTimes(document.getElementById("audit")), TICK_MS);

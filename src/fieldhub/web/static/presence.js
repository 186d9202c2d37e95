// Presence badges (online / stale / offline), shared by the fleet and device pages.

import { US, nowUs } from "./format.js";

export function setBadge(badge, state) {
  badge.dataset.state = state;
  badge.textContent = state;
}

// Stale is a matter of time passing, not of an event: re-evaluated every second on the client
// with the same rule as the store (online and silent longer than stale_after_s). `holder`
// carries data-last-seen (us) and data-stale-after (s).
export function refreshStale(holder, badge) {
  const lastSeen = Number(holder.dataset.lastSeen);
  const staleAfter = Number(holder.dataset.staleAfter);
  if (!lastSeen || !staleAfter) return;
  const silent = nowUs() - lastSeen > staleAfter * US;
  if (badge.dataset.state === "online" && silent) setBadge(badge, "stale");
  else if (badge.dataset.state === "stale" && !silent) setBadge(badge, "online");
}

// Who is signed in, as the server rendered it into the page (templates/base.html): the session's
// CSRF token (<meta name="csrf-token">) and role (body[data-role]). The server decides; this only
// spares a viewer buttons the API would refuse (403) anyway.

const RANK = { viewer: 0, operator: 1, admin: 2 };

export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content || "";
}

export function role() {
  return document.body.dataset.role || "";
}

// Whether the signed-in role is `needed` or above (viewer < operator < admin).
export function allows(needed) {
  return (RANK[role()] ?? -1) >= RANK[needed];
}

// The session ended (expired, signed out in another tab, revoked): back to the login page,
// which comes back here afterwards.
export function toLogin() {
  const here = location.pathname + location.search;
  location.assign(here === "/" ? "/login" : `/login?next=${encodeURIComponent(here)}`);
}

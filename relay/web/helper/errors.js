// Every error code of the protocol (PROTOCOL.md §7.2) with its name and the sentence the
// reference client shows for it (`ErrorCode::describe` in proto/src/lib.rs). One table, kept
// in step with the protocol by a Rust test
// (`the_pages_error_table_has_every_code_with_its_sentence` in relay/src/server/helper_page.rs):
// edit the two together.

/** Code number → [name, sentence]. @type {Record<number, [string, string]>} */
export const ERROR_CODES = {
  0: ["ERROR_CODE_UNSPECIFIED", "unspecified error"],
  1: ["TOKEN_INVALID", "your sign-in token could not be verified"],
  2: ["TOKEN_EXPIRED", "your sign-in token has expired or is not yet valid"],
  3: ["TENANT_UNKNOWN", "your organisation is not served by this relay"],
  4: ["CROSS_TENANT", "this session belongs to another organisation"],
  5: ["CODE_INVALID", "no session has this code"],
  6: ["CODE_EXPIRED", "this session code has expired"],
  7: ["CODE_USED", "this session code has already been used"],
  8: ["DECLINED", "the user declined the session"],
  9: ["PROTOCOL_VIOLATION", "the client broke the protocol"],
  10: ["MESSAGE_TOO_LARGE", "a message was larger than the relay accepts"],
  11: ["RELAY_SHUTDOWN", "the relay is shutting down"],
  12: ["PEER_ENDED", "the other party ended the session"],
  13: ["PEER_LOST", "the connection to the other party was lost"],
  14: ["UNSUPPORTED_VERSION", "this client's protocol version is not supported"],
  15: ["WRONG_ROLE", "this request is not allowed for your role"],
  16: ["AUTH_TIMEOUT", "the client did not sign in in time"],
  17: ["INTERNAL", "the relay hit an internal error"],
  18: ["ENDED_BY_CLIENT", "you ended the session"],
  19: ["SESSION_BUSY", "busy: a mode change is already pending, or the device is already registered or in a session"],
  20: ["LIMIT_EXCEEDED", "a relay limit was reached"],
  21: ["TENANT_DISABLED", "Remote Help is not enabled for your organisation"],
  22: ["UNENROLLED_DEVICE_NOT_ALLOWED", "this device is not enrolled, and your organisation requires enrolment"],
  23: ["LICENSE_REQUIRED", "a Remote Help licence is required"],
  24: ["PLATFORM_NOT_SUPPORTED", "this device's platform is not supported"],
  25: ["NOT_IN_SCOPE", "this user or device is outside the helper's scope"],
  26: ["PERMISSION_DENIED", "the helper's role does not allow this"],
  27: ["CONSENT_TIMEOUT", "the consent prompt was not answered in time"],
  28: ["CHAT_DISABLED", "chat is disabled by your organisation"],
  29: ["COMPLIANCE_NOT_CONFIRMED", "the helper did not continue past the compliance warning"],
  30: ["DEVICE_UNAVAILABLE", "no such device is waiting for help"],
  31: ["MODE_DECLINED", "the user declined the mode change"],
  32: ["CANNOT_END", "only the helper can end an unattended session"],
  33: ["ADMIN_ENDED", "an administrator ended the session"],
  34: ["AUDIT_UNAVAILABLE", "the relay cannot record sessions right now; try again later"],
  35: ["RELAY_RESTARTED", "the relay restarted during the session"],
  36: ["RATE_LIMITED", "too many attempts; try again in a minute"],
  37: ["CODE_BURNED", "too many wrong codes were tried against this code; ask the helper for a new one"],
  38: ["REDIRECT", "the session is held by another relay node"],
  39: ["RELAY_LOST", "the connection to the relay was lost"],
  40: ["E2E_REQUIRED", "your organisation requires end-to-end protection, and the two apps have no protection method in common; update the app that lacks it"],
  41: ["TENANT_KEYS_UNAVAILABLE", "the relay cannot reach your organisation's sign-in service to check your token; try again in a few minutes"],
};

/** The sentence for `code`, with its name; a code this page does not know (a later
 * protocol's) gets a generic sentence (PROTOCOL.md §16, 10).
 * @param {number} code */
export function describe(code) {
  const known = ERROR_CODES[code];
  return known ? `${known[1]} (${known[0]})` : `the relay refused with code ${code}`;
}

/** The code's name, or its number. @param {number} code */
export function codeName(code) {
  const known = ERROR_CODES[code];
  return known ? known[0] : String(code);
}

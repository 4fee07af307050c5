// What every test file shares: the fleet that scripts/ts-client.sh started (its URL and
// keys come in the environment) and waits with a timeout (never sleep-then-assert).

import { randomUUID } from "node:crypto";
import { Fleet } from "../src/index.js";

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through scripts/ts-client.sh`);
  return value;
}

/** The API's base URL. */
export const baseUrl = need("FLEET_URL");
/** Tenant A's key (enqueue). */
export const apiKey = need("FLEET_API_KEY");
/** Tenant B's key (enqueue). */
export const otherKey = need("FLEET_API_KEY_OTHER");
/** A key of tenant A with the operator role only (no enqueue). */
export const operatorKey = need("FLEET_API_KEY_OPERATOR");

/** A client of tenant A. */
export const fleet = new Fleet({ baseUrl, apiKey });
/** A client of tenant B. */
export const otherFleet = new Fleet({ baseUrl, apiKey: otherKey });

/** A label no other test uses. */
export function unique(what: string): string {
  return `${what}-${randomUUID()}`;
}

/** `promise`, or a rejection naming `what` after `ms`. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` every 50 ms until it returns a value other than undefined, or fails after `ms`. */
export async function eventually<T>(ms: number, what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
